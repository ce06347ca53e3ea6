"""Diagnostic: is the shared backbone what holds rmm+avr back with the video missing?
On a run's frozen encoders, with its trained RMM and AVR held fixed, a fresh backbone is trained
with stage 2's recipe (batch 64 across the split, cosine lr from the preset's, STEPS steps) on:
  zeros  - the video-missing case alone, zeros in place of the video (audio + question only);
  rmm    - the video-missing case alone, RMM's recalled map in place of the missing segments
           (Eq. 8's video pseudo term alone, the same random masks as training);
  rmm_full - as rmm, but every segment missing in every sample (as the test scenario);
  zeros_mask - as zeros, but with rmm's random masks (real video in the present segments):
           a dropout-trained backbone dedicated to the video-missing case;
  shared - Eq. 8's three CE terms (complete, audio pseudo, video pseudo), as stage 2 trains the
           real backbone, but with RMM held fixed: the control for the two above;
  shared_flag - as shared, plus a learned vector per modality added to every recalled segment
           (the backbone is told which segments were recalled; session 14).
Session 14 (this copy of ../../v7/diagnostics/dedicated/expert.py) also scores the audio-missing
case and the fresh backbone fed zeros with the flag, and reads the batch size from env BATCH.
It is scored on a larger built-in test split, on the question types audio can answer, next to
the run's own complete / zero_fill / rmm+avr on the same questions; gaps use the run's own
complete and zero_fill. usage: expert2.py OUT.json RUN VARIANT [STEPS]  (env CLIPS, default 3200)"""
import copy, json, os, sys, time
import numpy as np, torch
from torch.nn import functional as F
from avqa_edge.runtime.text import Vocabulary
from avqa_edge.toolkit.checkpoint import load_model
from avqa_edge.toolkit.data.loader import SplitData
from avqa_edge.toolkit.data.sources import load_split
from avqa_edge.toolkit.evaluate import ANSWERABLE, predict, is_correct, gap_interval
from avqa_edge.toolkit.refit import FeatureCache
from avqa_edge.toolkit.train import lr_at, random_masks

out_path, run, variant = sys.argv[1:4]
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 3000
assert variant in ("zeros", "rmm", "shared", "rmm_full", "zeros_mask", "shared_flag")
FLAG = variant == "shared_flag"
t0 = time.time()
model, config = load_model(run)
model.eval()
vocab, answers = Vocabulary(config["model"]["vocab"]), config["model"]["answers"]
train = SplitData(load_split(config["data"], "train"), vocab, answers, strict_answers=False)
cache = FeatureCache(model, train, torch.device("cpu"))
assert cache.cached
spec = json.loads(json.dumps(config["data"]))
spec["synth"]["test_clips"] = int(os.environ.get("CLIPS", 3200))
test = SplitData(load_split(spec, "test"), vocab, answers, strict_answers=False)
print(f"data and features {time.time() - t0:.0f}s", flush=True)

new = copy.deepcopy(model)
torch.manual_seed(config["train"]["seed"] + 1)
new.backbone.reset_parameters()
lr = config["train"]["lr"] or 2e-3
c = model.cfg.dim
e_a, e_v = torch.nn.Parameter(torch.zeros(c)), torch.nn.Parameter(torch.zeros(c))   # "this segment was recalled"
opt = torch.optim.Adam(list(new.backbone.parameters()) + ([e_a, e_v] if FLAG else []), lr=lr)
def flag_a(ma):  # ma (B,T,1) 1 = present -> (B,T,C)
    return (1 - ma) * e_a if FLAG else 0
def flag_v(mv):  # mv (B,T,1,1,1)
    return (1 - mv) * e_v[:, None, None] if FLAG else 0
rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
p_full = config["train"]["p_full_missing"]
new.backbone.train()
for step in range(steps):
    for g in opt.param_groups:
        g["lr"] = lr_at(step, steps, lr)
    f, ans = cache.sample(rng, int(os.environ.get("BATCH", 64)), 4)
    b, t = f.a.shape[:2]
    if variant == "zeros":
        loss = F.cross_entropy(new.backbone(f.a, torch.zeros_like(f.v), f.q), ans)
    else:
        with torch.no_grad():
            pa, pv = new.pseudo(f)
        mv = random_masks(gen, b, t, 1.0 if variant == "rmm_full" else p_full)[..., None, None, None]
        if variant == "zeros_mask":
            pv = torch.zeros_like(pv)
        loss = F.cross_entropy(new.backbone(f.a, mv * f.v + (1 - mv) * pv + flag_v(mv), f.q), ans)
        if variant in ("shared", "shared_flag"):
            ma = random_masks(gen, b, t, p_full)[..., None]
            loss = loss + F.cross_entropy(new.backbone(f.a, f.v, f.q), ans) \
                + F.cross_entropy(new.backbone(ma * f.a + (1 - ma) * pa + flag_a(ma), f.v, f.q), ans)
    opt.zero_grad(); loss.backward(); opt.step()
    if (step + 1) % 500 == 0:
        print(f"step {step + 1} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
new.eval()
ZERO_FLAG = [False]
orig_fill = new.fill
def fill(f, ma, mv, method):
    a, v = orig_fill(f, ma, mv, method)
    if FLAG and (method != "zero_fill" or ZERO_FLAG[0]):
        with torch.no_grad():
            a, v = a + flag_a(ma[..., None]), v + flag_v(mv[..., None, None, None])
    return a, v
new.fill = fill

types = list(ANSWERABLE["visual_missing"])
ok = {}
for name, m, scen, meth in (("complete", model, "complete", "zero_fill"), ("zero_fill", model, "visual_missing", "zero_fill"),
                            ("rmm+avr", model, "visual_missing", "rmm+avr"), ("new_complete", new, "complete", "zero_fill"),
                            ("new_zero_fill", new, "visual_missing", "zero_fill"), ("new_rmm+avr", new, "visual_missing", "rmm+avr"),
                            ("new_zero_fill_flag", new, "visual_missing", "zero_fill"),
                            ("a_complete", model, "complete", "zero_fill"), ("a_zero_fill", model, "audio_missing", "zero_fill"),
                            ("a_rmm+avr", model, "audio_missing", "rmm+avr"), ("new_a_zero_fill", new, "audio_missing", "zero_fill"),
                            ("new_a_rmm+avr", new, "audio_missing", "rmm+avr")):
    if name == "new_zero_fill_flag" and not FLAG:
        continue
    ZERO_FLAG[0] = name.endswith("_flag")
    qs, preds = predict(m, test, scen, meth)
    ok[name] = is_correct(test, qs, preds)
qt = np.array(test.qtypes)[qs]
clips = test.clip[torch.from_numpy(qs)].numpy()
sel = np.isin(qt, types)
sel_a = np.isin(qt, list(ANSWERABLE["audio_missing"]))
acc = {k: float(v[sel_a if k.startswith(("a_", "new_a_")) else sel].mean()) for k, v in ok.items()}
res = {"run": run, "variant": variant, "steps": steps, "test_clips": spec["synth"]["test_clips"],
       "questions": int(sel.sum()), **acc, "new_complete_all_types": float(ok["new_complete"].mean())}
res["gap_audio_run"] = (acc["a_rmm+avr"] - acc["a_zero_fill"]) / (acc["a_complete"] - acc["a_zero_fill"])
res["gap_audio_new"] = (acc["new_a_rmm+avr"] - acc["a_zero_fill"]) / (acc["a_complete"] - acc["a_zero_fill"])
for k in ("rmm+avr", "new_zero_fill", "new_rmm+avr"):
    res[f"gap_{k}"] = (acc[k] - acc["zero_fill"]) / (acc["complete"] - acc["zero_fill"])
    res[f"ci95_{k}"] = list(gap_interval(qt, clips, ok["complete"], ok["zero_fill"], ok[k], types))
res["per_type"] = {t: {k: float(v[qt == t].mean()) for k, v in ok.items()} for t in types}
res["seconds"] = round(time.time() - t0)
print(json.dumps(res, indent=1), flush=True)
allres = json.load(open(out_path)) if os.path.exists(out_path) else {}
allres[f"{run} {variant} {steps}"] = res
json.dump(allres, open(out_path, "w"), indent=1)
