"""Confidence calibration: one softmax temperature per answering method and serving mode,
fitted on the bundle's calibration set.

A pseudo answer (one sensor's segments recalled by RMM and refined by AVR, or zero-filled and
answered with a prompt set) is weaker than a complete one, and the raw softmax does not know
it. For each method the service uses (`rmm+avr`; `prompt_oracle`, the prompt set picked from
the sensor health: MODE_CASE) and each mode, the calibration set is answered under that
mode's masks:

    complete       every segment real
    audio_pseudo   the microphone missing: all T segments, and once more a random
                   contiguous run of 1..T-1 segments (a failure inside the window)
    visual_pseudo  the same for the camera

and a temperature tau_{method, mode} is fitted by minimising the negative log-likelihood of
the true answers (temperature scaling, Guo et al. 2017) on that method's logits. A served
answer's confidence is the top probability of softmax(logits / tau); the file also keeps
each fit's accuracy on the calibration set and the expected calibration error (ECE, 10 bins)
before and after.

Stored as JSON (`ConfidenceCalibration.save`, version 2: `methods` -> mode -> fit), keyed by
a hash of the bundle's manifest files, so a different bundle is refitted rather than
trusted; `serve` caches it as $XDG_CACHE_HOME/avqa-edge/<that hash>.confidence.json
(`cache_path`), never beside the bundle, which may be read-only. Version-1 files (`modes`
only, written before the prompt method was served) were fitted on rmm+avr logits and load
as exactly that.
"""
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from avqa_edge.errors import AvqaError

MODES = ("complete", "audio_pseudo", "visual_pseudo")
METHODS = ("rmm+avr", "prompt_oracle")
# serving mode -> the prompt set prompt_oracle answers with (toolkit/model/prompts.py's cases:
# `audio` = audio missing or noisy, `visual` = video missing or noisy)
MODE_CASE = {"complete": "complete", "audio_pseudo": "audio", "visual_pseudo": "visual"}
KIND = "avqa-edge-confidence-calibration"
VERSION = 2


@dataclass
class ModeCalibration:
    temperature: float
    accuracy: float            # top-1 accuracy on the calibration set in this mode
    questions: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float


def check_method(method: str) -> str:
    if method not in METHODS:
        raise AvqaError(f"confidence calibration: method must be one of {METHODS}, got {method!r}")
    return method


def modes_for(method: str, prompt_cases: Sequence[str] = ()) -> List[str]:
    """The modes `method` answers in: every mode for rmm+avr; for prompt_oracle those whose
    prompt set (MODE_CASE) the bundle has."""
    check_method(method)
    return [m for m in MODES if method == "rmm+avr" or MODE_CASE[m] in prompt_cases]


@dataclass
class ConfidenceCalibration:
    methods: Dict[str, Dict[str, ModeCalibration]]     # method -> mode -> fit
    bundle_hash: str = ""
    fitted_with: Dict = field(default_factory=dict)

    def get(self, mode: str, method: str = "rmm+avr") -> Optional[ModeCalibration]:
        return (self.methods.get(method) or {}).get(mode)

    def temperature(self, mode: str, method: str = "rmm+avr") -> float:
        m = self.get(mode, method)
        return m.temperature if m is not None else 1.0

    def confidence(self, logits: np.ndarray, mode: str, method: str = "rmm+avr") -> Tuple[float, np.ndarray]:
        """-> (calibrated top probability, calibrated probabilities (n_answers,))."""
        p = softmax(np.asarray(logits, np.float64)[None] / self.temperature(mode, method))[0]
        return float(p.max()), p

    def describe(self, mode: str, method: str = "rmm+avr") -> Dict:
        m = self.get(mode, method)
        if m is None:
            return {"mode": mode, "method": method, "temperature": 1.0, "calibration_accuracy": None}
        return {"mode": mode, "method": method, "temperature": round(m.temperature, 4),
                "calibration_accuracy": round(m.accuracy, 4), "calibration_questions": m.questions}

    def missing(self, needs: Dict[str, Sequence[str]]) -> List[str]:
        """["method/mode", ...] of `needs` (method -> modes) that this calibration lacks."""
        return [f"{method}/{mode}" for method, modes in needs.items() for mode in modes
                if self.get(mode, method) is None]

    def merged(self, other: "ConfidenceCalibration") -> "ConfidenceCalibration":
        """This calibration with `other`'s fits added (other's win where both have one)."""
        methods = {k: dict(v) for k, v in self.methods.items()}
        for method, modes in other.methods.items():
            methods.setdefault(method, {}).update(modes)
        fitted = dict(self.fitted_with)
        fitted.update(other.fitted_with)
        fitted["methods"] = sorted(methods)
        return ConfidenceCalibration(methods, other.bundle_hash or self.bundle_hash, fitted)

    def to_dict(self) -> Dict:
        return {"kind": KIND, "version": VERSION, "bundle_hash": self.bundle_hash, "fitted_with": dict(self.fitted_with),
                "methods": {meth: {k: asdict(v) for k, v in modes.items()} for meth, modes in self.methods.items()}}

    @classmethod
    def from_dict(cls, d: Dict) -> "ConfidenceCalibration":
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise AvqaError("not an avqa-edge confidence calibration file")
        version = d.get("version", 1)
        if not isinstance(version, int) or version > VERSION:
            raise AvqaError(f"confidence calibration file version {version!r} is newer than this avqa-edge reads "
                            f"(version {VERSION}): upgrade, or delete the file to refit it")
        try:
            if version == 1:                       # fitted on rmm+avr logits, the only method served then
                raw = {"rmm+avr": d["modes"]}
            else:
                raw = d["methods"]
            methods = {meth: {k: ModeCalibration(**v) for k, v in modes.items()} for meth, modes in raw.items()}
        except (KeyError, TypeError, AttributeError) as e:
            raise AvqaError(f"confidence calibration file: bad or missing field ({e})") from None
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise AvqaError(f"confidence calibration file: unknown methods {unknown} (known: {list(METHODS)})")
        return cls(methods, d.get("bundle_hash", ""), dict(d.get("fitted_with") or {}))

    def save(self, path) -> Path:
        from avqa_edge.runtime.atomic import write_json
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path) -> "ConfidenceCalibration":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise AvqaError(f"confidence calibration file {path} not found") from None
        except ValueError as e:
            raise AvqaError(f"confidence calibration file {path} is not valid JSON: {e}") from None


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, k)."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = softmax(logits / temperature)
    return float(-np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-12)).mean())


