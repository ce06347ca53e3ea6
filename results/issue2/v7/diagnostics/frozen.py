"""Frozen encoders of a run; train a backbone on video-missing inputs only; score test answerable types."""
import sys, time, copy
import numpy as np, torch
from torch.nn import functional as F
from avqa_edge.toolkit.checkpoint import load_model, read_json
from avqa_edge.toolkit.data.sources import load_split
from avqa_edge.toolkit.data.loader import SplitData
from avqa_edge.toolkit.model.backbone import Backbone
from avqa_edge.runtime.text import Vocabulary
from avqa_edge.toolkit.evaluate import ANSWERABLE
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
run, variant = sys.argv[1], sys.argv[2]
model, _ = load_model(run, "model.safetensors"); model.eval()
cfg = read_json(f"{run}/config.json")
def data(split):
    d = SplitData(load_split(cfg["data"], split), Vocabulary(model.cfg.vocab), model.cfg.answers, strict_answers=False)
    d.cache_mel(model.audio_encoder.frontend); return d
def feats(d):
    with torch.no_grad():
        A = torch.cat([model.audio_encoder.from_mel(d.mel[i:i+256]) for i in range(0, d.mel.shape[0], 256)])
        Q = torch.cat([model.question_encoder(d.tokens[i:i+1024]) for i in range(0, len(d), 1024)])
    return A, Q
tr, te = data("train"), data("test")
(Atr, Qtr), (Ate, Qte) = feats(tr), feats(te)
c = model.cfg
if variant.startswith("ft"):
    bb = copy.deepcopy(model.backbone)
else:
    torch.manual_seed(0); bb = Backbone(c.dim, (c.map_h, c.map_w), c.t_segments, len(c.answers), c.heads, c.fusion_layers)
zeros = "zero" in variant
def vis(a, q):
    if zeros: return a.new_zeros(a.shape[0], a.shape[1], c.dim, c.map_h, c.map_w)
    with torch.no_grad(): return model.rmm.pseudo_visual(a, q)
types = list(ANSWERABLE["visual_missing"])
def evaluate():
    bb.eval(); out = {}
    with torch.no_grad():
        preds = torch.cat([bb(Ate[te.clip[i:i+512]], vis(Ate[te.clip[i:i+512]], Qte[i:i+512]), Qte[i:i+512]).argmax(-1) for i in range(0, len(te), 512)])
    ok = (preds == te.answers).numpy(); qt = np.array(te.qtypes)
    for t in types: out[t.split("/")[1][:4]] = 100 * ok[qt == t].mean()
    out["answerable"] = 100 * ok[np.isin(qt, types)].mean()
    bb.train(); return out
print(variant, "before", {k: round(v, 1) for k, v in evaluate().items()}, flush=True)
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 1500
lr = 5e-4 if variant.startswith("ft") else 2e-3
opt = torch.optim.Adam(bb.parameters(), lr)
rng = np.random.default_rng(0); t0 = time.time()
for s in range(steps):
    for g in opt.param_groups: g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * s / steps))
    idx = torch.from_numpy(rng.integers(0, len(tr), 64))
    a, q = Atr[tr.clip[idx]], Qtr[idx]
    loss = F.cross_entropy(bb(a, vis(a, q), q), tr.answers[idx])
    opt.zero_grad(); loss.backward(); opt.step()
    if (s + 1) % 500 == 0:
        print(variant, s + 1, f"{time.time()-t0:.0f}s", {k: round(v, 1) for k, v in evaluate().items()}, flush=True)
