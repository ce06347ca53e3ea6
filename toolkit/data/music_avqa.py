"""MUSIC-AVQA adapter: the official question JSON + pre-extracted features -> FeatureSplit.

Expected layout (the one of the official repository, GeWu-Lab/MUSIC-AVQA; its feature
scripts write ``./data/feats/vggish`` and ``./data/feats/res18_14x14``)::

    data/json/avqa-{train,val,test}.json      question files (below)
    <feature_root>/                           e.g. data/feats
        vggish/<video_id>.npy                 (60, 128)          VGGish audio, one row per second
        res18_14x14/<video_id>.npy            (60, 512, 14, 14)  ResNet-18 maps, one per second

``audio_dir`` / ``visual_dir`` name the two sub-folders (absolute paths work as well).
Feature files may be float16 or float32; they are returned as float32.

Question file: a JSON list of records::

    {"video_id": "00000028", "question_id": 7,
     "type": "[\\"Audio-Visual\\", \\"Existential\\"]",          # a JSON *string*
     "question_content": "Is the <Object> in the video always playing?",
     "templ_values": "[\\"ukulele\\"]",                          # a JSON *string* list
     "question_deleted": 0,
     "anser": "yes"}                                             # sic: "anser"

Placeholders (``<Object>``, ``<LR>``, ``<FL>``, ``<TH>``, ``<LRer>``, ``<LL>``, ``<BA>``) are
filled in order from ``templ_values``, as the official dataloader does (it replaces every
space-separated token containing ``<`` by the next value; trailing punctuation glued to a
placeholder token, e.g. ``<Object>?``, is dropped there and kept here - the tokenizer drops
punctuation anyway). The official model tokenizes by splitting on spaces after dropping
the final ``?`` (``official_tokens``), pads to 14 tokens, and builds its question vocabulary
(93 words incl. ``<pad>``) and its 42 answers from the *train* file.

Time: the features have one row per second of a 60 s video; like the official dataloader
(``feat[::6]``) we keep seconds 0, 6, ..., 54, i.e. T = T_SEGMENTS = 10. Files with 55..60
rows are accepted (the official VGGish script writes int(duration) rows, so a slightly
short video has fewer than 60); anything else is rejected.
"""
import ast
import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from avqa_edge.errors import AvqaError
from avqa_edge.runtime.signal import T_SEGMENTS
from avqa_edge.toolkit.data.types import QA, QUESTION_TYPES, FeatureSplit

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

SECONDS = 60                      # rows per official feature file
STRIDE = 6                        # official sampling: feat[::6]
TIME_INDEX = tuple(range(0, STRIDE * T_SEGMENTS, STRIDE))   # (0, 6, ..., 54)
MIN_ROWS = TIME_INDEX[-1] + 1     # 55
AUDIO_FEATURE_SHAPE = (128,)
VISUAL_FEATURE_SHAPE = (512, 14, 14)

_PLACEHOLDER_RE = re.compile(r"<[^<>\s]*>")
_REQUIRED_KEYS = ("video_id", "question_id", "type", "question_content", "templ_values", "anser")


def _parse_list_string(raw: Any, what: str) -> list:
    """A JSON (or Python-literal, as the official code uses ast.literal_eval) list string."""
    if isinstance(raw, (list, tuple)):
        return list(raw)
    if not isinstance(raw, str):
        raise AvqaError(f"{what} must be a list or a string holding a list, got {type(raw).__name__}")
    try:
        value = json.loads(raw)
    except ValueError:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise AvqaError(f"{what} is not a list: {raw!r}") from None
    if not isinstance(value, (list, tuple)):
        raise AvqaError(f"{what} is not a list: {raw!r}")
    return list(value)


def parse_type(raw: Any) -> str:
    """'["Audio-Visual", "Existential"]' -> "Audio-Visual/Existential" (one of QUESTION_TYPES).

    Also accepts a two-element list, or an already normalized "Modality/Kind" string.
    """
    if isinstance(raw, str) and raw in QUESTION_TYPES:
        return raw
    parts = _parse_list_string(raw, "question type")
    if len(parts) != 2 or not all(isinstance(p, str) for p in parts):
        raise AvqaError(f"question type must be [modality, kind], got {raw!r}")
    qtype = f"{parts[0].strip()}/{parts[1].strip()}"
    if qtype not in QUESTION_TYPES:
        raise AvqaError(f"unknown question type {qtype!r}; expected one of {', '.join(QUESTION_TYPES)}")
    return qtype


