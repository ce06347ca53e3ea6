"""Pick AVR's start on the validation split: answerable-type accuracy of rmm and rmm+avr
for reverse starts k (AVQA_AVR_START read by the exp worktree's diffusion.reverse)."""
import os, sys, json, torch, numpy as np
from avqa_edge.toolkit.checkpoint import load_model, read_json
from avqa_edge.toolkit.data.sources import load_split
from avqa_edge.toolkit.data.loader import SplitData
from avqa_edge.runtime.text import Vocabulary
from avqa_edge.toolkit.evaluate import predict, score, ANSWERABLE, answerable_accuracy
torch.set_num_threads(1)
run, starts = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
model, _ = load_model(run, "model.safetensors")
cfg = read_json(f"{run}/config.json")
val = SplitData(load_split(cfg["data"], "val"), Vocabulary(model.cfg.vocab), model.cfg.answers, strict_answers=False)
val.cache_mel(model.audio_encoder.frontend)
out = {}
def acc(scen, meth):
    qs, preds = predict(model, val, scen, meth)
    return score(val, qs, preds)
comp = acc("complete", "zero_fill")
for scen in ("audio_missing", "visual_missing"):
    types = list(ANSWERABLE[scen])
    c = answerable_accuracy(comp, val, types)
    z = answerable_accuracy(acc(scen, "zero_fill"), val, types)
    r = answerable_accuracy(acc(scen, "rmm"), val, types)
    row = {"complete": c, "zero_fill": z, "rmm": r}
    for k in starts:
        os.environ["AVQA_AVR_START"] = str(k)
        row[f"rmm+avr@{k}"] = answerable_accuracy(acc(scen, "rmm+avr"), val, types)
    out[scen] = row
    print(run.split("/")[-1], scen, " ".join(f"{m} {100*v:.1f}" + ("" if m in ("complete", "zero_fill") else f" ({100*(v-z)/(c-z):.0f}%)") for m, v in row.items()), flush=True)
json.dump(out, open(f"/work/runs/v7/valstart_{run.split('/')[-1]}.json", "w"), indent=1)
