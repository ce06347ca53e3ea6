"""Diagnostic: gap closed on a 4x larger built-in test split (3200 clips, 19200 questions; the
first 800 clips are the standard test split). usage: bigtest.py OUT.json RUN [RUN ...]"""
import json, sys, time
import numpy as np, torch
from avqa_edge.runtime.text import Vocabulary
from avqa_edge.toolkit.checkpoint import load_model
from avqa_edge.toolkit.data.loader import SplitData
from avqa_edge.toolkit.data.sources import load_split
from avqa_edge.toolkit.evaluate import ANSWERABLE, predict, is_correct, gap_interval

out = {}
test = None
for run in sys.argv[2:]:
    t0 = time.time()
    model, config = load_model(run)
    spec = json.loads(json.dumps(config["data"]))
    spec["synth"]["test_clips"] = int(__import__("os").environ.get("CLIPS", 3200))
    if test is None:
        test = SplitData(load_split(spec, "test"), Vocabulary(config["model"]["vocab"]), config["model"]["answers"], strict_answers=False)
        test.cache_mel(model.audio_encoder.frontend)
        qtypes = np.array(test.qtypes)
    res = {}
    drop = config["train"]["method"] != "rmm_avr"
    jobs = [("complete", "zero_fill")] + [(s, m) for s in ANSWERABLE for m in (("zero_fill",) if drop else ("zero_fill", "rmm+avr"))]
    ok = {}
    for scen, meth in jobs:
        qs, preds = predict(model, test, scen, meth)
        ok[scen, meth] = is_correct(test, qs, preds)
    clips = test.clip[torch.from_numpy(qs)].numpy()
    qt = qtypes[qs]
    for scen, types in ANSWERABLE.items():
        sel = np.isin(qt, list(types))
        r = {"complete": ok["complete", "zero_fill"][sel].mean(), "zero_fill": ok[scen, "zero_fill"][sel].mean()}
        if not drop:
            r["rmm+avr"] = ok[scen, "rmm+avr"][sel].mean()
            r["gap"] = (r["rmm+avr"] - r["zero_fill"]) / (r["complete"] - r["zero_fill"])
            r["ci95"] = gap_interval(qt, clips, ok["complete", "zero_fill"], ok[scen, "zero_fill"], ok[scen, "rmm+avr"], list(types))
            std = np.isin(clips, np.arange(800)) & sel   # the standard 800-clip test split
            c, z, m = (ok[k][std].mean() for k in (("complete", "zero_fill"), (scen, "zero_fill"), (scen, "rmm+avr")))
            r["gap_standard_800"] = (m - z) / (c - z)
            for t in types:
                st = qt == t
                r[t] = {k: float(ok[kk][st].mean()) for k, kk in (("complete", ("complete", "zero_fill")), ("zero_fill", (scen, "zero_fill")), ("rmm+avr", (scen, "rmm+avr")))}
        res[scen] = {k: (float(v) if not isinstance(v, (dict, tuple)) else v) for k, v in r.items()}
    out[run] = res
    print(run, f"{time.time()-t0:.0f}s", json.dumps({s: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if not isinstance(v, dict)} for s, r in res.items()}), flush=True)
    json.dump(out, open(sys.argv[1], "w"), indent=1)