def fill_question(content: str, templ_values: Any) -> str:
    """Fill the <...> placeholders of `content` in order with `templ_values`.

    `templ_values` is a list or a JSON string holding one. The result is stripped and a
    full-width question mark (it occurs in the official files) becomes '?'.
    """
    if not isinstance(content, str) or not content.strip():
        raise AvqaError(f"question_content must be a non-empty string, got {content!r}")
    values = _parse_list_string(templ_values, f"templ_values of question {content!r}")
    holes = _PLACEHOLDER_RE.findall(content)
    if len(holes) != len(values):
        raise AvqaError(
            f"question {content!r} has {len(holes)} placeholder(s) {holes} but "
            f"templ_values has {len(values)} value(s) {values}")
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise AvqaError(f"question {content!r}: templ_values must be non-empty strings, got {values}")
    it = iter(values)
    text = _PLACEHOLDER_RE.sub(lambda m: next(it).strip(), content)
    return text.replace("\uff1f", "?").strip()


def official_tokens(question: str) -> List[str]:
    """Tokens as the official dataloader counts them: split on spaces, final '?' dropped."""
    q = question.rstrip()
    if q.endswith("?"):
        q = q[:-1]
    return q.split()


def _load_json_list(json_path: PathLike) -> list:
    path = Path(json_path)
    if not path.is_file():
        raise AvqaError(f"MUSIC-AVQA question file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:
        raise AvqaError(f"{path} is not valid JSON: {e}") from None
    except OSError as e:
        raise AvqaError(f"cannot read {path}: {e}") from None
    if not isinstance(data, list):
        raise AvqaError(f"{path}: expected a JSON list of question records, got {type(data).__name__}")
    return data


def _normalize(rec: Any, index: int, path: Path) -> Dict[str, Any]:
    where = f"{path}: record {index}"
    if not isinstance(rec, dict):
        raise AvqaError(f"{where} is not an object: {rec!r}")
    qid = rec.get("question_id")
    if qid is not None:
        where += f" (question_id {qid})"
    missing = [k for k in _REQUIRED_KEYS if k not in rec]
    if missing:
        hint = " (note: the official answer key is spelled 'anser')" if "anser" in missing else ""
        raise AvqaError(f"{where} lacks key(s) {', '.join(missing)}{hint}")
    vid = rec["video_id"]
    if not isinstance(vid, str) or not vid.strip() or "/" in vid or "\\" in vid:
        raise AvqaError(f"{where}: video_id must be a file-name string like '00000028', got {vid!r}")
    answer = rec["anser"]
    if not isinstance(answer, str) or not answer.strip():
        raise AvqaError(f"{where}: answer ('anser') must be a non-empty string, got {answer!r}")
    try:
        qtype = parse_type(rec["type"])
        question = fill_question(rec["question_content"], rec["templ_values"])
    except AvqaError as e:
        raise AvqaError(f"{where}: {e}") from None
    return {"video_id": vid.strip(), "question_id": qid, "question": question,
            "answer": answer.strip(), "qtype": qtype}


def load_questions(json_path: PathLike, skip_deleted: bool = False) -> List[Dict[str, Any]]:
    """Read a MUSIC-AVQA question file into normalized records.

    Each record: {video_id, question_id, question, answer, qtype}. Every record is kept by
    default (the official dataloader ignores ``question_deleted`` too); with
    ``skip_deleted=True`` records whose ``question_deleted`` is set are dropped and their
    count is logged as a warning. Malformed records raise AvqaError naming the record
    index and question_id.
    """
    return _load_questions(json_path, skip_deleted)[0]


def _load_questions(json_path: PathLike, skip_deleted: bool) -> Tuple[List[Dict[str, Any]], int, int]:
    path = Path(json_path)
    data = _load_json_list(path)
    out, deleted = [], 0
    for i, rec in enumerate(data):
        norm = _normalize(rec, i, path)
        if skip_deleted and rec.get("question_deleted"):
            deleted += 1
            continue
        out.append(norm)
    if deleted:
        log.warning("%s: skipped %d of %d record(s) marked question_deleted", path, deleted, len(data))
    if not out:
        raise AvqaError(f"{path} holds no usable question records")
    return out, len(data), deleted


def answer_vocabulary(records: Sequence[Dict[str, Any]]) -> List[str]:
    """Sorted unique answers (build it from the train file: 42 answers on the official data)."""
    return sorted({r["answer"] for r in records})


class LazyFeatures:
    """Per-video feature files, loaded on access and subsampled to T = T_SEGMENTS.

    ``feats[i]`` -> (T, *feature_shape) float32 array of video i (np.load with mmap_mode="r",
    so only the needed rows are read); integer arrays / slices give a stacked batch.
    ``np.asarray(feats)`` materializes everything (beware: visual maps are 1 MB a clip).
    """

    dtype = np.dtype(np.float32)

    def __init__(self, paths: Sequence[Path], video_ids: Sequence[str], feature_shape: Tuple[int, ...],
                 kind: str, check: bool = True):
        self.paths = [Path(p) for p in paths]
        self.video_ids = list(video_ids)
        self.feature_shape = tuple(feature_shape)
        self.kind = kind
        if check:
            for i in range(len(self.paths)):
                self._open(i)

    @property
    def shape(self) -> Tuple[int, ...]:
        return (len(self.paths), T_SEGMENTS) + self.feature_shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.paths)

    def _expected(self) -> str:
        return f"({SECONDS}, {', '.join(map(str, self.feature_shape))})"

    def _open(self, i: int) -> np.ndarray:
        path, vid = self.paths[i], self.video_ids[i]
        if not path.is_file():
            raise AvqaError(f"video {vid}: {self.kind} feature file not found: {path} "
                            f"(expected shape {self._expected()})")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # corrupt header, pickled object, ...
            raise AvqaError(f"video {vid}: cannot read {self.kind} feature file {path}: {e}") from None
        if (not isinstance(arr, np.ndarray) or arr.ndim != 1 + len(self.feature_shape)
                or tuple(arr.shape[1:]) != self.feature_shape
                or not MIN_ROWS <= arr.shape[0] <= SECONDS
                or not np.issubdtype(arr.dtype, np.floating)):
            shape = getattr(arr, "shape", None)
            dtype = getattr(arr, "dtype", None)
            raise AvqaError(f"video {vid}: {self.kind} feature file {path} has shape {shape} "
                            f"dtype {dtype}; expected float {self._expected()} "
                            f"({MIN_ROWS}..{SECONDS} rows accepted)")
        return arr

    def _one(self, i: int) -> np.ndarray:
        arr = self._open(i)
        return np.asarray(arr[list(TIME_INDEX)], dtype=np.float32)

    def __getitem__(self, key):
        n = len(self.paths)
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"clip index {i} out of range for {n} clips")
            return self._one(i % n)
        if isinstance(key, slice):
            idx = range(n)[key]
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = [int(j) for j in idx.reshape(-1)]
        out = np.empty((len(idx), T_SEGMENTS) + self.feature_shape, dtype=np.float32)
        for k, j in enumerate(idx):
            out[k] = self[j]
        return out

    def __array__(self, dtype=None, copy=None):
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyFeatures({self.kind}, shape={self.shape}, dtype=float32)"