def ece(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, bins: int = 10) -> float:
    """Expected calibration error of the top-1 confidence, equal-width bins."""
    p = softmax(logits / temperature)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.mean() * abs(conf[sel].mean() - correct[sel].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """argmin_tau NLL(softmax(logits / tau)): a log-spaced grid over [0.05, 20], then a finer one."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    best = grid[int(np.argmin([nll(logits, labels, t) for t in grid]))]
    fine = best * np.exp(np.linspace(-0.1, 0.1, 21))
    return float(fine[int(np.argmin([nll(logits, labels, t) for t in fine]))])


def fit_mode(logits: np.ndarray, labels: np.ndarray) -> ModeCalibration:
    t = fit_temperature(logits, labels)
    return ModeCalibration(temperature=t, accuracy=float((logits.argmax(axis=1) == labels).mean()),
                           questions=int(len(labels)), nll_before=nll(logits, labels, 1.0), nll_after=nll(logits, labels, t),
                           ece_before=ece(logits, labels, 1.0), ece_after=ece(logits, labels, t))


def bundle_hash(manifest: Dict) -> str:
    """A short hash of the bundle's file hashes (a different bundle -> a different hash)."""
    files = manifest.get("files") or {}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where derived files (the fitted calibration) are kept: $XDG_CACHE_HOME/avqa-edge, else
    ~/.cache/avqa-edge. Never the bundle's folder, which may be read-only."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "avqa-edge"


def cache_path(manifest: Dict) -> Path:
    """The cached confidence calibration of the bundle with this manifest."""
    return cache_dir() / f"{bundle_hash(manifest)}.confidence.json"


def mode_masks(mode: str, t: int, rng: np.random.Generator) -> List[Tuple[np.ndarray, np.ndarray]]:
    """[(mask_a, mask_v), ...] the calibration set is answered under for `mode`."""
    ones = np.ones(t, np.float32)
    if mode == "complete":
        return [(ones, ones)]
    run = int(rng.integers(1, t))
    start = int(rng.integers(0, t - run + 1))
    part = ones.copy()
    part[start:start + run] = 0
    gone = np.zeros(t, np.float32)
    if mode == "audio_pseudo":
        return [(gone, ones), (part, ones)]
    return [(ones, gone), (ones, part)]


def collect_logits(pipeline, calib, mode: str, seed: int = 0, max_questions: int = 0,
                   log: Callable[[str], None] = lambda *_: None,
                   method: str = "rmm+avr") -> Tuple[np.ndarray, np.ndarray]:
    """Answer the calibration set under `mode`'s masks with `method` (prompt_oracle: the
    prompt set MODE_CASE[mode], as served). -> (logits (n, k), labels (n,))."""
    check_method(method)
    case = MODE_CASE[mode] if method == "prompt_oracle" else None
    rng = np.random.default_rng(seed)
    by_clip = calib.questions_of_clip()
    logits, labels = [], []
    n = 0
    for c, qs in enumerate(by_clip):
        qs = [q for q in qs if calib.answer[q] >= 0]
        if not qs:
            continue
        for ma, mv in mode_masks(mode, pipeline.t, rng):
            feats = pipeline.encode(calib.frames[c], calib.audio[c], ma, mv)
            for q in qs:
                ans = pipeline.answer_features(feats, calib.tokens[q], method=method, top_k=1, case=case)
                logits.append(ans.logits.astype(np.float64))
                labels.append(int(calib.answer[q]))
                n += 1
        if max_questions and n >= max_questions:
            break
    if not labels:
        raise AvqaError("the calibration set has no questions with a known answer")
    log(f"  {method} {mode}: {len(labels)} answers")
    return np.stack(logits), np.asarray(labels)


def fit(pipeline, calib, manifest: Optional[Dict] = None, seed: int = 0, max_questions: int = 0,
        log: Callable[[str], None] = lambda *_: None, methods: Sequence[str] = ("rmm+avr",)) -> ConfidenceCalibration:
    """Fit a temperature per method and mode on the calibration set (see the module
    docstring); prompt_oracle only in the modes whose prompt set the pipeline has."""
    fits: Dict[str, Dict[str, ModeCalibration]] = {}
    for method in methods:
        fits[method] = {}
        for mode in modes_for(method, getattr(pipeline, "prompt_cases", ())):
            logits, labels = collect_logits(pipeline, calib, mode, seed=seed, max_questions=max_questions, log=log,
                                            method=method)
            fits[method][mode] = fit_mode(logits, labels)
    return ConfidenceCalibration(fits, bundle_hash(manifest or {}),
                                 {"pipeline": getattr(pipeline, "name", ""), "seed": seed,
                                  "max_questions": max_questions, "methods": sorted(fits)})
