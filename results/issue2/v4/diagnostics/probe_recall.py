"""Usage: python probe_recall.py RUN_DIR (session 6 diagnostic, not part of the package).

Linear probes: does each feature say which instruments sound in a segment?
Fit logistic heads on train-split features, score on val. Features: real audio f.a,
RMM's recalled audio pa (from video + question), and the video map f.v itself."""
import sys, torch, numpy as np
from avqa_edge.toolkit.checkpoint import load_model, read_json
from avqa_edge.toolkit.data.sources import load_split
from avqa_edge.toolkit.data.loader import SplitData
from avqa_edge.runtime.text import Vocabulary
from avqa_edge.toolkit.model.tagger import batch_labels
torch.set_num_threads(1); torch.manual_seed(0)
run = sys.argv[1]
model, _ = load_model(run, "last.safetensors")
cfg = read_json(f"{run}/config.json")

ents = []
def collect(split_name, n):
    data = SplitData(load_split(cfg["data"], split_name), Vocabulary(model.cfg.vocab), model.cfg.answers, strict_answers=False)
    data.cache_mel(model.audio_encoder.frontend)
    feats = {"audio": [], "recall": [], "recall_noq": [], "video": []}; labs = []
    with torch.no_grad():
        for qidx in data.ordered_batches(128, n):
            batch = data.batch(qidx)
            f, _, _ = model.encode(batch)
            pa, _ = model.pseudo(f)
            r = model.rmm
            if r.audio_heads == 1:      # the same recall without the question term
                noq = torch.softmax(r._logits(f.v.flatten(2), r.slots_v, 0), -1) @ r.slots_a
            else:
                noq = pa
            lt = torch.softmax(r._logits(f.q[:, 0] if f.q.dim() == 3 else f.q, r.slots_t, 2), -1)
            ents.append(float(-(lt * lt.clamp_min(1e-12).log()).sum(-1).mean()))
            feats["recall_noq"].append(noq)
            feats["audio"].append(f.a); feats["recall"].append(pa); feats["video"].append(f.v.flatten(2))
            labs.append(batch_labels(batch)["sounding"])
    print("question addressing entropy", np.mean(ents))
    return {k: torch.cat(v).flatten(0, 1) for k, v in feats.items()}, torch.cat(labs).flatten(0, 1)

tr, ytr = collect("train", 3000)
va, yva = collect("val", 1500)
T = model.cfg.t_segments
for name in ("audio", "recall", "recall_noq", "video"):
    x, xv = tr[name], va[name]
    mu, sd = x.mean(0), x.std(0) + 1e-6
    head = torch.nn.Linear(x.shape[1], ytr.shape[1])
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head((x - mu) / sd), ytr)
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        p = head((xv - mu) / sd) > 0
    y = yva > 0.5
    seg = (p == y).all(-1).float().mean().item()
    pc, yc = p.reshape(-1, T, p.shape[-1]), y.reshape(-1, T, y.shape[-1])
    big = torch.full(pc.shape[::2], 99)
    on = torch.where(pc.any(1), pc.float().argmax(1), big); ont = torch.where(yc.any(1), yc.float().argmax(1), big)
    first = (on.argmin(1) == ont.argmin(1)).float().mean().item()
    print(f"{run.split('/')[-1]} {name:6s} segment exact {seg:.3f}  first-onset {first:.3f}")
