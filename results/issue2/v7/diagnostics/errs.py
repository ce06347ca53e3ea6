"""Video missing: where do AV Ext / Audio Cnt errors come from; and a clip-level audio probe ceiling."""
import json, sys, time
import numpy as np, torch
from avqa_edge.toolkit.checkpoint import load_model, read_json
from avqa_edge.toolkit.data.sources import load_split
from avqa_edge.toolkit.data.loader import SplitData
from avqa_edge.toolkit.data.synth import Scene, INSTRUMENTS, template_of
from avqa_edge.runtime.text import Vocabulary
from avqa_edge.toolkit.evaluate import predict
torch.set_num_threads(2)
run = sys.argv[1]
model, _ = load_model(run, "model.safetensors"); model.eval()
cfg = read_json(f"{run}/config.json")
def data(split):
    d = SplitData(load_split(cfg["data"], split), Vocabulary(model.cfg.vocab), model.cfg.answers, strict_answers=False)
    d.cache_mel(model.audio_encoder.frontend); return d
te = data("test")
scenes = [Scene.from_dict(s) for s in te.split.meta["scenes"]]
ans = np.array(model.cfg.answers)
res = {}
for scen, meth in [("complete", "zero_fill"), ("visual_missing", "zero_fill"), ("visual_missing", "rmm+avr"), ("visual_missing", "rmm")]:
    qs, p = predict(model, te, scen, meth)
    pred = np.empty(len(te), object); pred[qs] = ans[p]; res[f"{scen}/{meth}"] = pred
gold = np.array([qa.answer for qa in te.split.qa]); qtxt = [qa.question for qa in te.split.qa]
def clip_feats(d):
    out = []
    with torch.no_grad():
        for c0 in range(0, d.mel.shape[0], 256):
            a = model.audio_encoder.from_mel(d.mel[c0:c0+256])   # (U, T, C)
            out.append(torch.cat([a.mean(1), a.amax(1)], -1))
    return torch.cat(out)
# breakdown
for tid in ("av_playing", "a_count"):
    idx = [i for i, q in enumerate(qtxt) if template_of(q) == tid]
    print(f"== {tid}  n={len(idx)}")
    for k, pr in res.items():
        ok = np.array([pr[i] == gold[i] for i in idx])
        line = f"  {k:28s} {100*ok.mean():.1f}"
        if tid == "av_playing":
            ys = np.array([gold[i] == "yes" for i in idx])
            line += f"   yes {100*ok[ys].mean():.1f}  no {100*ok[~ys].mean():.1f}"
        else:
            for g in "01234":
                m = np.array([gold[i] == g for i in idx]); line += f"  {g}:{100*ok[m].mean():.0f}"
        print(line)
    if tid == "av_playing":   # by instrument / loudness / n sounding, rmm+avr vs complete
        rows = []
        for i in idx:
            sc = scenes[int(te.clip[i])]; x = qtxt[i].split()[2]
            src = [s for s in sc.sources if s.name == x][0]
            rows.append((x, src.sounds, 20*np.log10(max(src.loudness,1e-6)) if src.sounds else None, len(sc.sounding),
                         res["complete/zero_fill"][i] == gold[i], res["visual_missing/rmm+avr"][i] == gold[i], res["visual_missing/zero_fill"][i] == gold[i]))
        for inst in INSTRUMENTS:
            r = [x for x in rows if x[0] == inst]
            print(f"   {inst:10s} n={len(r):3d} complete {100*np.mean([x[4] for x in r]):.0f}  rmm+avr {100*np.mean([x[5] for x in r]):.0f}  zero {100*np.mean([x[6] for x in r]):.0f}")
        for ns in range(0, 6):
            r = [x for x in rows if x[3] == ns]
            if r: print(f"   n_sounding={ns} n={len(r):3d} complete {100*np.mean([x[4] for x in r]):.0f}  rmm+avr {100*np.mean([x[5] for x in r]):.0f}  zero {100*np.mean([x[6] for x in r]):.0f}")
        snd = [x for x in rows if x[1]]
        qs_ = np.quantile([x[2] for x in snd], [0, .25, .5, .75, 1])
        for lo, hi in zip(qs_[:-1], qs_[1:]):
            r = [x for x in snd if lo <= x[2] <= hi]
            print(f"   sounding, dB {lo:.1f}..{hi:.1f} n={len(r)} complete {100*np.mean([x[4] for x in r]):.0f} rmm+avr {100*np.mean([x[5] for x in r]):.0f}")
# probe ceiling
t0 = time.time()
tr = data("train")
trs = [Scene.from_dict(s) for s in tr.split.meta["scenes"]]
Xtr, Xte = clip_feats(tr), clip_feats(te)
Ytr = torch.tensor([[float(any(s.name == k and s.sounds for s in sc.sources)) for k in INSTRUMENTS] for sc in trs])
mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
lin = torch.nn.Linear(Xtr.shape[1], len(INSTRUMENTS)); opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=1e-4)
for it in range(600):
    opt.zero_grad(); l = torch.nn.functional.binary_cross_entropy_with_logits(lin((Xtr-mu)/sd), Ytr); l.backward(); opt.step()
mlp = torch.nn.Sequential(torch.nn.Linear(Xtr.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, len(INSTRUMENTS)))
opt = torch.optim.Adam(mlp.parameters(), 3e-3, weight_decay=1e-4)
for it in range(1500):
    opt.zero_grad(); l = torch.nn.functional.binary_cross_entropy_with_logits(mlp((Xtr-mu)/sd), Ytr); l.backward(); opt.step()
for name, net in (("linear", lin), ("mlp", mlp)):
    with torch.no_grad(): P = (net((Xte-mu)/sd) > 0).numpy()
    idx = [i for i, q in enumerate(qtxt) if template_of(q) == "av_playing"]
    ok = [("yes" if P[int(te.clip[i]), INSTRUMENTS.index(qtxt[i].split()[2])] else "no") == gold[i] for i in idx]
    idc = [i for i, q in enumerate(qtxt) if template_of(q) == "a_count"]
    okc = [str(int(P[int(te.clip[i])].sum())) == gold[i] for i in idc]
    print(f"probe {name}: av_playing {100*np.mean(ok):.1f}  a_count {100*np.mean(okc):.1f}   ({time.time()-t0:.0f}s)")
