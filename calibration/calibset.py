"""The calibration set: representative clips and questions from a run's validation split.

Built here (calibration/ is code), stored in the bundle (the set is data): used by the
parity gate, FP16 drift checks and, later, sensor thresholds. Stored compactly and without
pickle:

    calibration/calibration.npz    frames (N, T, F, H, W, 3) uint8, audio (N, T*S) int16 PCM,
                                   tokens (Q, L) int64, clip (Q,) int32, answer (Q,) int32
    calibration/calibration.json   source (split, clip ids, data spec kind), questions, types,
                                   answers as text, sizes

The .npz is a plain zip of .npy arrays written with fixed timestamps, so the same run
gives byte-identical files; `np.load(path, allow_pickle=False)` reads it. Torch-free: the
toolkit's data loaders are imported only by `build_from_run`.
"""
import io
import json
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from avqa_edge.errors import AvqaError
from avqa_edge.runtime import atomic
from avqa_edge.runtime.text import Vocabulary, tokenize

NPZ = "calibration.npz"
META = "calibration.json"
MIN_CLIPS = 64
MAX_BYTES = 32 * 1024 * 1024
ARRAYS = ("frames", "audio", "tokens", "clip", "answer")


@dataclass
class CalibrationSet:
    frames: np.ndarray     # (N, T, F, H, W, 3) uint8
    audio: np.ndarray      # (N, T*SEGMENT_SAMPLES) int16
    tokens: np.ndarray     # (Q, L) int64, right-padded ids
    clip: np.ndarray       # (Q,) int32, index into frames / audio
    answer: np.ndarray     # (Q,) int32, index into the model's answers (-1: not in the list)
    meta: Dict = field(default_factory=dict)

    @property
    def n_clips(self) -> int:
        return int(self.frames.shape[0])

    @property
    def n_questions(self) -> int:
        return int(self.tokens.shape[0])

    def save(self, out_dir) -> List[Path]:
        """Write calibration.npz + calibration.json into out_dir. -> the two paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        npz = out_dir / NPZ
        write_npz(npz, {k: getattr(self, k) for k in ARRAYS})
        size = npz.stat().st_size
        if size > MAX_BYTES:
            npz.unlink()
            raise AvqaError(f"the calibration set takes {size / 2**20:.1f} MiB, over the {MAX_BYTES // 2**20} MiB "
                            f"limit: build it with fewer clips (now {self.n_clips})")
        meta = dict(self.meta, n_clips=self.n_clips, n_questions=self.n_questions,
                    arrays={k: {"shape": list(getattr(self, k).shape), "dtype": str(getattr(self, k).dtype)} for k in ARRAYS})
        (out_dir / META).write_text(json.dumps(meta, indent=2) + "\n")
        return [npz, out_dir / META]

    @classmethod
    def load(cls, directory) -> "CalibrationSet":
        directory = Path(directory)
        try:
            with np.load(directory / NPZ, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ARRAYS}
            meta = json.loads((directory / META).read_text())
        except FileNotFoundError as e:
            raise AvqaError(f"calibration set not found: {e.filename}") from None
        except (KeyError, ValueError, zipfile.BadZipFile) as e:
            raise AvqaError(f"calibration set in {directory} is unreadable: {e}") from None
        return cls(meta=meta, **arrays)

    def questions_of_clip(self) -> List[List[int]]:
        out: List[List[int]] = [[] for _ in range(self.n_clips)]
        for i, c in enumerate(self.clip.tolist()):
            out[c].append(i)
        return out

    @cached_property
    def _truth_index(self) -> Dict[tuple, Dict[int, str]]:
        """{question words: {clip: answer text}}, built once: the serve demo looks up every answer."""
        index: Dict[tuple, Dict[int, str]] = {}
        texts, answers = self.meta.get("questions") or [], self.meta.get("answers_text") or []
        for i, (q, a) in enumerate(zip(texts, answers)):
            index.setdefault(tuple(tokenize(q)), {})[int(self.clip[i])] = str(a)
        return index

    def truths(self, question: str) -> Dict[int, str]:
        """{clip: answer text} for the clips this set asked `question` about (matched word by
        word, so case and punctuation do not matter). Empty for sets saved without texts."""
        return dict(self._truth_index.get(tuple(tokenize(question)), {}))


def write_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """A deterministic, pickle-free .npz (zip of .npy, fixed timestamps, deflate)."""
    tmp = Path(str(path) + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=6)
    atomic.commit_file(tmp, path)


def select_clips(n_available: int, n_clips: int, seed: int = 0) -> np.ndarray:
    """Sorted clip indices: all if there are at most n_clips, else a seeded random choice."""
    if n_available <= n_clips:
        return np.arange(n_available)
    return np.sort(np.random.default_rng(seed).choice(n_available, size=n_clips, replace=False))


def build(split, vocabulary: Sequence[str], answers: Sequence[str], q_len: int, n_clips: int = MIN_CLIPS,
          seed: int = 0, source: Optional[Dict] = None, log: Callable[[str], None] = lambda *_: None) -> CalibrationSet:
    """A calibration set from a raw split (toolkit.data.types.RawSplit): n_clips clips chosen
    with `seed` and every question about them. vocabulary: the model's words (without or
    with <pad>/<unk>)."""
    if not hasattr(split, "frames"):
        raise AvqaError("the calibration set needs raw clips (frames + audio); this run uses pre-extracted features")
    vocab = Vocabulary(list(vocabulary))
    answer_index = {a: i for i, a in enumerate(answers)}
    has_questions = sorted({qa.clip for qa in split.qa})
    chosen = [has_questions[i] for i in select_clips(len(has_questions), n_clips, seed)]
    if len(chosen) < n_clips:
        log(f"note: the validation split has {len(chosen)} clips with questions; the calibration set takes all of them "
            f"(fewer than the {n_clips} asked for)")
    new_index = {c: i for i, c in enumerate(chosen)}
    tokens, clip, answer, texts, qtypes, answer_texts, skipped = [], [], [], [], [], [], []
    for n, qa in enumerate(split.qa):
        if qa.clip not in new_index:
            continue
        try:
            tokens.append(vocab.encode(qa.question, q_len))
        except AvqaError as e:
            skipped.append({"question": qa.question, "why": str(e)})
            continue
        clip.append(new_index[qa.clip])
        answer.append(answer_index.get(qa.answer, -1))
        texts.append(qa.question)
        qtypes.append(qa.qtype)
        answer_texts.append(qa.answer)
    if not tokens:
        raise AvqaError("no usable questions in the validation split for the calibration set")
    idx = np.asarray(chosen)
    meta = {"source": dict(source or {}, split="val", clip_ids=[int(c) for c in chosen]),
            "seed": seed, "n_clips_requested": n_clips, "questions": texts, "qtypes": qtypes,
            "answers_text": answer_texts, "skipped_questions": skipped}
    return CalibrationSet(frames=np.ascontiguousarray(split.frames[idx], dtype=np.uint8),
                          audio=np.ascontiguousarray(split.audio[idx], dtype=np.int16),
                          tokens=np.asarray(tokens, dtype=np.int64), clip=np.asarray(clip, dtype=np.int32),
                          answer=np.asarray(answer, dtype=np.int32), meta=meta)


def build_from_run(run_dir, n_clips: int = MIN_CLIPS, seed: int = 0,
                   log: Callable[[str], None] = lambda *_: None) -> CalibrationSet:
    """The calibration set of a training run: its config.json's data spec, split `val`."""
    from avqa_edge.toolkit.data.specs import load_split   # numpy-only data code, no torch

    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise AvqaError(f"{path} not found") from None
    spec, model = config["data"], config["model"]
    split = load_split(spec, "val")
    source = {"data_kind": spec.get("kind"), "generator_version": spec.get("generator_version")}
    return build(split, model["vocab"], model["answers"], model["q_len"], n_clips, seed, source, log)