def load_feature_split(json_path: PathLike, feature_root: PathLike, audio_dir: str = "vggish",
                       visual_dir: str = "res18_14x14", limit: Optional[int] = None,
                       skip_deleted: bool = False, check_files: bool = True) -> FeatureSplit:
    """MUSIC-AVQA questions + features -> FeatureSplit with lazy audio/visual arrays.

    `limit` keeps the first `limit` questions (and only the videos they use). Videos are
    indexed in order of first appearance (QA.clip). With `check_files` (default) every
    feature file's header is checked up front, so a missing or mis-shaped file fails here
    with the video id, the path and the expected shape, not in the middle of training.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise AvqaError(f"limit must be a positive integer, got {limit!r}")
    records, n_records, n_deleted = _load_questions(json_path, skip_deleted)
    if limit is not None:
        records = records[:limit]
    root = Path(feature_root)
    if not root.is_dir():
        raise AvqaError(f"MUSIC-AVQA feature folder not found: {root}")
    adir, vdir = root / audio_dir, root / visual_dir
    for d, what in ((adir, "audio (VGGish)"), (vdir, "visual (ResNet-18 14x14)")):
        if not d.is_dir():
            raise AvqaError(f"{what} feature folder not found: {d} (expected <video_id>.npy files there)")
    index: Dict[str, int] = {}
    qa: List[QA] = []
    for r in records:
        clip = index.setdefault(r["video_id"], len(index))
        qa.append(QA(clip=clip, question=r["question"], answer=r["answer"], qtype=r["qtype"]))
    vids = list(index)
    audio = LazyFeatures([adir / f"{v}.npy" for v in vids], vids, AUDIO_FEATURE_SHAPE, "audio", check_files)
    visual = LazyFeatures([vdir / f"{v}.npy" for v in vids], vids, VISUAL_FEATURE_SHAPE, "visual", check_files)
    meta = {
        "source": "music-avqa",
        "questions": str(Path(json_path)),
        "feature_root": str(root),
        "audio_dir": str(adir),
        "visual_dir": str(vdir),
        "videos": vids,
        "question_ids": [r["question_id"] for r in records],
        "time_index": list(TIME_INDEX),
        "records_in_file": n_records,
        "limit": limit,
        "skipped_deleted": n_deleted,
    }
    return FeatureSplit(audio=audio, visual=visual, qa=qa, meta=meta)
