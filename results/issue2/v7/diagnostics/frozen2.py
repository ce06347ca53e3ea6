"""Frozen encoders + RMM of a run; train a backbone with Eq. 8's three CE terms (no AVR); score test."""
import sys, time, copy, json
import numpy as np, torch
from torch.nn import functional as F
from avqa_edge.toolkit.checkpoint import load_model, read_json
from avqa_edge.toolkit.data.sources import load_split
from avqa_edge.toolkit.data.loader import SplitData
from avqa_edge.toolkit.model.backbone import Backbone
from avqa_edge.toolkit.train import random_masks
from avqa_edge.runtime.text import Vocabulary
from avqa_edge.toolkit.evaluate import ANSWERABLE
torch.set_num_threads(1)
run, variant, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
model, _ = load_model(run, "model.safetensors"); model.eval()
cfg = read_json(f"{run}/config.json")
def data(split):
    d = SplitData(load_split(cfg["data"], split), Vocabulary(model.cfg.vocab), model.cfg.answers, strict_answers=False)
    d.cache_mel(model.audio_encoder.frontend); return d
t0 = time.time()
def feats(d):
    A, V = [], []
    with torch.no_grad():
        for i in range(0, d.mel.shape[0], 128):
            A.append(model.audio_encoder.from_mel(d.mel[i:i+128]))
            V.append(model.visual_encoder(torch.from_numpy(d.split.frames[i:i+128])))
        Q = torch.cat([model.question_encoder(d.tokens[i:i+1024]) for i in range(0, len(d), 1024)])
    return torch.cat(A), torch.cat(V), Q
tr, te = data("train"), data("test")
(Atr, Vtr, Qtr), (Ate, Vte, Qte) = feats(tr), feats(te)
print(f"features cached in {time.time()-t0:.0f}s", flush=True)
c = model.cfg
if variant.startswith("ft"):
    bb = copy.deepcopy(model.backbone)
else:
    torch.manual_seed(0); bb = Backbone(c.dim, (c.map_h, c.map_w), c.t_segments, len(c.answers), c.heads, c.fusion_layers)
def fill(a, v, q, ma, mv, how):
    if how == "zero_fill": return a * ma[..., None], v * mv[..., None, None, None]
    with torch.no_grad(): pa, pv = model.rmm.pseudo_audio(v, q), model.rmm.pseudo_visual(a, q)
    m_a, m_v = ma[..., None], mv[..., None, None, None]
    return m_a * a + (1 - m_a) * pa, m_v * v + (1 - m_v) * pv
def evaluate():
    bb.eval(); out = {}; qt = np.array(te.qtypes)
    for scen, how in (("complete", "zero_fill"), ("audio_missing", "zero_fill"), ("audio_missing", "rmm"), ("visual_missing", "zero_fill"), ("visual_missing", "rmm")):
        preds = []
        with torch.no_grad():
            for i in range(0, len(te), 512):
                ci = te.clip[i:i+512]; a, v, q = Ate[ci], Vte[ci], Qte[i:i+512]
                ma = torch.zeros(len(ci), 10) if scen == "audio_missing" else torch.ones(len(ci), 10)
                mv = torch.zeros(len(ci), 10) if scen == "visual_missing" else torch.ones(len(ci), 10)
                preds.append(bb(*fill(a, v, q, ma, mv, how), q).argmax(-1))
        ok = (torch.cat(preds) == te.answers).numpy()
        r = {"all": 100 * ok.mean()}
        for t in sorted(set(qt)): r[t] = 100 * ok[qt == t].mean()
        if scen != "complete":
            r["answerable"] = 100 * ok[np.isin(qt, list(ANSWERABLE[scen]))].mean()
        out[f"{scen}/{how}"] = r
    comp_ok = out["complete/zero_fill"]
    summ = {}
    for scen in ("audio_missing", "visual_missing"):
        types = list(ANSWERABLE[scen]); n = {t: (qt == t).sum() for t in types}
        comp = sum(comp_ok[t] * n[t] for t in types) / sum(n.values())
        z, r = out[f"{scen}/zero_fill"]["answerable"], out[f"{scen}/rmm"]["answerable"]
        summ[scen] = f"complete {comp:.1f} zero {z:.1f} rmm {r:.1f} closed {100*(r-z)/(comp-z):.0f}%"
    bb.train(); return out, summ
out, summ = evaluate(); print(variant, "before", out["complete/zero_fill"]["all"], summ, flush=True)
import os; lr = float(os.environ.get("LR", 2e-3))
opt = torch.optim.Adam(bb.parameters(), lr)
rng = np.random.default_rng(0); gen = torch.Generator().manual_seed(0); t0 = time.time()
for s in range(steps):
    for g in opt.param_groups: g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * s / steps))
    if "pc4" in variant:
        idx = torch.tensor(tr.sample(rng, 64, 4))
    else:
        idx = torch.from_numpy(rng.integers(0, len(tr), 64))
    ci = tr.clip[idx]; a, v, q = Atr[ci], Vtr[ci], Qtr[idx]; y = tr.answers[idx]
    nb = len(idx); ma, mv = random_masks(gen, nb, 10, 0.5), random_masks(gen, nb, 10, 0.5)
    one = torch.ones(nb, 10)
    how = "zero_fill" if "drop" in variant else "rmm"
    loss = F.cross_entropy(bb(a, v, q), y) + F.cross_entropy(bb(*fill(a, v, q, ma, one, how), q), y) \
        + F.cross_entropy(bb(*fill(a, v, q, one, mv, how), q), y)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(bb.parameters(), 1.0); opt.step()
    if (s + 1) % 1000 == 0 or s + 1 == steps:
        out, summ = evaluate()
        print(variant, s + 1, f"{time.time()-t0:.0f}s complete {out['complete/zero_fill']['all']:.1f}", summ, flush=True)
json.dump(out, open(f"/tmp/s8/{variant}.json", "w"), indent=1)
