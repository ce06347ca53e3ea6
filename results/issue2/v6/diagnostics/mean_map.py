"""Usage: python mean_map.py RUN_DIR (session 7 diagnostic, not part of the package).

With the video missing, is RMM's recalled map better than one fixed map? Scores the
validation split's answerable types (video missing) with the missing map filled by:
zeros, RMM's recall, rmm+avr, and the mean of the real validation maps (the same map for
every clip and segment). If the mean map does as well as the recall, the recall carries no
clip-specific visual information the backbone uses."""
import json, sys
import torch
from avqa_edge.toolkit.checkpoint import load_model, read_json
from avqa_edge.toolkit.data.sources import load_split
from avqa_edge.toolkit.data.loader import SplitData
from avqa_edge.runtime.text import Vocabulary
from avqa_edge.toolkit.evaluate import predict, score, ANSWERABLE, answerable_accuracy
torch.set_num_threads(1)
run = sys.argv[1]
model, _ = load_model(run, "model.safetensors")
cfg = read_json(f"{run}/config.json")
val = SplitData(load_split(cfg["data"], "val"), Vocabulary(model.cfg.vocab), model.cfg.answers, strict_answers=False)
val.cache_mel(model.audio_encoder.frontend)
types = list(ANSWERABLE["visual_missing"])
with torch.no_grad():                                    # the mean real map over validation clips
    maps = [model.encode(val.batch(q))[0].v.mean(dim=(0, 1)) for q in val.ordered_batches(128, 1024)]
mean_v = torch.stack(maps).mean(0)                       # (C, H', W')
acc = lambda scen, meth: answerable_accuracy(score(val, *predict(model, val, scen, meth)), val, types)
out = {"complete": acc("complete", "zero_fill")}
for meth in ("zero_fill", "rmm", "rmm+avr"):
    out[meth] = acc("visual_missing", meth)
orig = model.pseudo
model.pseudo = lambda f: (orig(f)[0], mean_v.expand_as(f.v).clone())
out["mean map"] = acc("visual_missing", "rmm")
out["mean map + avr"] = acc("visual_missing", "rmm+avr")
print(run, " ".join(f"{k} {100 * v:.1f}" for k, v in out.items()))
json.dump(out, open(f"{run.rstrip('/').split('/')[-1]}_mean_map.json", "w"), indent=1)
