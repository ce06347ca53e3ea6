"""Splits: build one from (config, split), keep it as an .npz cache named by a hash."""
import dataclasses
import hashlib
import io
import json
import os
import tempfile
import zipfile
from typing import Dict, List, Optional, Tuple

import numpy as np

from avqa_edge.runtime.atomic import commit_file
from avqa_edge.runtime.signal import FRAME_H, FRAME_W, T_SEGMENTS, float_to_pcm16
from avqa_edge.toolkit.data.types import QA, RawSplit, benchmark_types

from .config import (INSTRUMENTS, LOCATIONS, SynthConfig, _F, _N_SAMPLES, _check_split,
                     generator_version)
from .questions import _candidates, _select
from .render import render
from .scene import sample_scene


def cache_key(cfg: SynthConfig, split: str) -> str:
    blob = json.dumps({"version": generator_version(cfg), "config": cfg.to_dict(), "split": split},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _count(items) -> Dict[str, Dict[str, int]]:
    out: Dict[str, Dict[str, int]] = {}
    for key, ans in items:
        d = out.setdefault(key, {})
        d[ans] = d.get(ans, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def _build(cfg: SynthConfig, split: str) -> RawSplit:
    split_idx = _check_split(split)
    if cfg.seed < 0:
        raise ValueError("seed must be non-negative")
    n = cfg.clips(split)
    frames = np.empty((n, T_SEGMENTS, _F, FRAME_H, FRAME_W, 3), np.uint8)
    audio = np.empty((n, _N_SAMPLES), np.int16)
    cands: List[Tuple[int, str, str, str, str]] = []
    scenes = []
    for i in range(n):
        rng = np.random.default_rng([cfg.seed, split_idx, 1, i])
        scene = sample_scene(rng, cfg)
        f, a = render(scene, rng)
        frames[i] = f
        audio[i] = float_to_pcm16(a)
        scenes.append(scene.to_dict())
        cands.extend((i,) + c for c in _candidates(scene, cfg.version))
    sel_rng = np.random.default_rng([cfg.seed, split_idx, 2])
    budget = int(round(n * cfg.questions_per_clip))
    chosen = _select(cands, budget, sel_rng, cfg.version)
    qa = [QA(clip=cands[k][0], question=cands[k][2], answer=cands[k][3], qtype=cands[k][4])
          for k in chosen]
    answer_counts = _count((q.qtype, q.answer) for q in qa)
    meta = {
        "source": "synthetic",
        "generator_version": generator_version(cfg),
        "seed": cfg.seed,
        "split": split,
        "config": cfg.to_dict(),
        "n_clips": n,
        "n_questions": len(qa),
        "n_candidates": len(cands),
        "answer_counts": {t: answer_counts.get(t, {}) for t in benchmark_types(cfg.version)},
        "template_answer_counts": _count((cands[k][1], cands[k][3]) for k in chosen),
        "instruments": list(INSTRUMENTS),
        "locations": list(LOCATIONS),
        "scenes": scenes,
    }
    return RawSplit(frames=frames, audio=audio, qa=qa, meta=meta)


def _save(path: str, data: RawSplit) -> None:
    qa_json = json.dumps([dataclasses.asdict(q) for q in data.qa])
    buf = io.BytesIO()
    np.savez(buf, frames=data.frames, audio=data.audio,
             qa_json=np.array(qa_json), meta_json=np.array(json.dumps(data.meta)))
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getbuffer())
        commit_file(tmp, path)                # fsync + rename: readers never see half a file
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _load(path: str) -> RawSplit:
    with np.load(path, allow_pickle=False) as z:
        qa = [QA(**d) for d in json.loads(str(z["qa_json"]))]
        return RawSplit(frames=z["frames"], audio=z["audio"], qa=qa,
                        meta=json.loads(str(z["meta_json"])))


def generate(cfg: SynthConfig, split: str, cache_dir: Optional[str] = None) -> RawSplit:
    """Generate (or load from ``cache_dir``) one split of the built-in benchmark.

    Same config + split -> byte-identical frames, audio and questions. Splits use separate
    random streams (``[seed, split_index, ...]``). The cache is an ``.npz`` (no pickle) named
    by a hash of (generator version, config, split), holding the QA list and meta as JSON.
    """
    _check_split(split)
    path = None
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)
        path = os.path.join(cache_dir, f"synth_{split}_{cache_key(cfg, split)}.npz")
        if os.path.exists(path):
            try:
                return _load(path)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass                          # unreadable cache: regenerate and overwrite
    data = _build(cfg, split)
    if path is not None:
        _save(path, data)
    return data
