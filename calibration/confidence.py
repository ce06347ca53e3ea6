"""Per-mode confidence calibration: one softmax temperature per serving mode, fitted on the
bundle's calibration set.

A pseudo answer (one sensor's segments recalled by RMM and refined by AVR) is weaker than
a complete one, and the raw softmax does not know it. For each mode the calibration set is
answered under that mode's masks:

    complete       every segment real
    audio_pseudo   the microphone missing: all T segments, and once more a random
                   contiguous run of 1..T-1 segments (a failure inside the window)
    visual_pseudo  the same for the camera

and a temperature tau_m is fitted by minimising the negative log-likelihood of the true
answers (temperature scaling, Guo et al. 2017). A served answer's confidence is the top
probability of softmax(logits / tau_m); the file also keeps each mode's accuracy on the
calibration set and the expected calibration error (ECE, 10 bins) before and after.

Stored as JSON (`ConfidenceCalibration.save`), keyed by a hash of the bundle's manifest
files, so a different bundle is refitted rather than trusted.
"""
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from avqa_edge.errors import AvqaError

MODES = ("complete", "audio_pseudo", "visual_pseudo")
KIND = "avqa-edge-confidence-calibration"


@dataclass
class ModeCalibration:
    temperature: float
    accuracy: float            # top-1 accuracy on the calibration set in this mode
    questions: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float


@dataclass
class ConfidenceCalibration:
    modes: Dict[str, ModeCalibration]
    bundle_hash: str = ""
    fitted_with: Dict = field(default_factory=dict)

    def temperature(self, mode: str) -> float:
        m = self.modes.get(mode)
        return m.temperature if m is not None else 1.0

    def confidence(self, logits: np.ndarray, mode: str) -> Tuple[float, np.ndarray]:
        """-> (calibrated top probability, calibrated probabilities (n_answers,))."""
        p = softmax(np.asarray(logits, np.float64)[None] / self.temperature(mode))[0]
        return float(p.max()), p

    def describe(self, mode: str) -> Dict:
        m = self.modes.get(mode)
        if m is None:
            return {"mode": mode, "temperature": 1.0, "calibration_accuracy": None}
        return {"mode": mode, "temperature": round(m.temperature, 4), "calibration_accuracy": round(m.accuracy, 4),
                "calibration_questions": m.questions}

    def to_dict(self) -> Dict:
        return {"kind": KIND, "bundle_hash": self.bundle_hash, "fitted_with": dict(self.fitted_with),
                "modes": {k: asdict(v) for k, v in self.modes.items()}}

    @classmethod
    def from_dict(cls, d: Dict) -> "ConfidenceCalibration":
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise AvqaError("not an avqa-edge confidence calibration file")
        try:
            modes = {k: ModeCalibration(**v) for k, v in d["modes"].items()}
        except (KeyError, TypeError) as e:
            raise AvqaError(f"confidence calibration file: bad or missing field ({e})") from None
        return cls(modes, d.get("bundle_hash", ""), dict(d.get("fitted_with") or {}))

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
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
                   log: Callable[[str], None] = lambda *_: None) -> Tuple[np.ndarray, np.ndarray]:
    """Answer the calibration set under `mode`'s masks. -> (logits (n, k), labels (n,))."""
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
                ans = pipeline.answer_features(feats, calib.tokens[q], method="rmm+avr", top_k=1)
                logits.append(ans.logits.astype(np.float64))
                labels.append(int(calib.answer[q]))
                n += 1
        if max_questions and n >= max_questions:
            break
    if not labels:
        raise AvqaError("the calibration set has no questions with a known answer")
    log(f"  {mode}: {len(labels)} answers")
    return np.stack(logits), np.asarray(labels)


def fit(pipeline, calib, manifest: Optional[Dict] = None, seed: int = 0, max_questions: int = 0,
        log: Callable[[str], None] = lambda *_: None) -> ConfidenceCalibration:
    """Fit a temperature per mode on the calibration set (see the module docstring)."""
    modes = {}
    for mode in MODES:
        logits, labels = collect_logits(pipeline, calib, mode, seed=seed, max_questions=max_questions, log=log)
        modes[mode] = fit_mode(logits, labels)
    return ConfidenceCalibration(modes, bundle_hash(manifest or {}),
                                 {"pipeline": getattr(pipeline, "name", ""), "seed": seed,
                                  "max_questions": max_questions})
