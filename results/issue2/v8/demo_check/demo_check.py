"""Is the runtime's video-missing answer to "How many instruments are sounding?" sane on the demo's own
calibration clips (aligned windows)? Truth from the calibration set where that question was asked."""
import sys, json, numpy as np
from pathlib import Path
from avqa_edge.runtime.pipeline import Pipeline
from avqa_edge.calibration.calibset import CalibrationSet
from avqa_edge.runtime import signal as sig
b = Path(sys.argv[1])
cs = CalibrationSet.load(b / "calibration")
qs = cs.meta["questions"]; ans = cs.meta.get("answers_text") or cs.meta.get("answers")
print(list(cs.meta)[:12])
p = Pipeline.from_bundle(b, threads=1).activate()
Q = "How many instruments are sounding?"
rows = []
for qi, q in enumerate(qs):
    if q != Q: continue
    c = int(cs.clip[qi]); truth = ans[qi] if ans else None
    fr, au = cs.frames[c], sig.pcm16_to_float(cs.audio[c])
    full = p.answer(fr, au, Q)
    nov = p.answer(None, au, Q)
    zf = p.answer(None, au, Q, method="zero_fill")
    rows.append((c, truth, full.answer, nov.answer, round(nov.probability, 2), zf.answer))
for r in rows: print(r)
n = len(rows)
print("n", n, "complete acc", sum(r[1] == r[2] for r in rows) / n, "video missing rmm+avr", sum(r[1] == r[3] for r in rows) / n,
      "zero_fill", sum(r[1] == r[5] for r in rows) / n)
print("demo order first clips:", list(range(4)))
