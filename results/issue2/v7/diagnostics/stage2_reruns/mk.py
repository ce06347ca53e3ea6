# make a stage-2 restart from a finished run: python mk.py SRC DST key=value ...
import json, shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
t = load_file(str(src / "last.safetensors"))
save_file({k: v for k, v in t.items() if not k.startswith("opt.")}, str(dst / "last.safetensors"))
c = json.load(open(src / "config.json"))
for kv in sys.argv[3:]:
    k, v = kv.split("="); c["train"][k] = type(c["train"][k])(v)
json.dump(c, open(dst / "config.json", "w"), indent=1)
s = json.load(open(src / "state.json"))
n = c["train"]["steps"]
json.dump({"step": n, "best_score": -1.0, "finished": False, "history": [h for h in s["history"] if h["step"] <= n]},
          open(dst / "state.json", "w"), indent=1)
