"""Per-sensor health: content checks on every frame / audio chunk, and a state machine
ok / degraded / failed with a reason, hysteresis and stall detection.

Checks (thresholds in `HealthThresholds`; defaults fitted by calibration/thresholds.py on
the bundle's calibration set, or by `avqa-edge calibrate` on the real device):

    camera  nan        non-finite pixels (float backends)
            black      mean luma (0-255) below `black_luma`
            saturated  fraction of pixels >= 250 in every channel above `saturated_frac`
            noise      snow: mean |horizontal neighbour difference| / std above `noise_roughness`
            frozen     mean |difference to the previous frame| <= `freeze_diff`, or the
                       device timestamp did not advance
    mic     nan        non-finite samples
            silence    level (AC RMS) below `silence_level` (flat line: the same at a DC offset)
            clipping   fraction of samples at |x| >= 0.99 above `clip_frac`
            noise      loud broadband noise: spectral flatness >= `noise_flatness` and level
                       >= `noise_level`
            frozen     a chunk bit-identical to the previous one that carries a noise floor
                       (a stuck driver buffer; see `digital_residual`: a clean digital
                       periodic signal, e.g. a tone file whose period divides the chunk,
                       repeats exactly too and is not frozen)
            overflow   the device's overflow flag: a warning (degraded), never a failure
    both    open / read errors, and no data for `stall_s` seconds (stalls, hung reads)

States. A problem streak starts at the first bad item (or error) and is reset by a good
item. `failed` when the streak has lasted `fail_after_s` (`error_fail_after_s` if it holds
only open / read errors) with at least `min_bad` bad items or errors, or when no good item
came for `stall_s`. Back to `ok` only after `recover_s` of good items
(at least `min_good`): recovering takes longer than failing, so a flicker cannot flap the
state. `degraded` while a streak is open, or within `degrade_hold_s` of any bad item or
warning; degraded data is still used (items that are bad on their own are not). A silent
scene or a static one is not a failure: the fitted thresholds sit below the quietest and
stillest healthy calibration data (measured by `avqa-edge faults`).
"""
import json
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from avqa_edge.errors import AvqaError

from . import signal as sig

STATES = ("ok", "degraded", "failed")
SENSORS = ("camera", "mic")
CLIP_LEVEL = 0.99              # |x| at or above this counts as a clipped sample
SATURATED_VALUE = 250          # a pixel at or above this in every channel is saturated
DIGITAL_FLOOR = 1e-4           # residual RMS (-80 dBFS) below which a chunk is a clean digital signal
DIGITAL_COMPONENTS = 16        # strongest DFT components a clean periodic signal may use


# ---- thresholds ------------------------------------------------------------------------------

@dataclass
class CameraThresholds:
    black_luma: float = 16.0          # mean luma (0-255) below: black frame
    saturated_frac: float = 0.9       # fraction of saturated pixels above: saturated frame
    noise_roughness: float = 0.95     # roughness above: snow (uniform noise gives ~1.15)
    freeze_diff: float = 0.5          # mean |frame difference| (0-255) at or below: frozen
    freeze_content: bool = True       # False: rely on device timestamps only (see calibrate)
    stall_s: float = 0.85             # no good frame for this long: failed


@dataclass
class MicThresholds:
    silence_level: float = 1e-3       # AC RMS (full scale 1) below: silence / flat line
    clip_frac: float = 0.05           # fraction of clipped samples above: clipping
    noise_flatness: float = 0.3       # spectral flatness at or above ...
    noise_level: float = 0.05         # ... with a level at or above: broadband noise
    stall_s: float = 0.85             # no good chunk for this long: failed


@dataclass
class Timing:
    fail_after_s: float = 0.5         # a problem streak this long (and min_bad items): failed
    error_fail_after_s: float = 0.25  # the same for a streak of open / read errors only
    min_bad: int = 2
    recover_s: float = 1.5            # good items this long (and min_good): ok again
    min_good: int = 2
    degrade_hold_s: float = 1.0       # degraded for this long after any bad item or warning


@dataclass
class HealthThresholds:
    camera: CameraThresholds = field(default_factory=CameraThresholds)
    mic: MicThresholds = field(default_factory=MicThresholds)
    timing: Timing = field(default_factory=Timing)
    fitted_on: Dict = field(default_factory=dict)      # provenance: what the values were fitted on

    def to_dict(self) -> Dict:
        return {"kind": "avqa-edge-health-thresholds", "camera": asdict(self.camera), "mic": asdict(self.mic),
                "timing": asdict(self.timing), "fitted_on": dict(self.fitted_on)}

    @classmethod
    def from_dict(cls, d: Dict) -> "HealthThresholds":
        if not isinstance(d, dict) or d.get("kind") != "avqa-edge-health-thresholds":
            raise AvqaError("not an avqa-edge health thresholds file (written by `avqa-edge calibrate`)")
        try:
            return cls(CameraThresholds(**d["camera"]), MicThresholds(**d["mic"]), Timing(**d["timing"]),
                       dict(d.get("fitted_on") or {}))
        except (KeyError, TypeError) as e:
            raise AvqaError(f"health thresholds file: bad or missing field ({e})") from None

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path) -> "HealthThresholds":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise AvqaError(f"health thresholds file {path} not found") from None
        except ValueError as e:
            raise AvqaError(f"health thresholds file {path} is not valid JSON: {e}") from None


# ---- statistics (shared with calibration/thresholds.py, so checks and fits agree) -------------

def luma(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) float32 luma (BT.601), 0-255."""
    x = img.astype(np.float32)
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def frame_stats(img: np.ndarray) -> Dict[str, float]:
    """A uint8 (H, W, 3) frame -> luma mean (0-255), saturated fraction, roughness."""
    y = luma(img)
    std = float(y.std())
    rough = float(np.abs(np.diff(y, axis=1)).mean() / std) if std > 1.0 else 0.0
    return {"luma": float(y.mean()), "saturated": float((img >= SATURATED_VALUE).all(axis=-1).mean()),
            "roughness": rough}


def frame_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 frames, 0-255."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def chunk_stats(x: np.ndarray) -> Dict[str, float]:
    """An audio chunk (n,) float in [-1, 1] -> level (AC RMS), dc, clipped fraction,
    spectral flatness (geometric / arithmetic mean of the Hann-windowed power spectrum)."""
    x = np.asarray(x, dtype=np.float64)
    level, dc = float(x.std()), float(x.mean())
    power = np.abs(np.fft.rfft((x - dc) * np.hanning(len(x)))) ** 2 + 1e-20
    flat = float(np.exp(np.log(power).mean()) / power.mean())
    return {"level": level, "dc": dc, "clip": float((np.abs(x) >= CLIP_LEVEL).mean()), "flatness": flat}


def digital_residual(x: np.ndarray, components: int = DIGITAL_COMPONENTS) -> float:
    """RMS (full scale 1) of a chunk (n,) without its `components` strongest DFT bins.

    A chunk that repeats bit-exactly holds a signal whose period divides the chunk, so
    without a window its energy sits in exact DFT bins: a digitally made tone, chord or
    square wave leaves only rounding here (about -100 dBFS for 16-bit audio), while
    anything a microphone captured leaves its noise floor (above DIGITAL_FLOOR)."""
    x = np.asarray(x, dtype=np.float64)
    power = np.abs(np.fft.rfft(x)) ** 2                                  # (n // 2 + 1,)
    rest = np.sort(power)[:-components] if len(power) > components else power[:0]
    return float(np.sqrt(2.0 * rest.sum()) / len(x))


def dbfs(level: float) -> float:
    return float(20 * np.log10(max(level, 1e-9)))


# ---- per-item checks ------------------------------------------------------------------------

@dataclass
class Verdict:
    code: Optional[str] = None        # problem code (None: the item is fine)
    reason: str = ""
    invalid: bool = False             # unusable on its own (frozen items are only dropped once confirmed)
    warn: Optional[str] = None        # a soft warning: degraded, never failed

    @property
    def ok(self) -> bool:
        return self.code is None


class CameraChecker:
    """Checks frames in arrival order. `check(frame)` -> (verdict, uint8 image or None)."""

    def __init__(self, th: CameraThresholds):
        self.th = th
        self.prev: Optional[np.ndarray] = None
        self.prev_ts: Optional[float] = None

    def check(self, frame) -> Tuple[Verdict, Optional[np.ndarray]]:
        img, th = frame.image, self.th
        if img.dtype != np.uint8:
            if not np.isfinite(img).all():
                self.prev = None
                return Verdict("nan", "non-finite pixel values (NaN/Inf)", True), None
            img = np.clip(np.round(img), 0, 255).astype(np.uint8)
        if img.shape != (sig.FRAME_H, sig.FRAME_W, 3):
            return Verdict("format", f"frame has shape {img.shape}, expected {(sig.FRAME_H, sig.FRAME_W, 3)}", True), None
        prev, prev_ts = self.prev, self.prev_ts
        self.prev, self.prev_ts = img, frame.device_ts
        s = frame_stats(img)
        if s["luma"] < th.black_luma:
            return Verdict("black", f"black frames (mean luma {s['luma']:.1f} < {th.black_luma:.1f})", True), img
        if s["saturated"] > th.saturated_frac:
            return Verdict("saturated", f"saturated frames ({s['saturated']:.0%} of pixels at full scale)", True), img
        if s["roughness"] > th.noise_roughness:
            return Verdict("noise", f"noise / snow (roughness {s['roughness']:.2f} > {th.noise_roughness:.2f})", True), img
        if frame.device_ts is not None and prev_ts is not None and frame.device_ts == prev_ts:
            return Verdict("frozen", f"frozen: device timestamp stalled at {frame.device_ts:.0f} ms"), img
        if th.freeze_content and prev is not None:
            d = frame_diff(img, prev)
            if d <= th.freeze_diff:
                return Verdict("frozen", f"frozen: identical frames (difference {d:.2f} <= {th.freeze_diff:.2f})"), img
        return Verdict(), img


class MicChecker:
    """Checks audio chunks in arrival order. `check(chunk)` -> (verdict, float32 samples or None)."""

    def __init__(self, th: MicThresholds):
        self.th = th
        self.prev: Optional[np.ndarray] = None

    def check(self, chunk) -> Tuple[Verdict, Optional[np.ndarray]]:
        x, th = np.asarray(chunk.samples), self.th
        warn = "input overflow (the device dropped samples)" if chunk.overflow else None
        if len(x) == 0:
            return Verdict("format", "empty audio chunk", True, warn), None
        if not np.isfinite(x).all():
            self.prev = None
            return Verdict("nan", "non-finite samples (NaN/Inf)", True, warn), None
        x = x.astype(np.float32)
        prev, self.prev = self.prev, x
        s = chunk_stats(x)
        if s["level"] < th.silence_level:
            if abs(s["dc"]) >= th.silence_level:
                return Verdict("flat", f"flat line (stuck at {s['dc']:+.3f})", True, warn), x
            return Verdict("silence", f"silence ({dbfs(s['level']):.0f} dBFS, floor {dbfs(th.silence_level):.0f} dBFS)",
                           True, warn), x
        if s["clip"] > th.clip_frac:
            return Verdict("clipping", f"clipping ({s['clip']:.0%} of samples at full scale)", True, warn), x
        if s["flatness"] >= th.noise_flatness and s["level"] >= th.noise_level:
            return Verdict("noise", f"loud broadband noise ({dbfs(s['level']):.0f} dBFS, flatness {s['flatness']:.2f})",
                           True, warn), x
        if (prev is not None and len(prev) == len(x) and np.array_equal(prev, x)
                and digital_residual(x) >= DIGITAL_FLOOR):                # a periodic signal repeats exactly too
            return Verdict("frozen", "frozen: the same audio buffer repeated (a stuck driver)", False, warn), x
        return Verdict(warn=warn), x


# ---- the state machine -----------------------------------------------------------------------

@dataclass
class Transition:
    t: float          # clock time of the change, s
    old: str
    new: str
    reason: str
    onset: float      # when the problem began (the first bad item); = t for recoveries


class HealthMonitor:
    """ok / degraded / failed for one sensor (see the module docstring). Thread-safe.

    `observe(t, verdict)` for every item, `error(t, reason)` for open / read errors,
    `tick(now)` periodically (stalls are noticed there). `on_change(transition)` is called
    on every state change, outside the lock."""

    def __init__(self, sensor: str, timing: Timing, stall_s: float, clock, what: str = "data",
                 on_change: Optional[Callable[[str, Transition], None]] = None):
        self.sensor, self.timing, self.stall_s, self.clock, self.what = sensor, timing, float(stall_s), clock, what
        self.on_change = on_change
        self._lock = threading.Lock()
        self.t_start = clock.now()
        self.state, self.reason, self.state_since = "degraded", f"starting (no {what} yet)", self.t_start
        self.last_item: Optional[float] = None
        self.last_good: Optional[float] = None
        self.last_bad = self.t_start
        self.problem_since: Optional[float] = None
        self.problem_count = 0
        self.problem_reason = ""
        self.problem_errors_only = False
        self.good_since: Optional[float] = None
        self.good_count = 0
        self.warn_at = -1e9
        self.warn_reason = ""
        self.items = 0
        self.bad_items = 0
        self.errors = 0
        self.transitions: Deque[Transition] = deque(maxlen=500)

    # -- inputs ----------------------------------------------------------------------------------
    def observe(self, t: float, verdict: Verdict) -> str:
        """Record one item's verdict. -> the state after it."""
        with self._lock:
            self.items += 1
            self.last_item = t
            if verdict.warn:
                self.warn_at, self.warn_reason = t, verdict.warn
            if verdict.ok:
                self.last_good = t
                if self.good_since is None:                     # arrival time: a backlog does not count
                    self.good_since, self.good_count = max(t, self.clock.now()), 0
                self.good_count += 1
                self.problem_since, self.problem_count = None, 0
            else:
                self.bad_items += 1
                self._bad(t, verdict.reason)
            changes = self._evaluate(max(t, self.clock.now()))
        self._notify(changes)
        return self.state

    def error(self, t: float, reason: str) -> None:
        with self._lock:
            self.errors += 1
            self._bad(t, reason, error=True)
            changes = self._evaluate(max(t, self.clock.now()))
        self._notify(changes)

    def tick(self, now: Optional[float] = None) -> str:
        with self._lock:
            changes = self._evaluate(self.clock.now() if now is None else now)
        self._notify(changes)
        return self.state

    def fail(self, reason: str) -> None:
        """Mark the sensor failed for good (e.g. not configured)."""
        with self._lock:
            self.stall_s = float("inf")
            changes = [self._set("failed", reason, self.clock.now(), self.clock.now())]
        self._notify(changes)

    # -- internals -------------------------------------------------------------------------------
    def _bad(self, t: float, reason: str, error: bool = False) -> None:
        if self.problem_since is None:
            self.problem_since, self.problem_count, self.problem_errors_only = t, 0, True
        self.problem_errors_only = self.problem_errors_only and error
        self.problem_count += 1
        self.problem_reason = reason
        self.last_bad = t
        self.good_since, self.good_count = None, 0

    def _set(self, state: str, reason: str, now: float, onset: float) -> Optional[Transition]:
        if state == self.state:
            self.reason = reason
            return None
        tr = Transition(now, self.state, state, reason, onset)
        self.state, self.reason, self.state_since = state, reason, now
        self.transitions.append(tr)
        return tr

    def _evaluate(self, now: float) -> List[Transition]:
        tm = self.timing
        ref = self.last_good if self.last_good is not None else self.t_start
        stalled = now - ref > self.stall_s
        fail_after = tm.error_fail_after_s if self.problem_errors_only else tm.fail_after_s
        confirmed = (self.problem_since is not None and now - self.problem_since >= fail_after
                     and self.problem_count >= tm.min_bad)
        if stalled:
            self.good_since, self.good_count = None, 0          # a stall breaks the good streak
        if confirmed or stalled:
            if self.problem_since is not None:
                reason, onset = self.problem_reason, self.problem_since
            else:
                reason = (f"no {self.what} for {now - ref:.1f} s" if self.last_good is not None
                          else f"no {self.what} since start ({now - ref:.1f} s)")
                onset = ref
            if self.problem_since is not None and stalled and self.last_good is not None:
                reason = f"{reason}; no good {self.what} for {now - ref:.1f} s"
            tr = self._set("failed", reason, now, onset)
            return [tr] if tr else []
        if self.state == "failed":
            recovered = (self.good_since is not None and now - self.good_since >= tm.recover_s
                         and self.good_count >= tm.min_good)
            if not recovered:
                if self.problem_since is None and self.good_since is not None:
                    self.reason = f"recovering ({now - self.good_since:.1f} of {tm.recover_s:g} s good)"
                return []
            tr = self._set("ok", "recovered", now, now)
            return [tr] if tr else []
        if self.problem_since is not None:
            tr = self._set("degraded", self.problem_reason, now, self.problem_since)
        elif now - self.warn_at < tm.degrade_hold_s:
            tr = self._set("degraded", self.warn_reason, now, self.warn_at)
        elif now - self.last_bad < tm.degrade_hold_s or self.last_good is None:
            tr = None                                   # hold the current state (hysteresis)
        else:
            tr = self._set("ok", "", now, now)
        return [tr] if tr else []

    def _notify(self, changes: List[Transition]) -> None:
        if self.on_change is not None:
            for tr in changes:
                self.on_change(self.sensor, tr)

    # -- reporting -------------------------------------------------------------------------------
    def snapshot(self, now: Optional[float] = None) -> Dict:
        """{"state", "reason", "for_s", "last_item_age_s", "items", "bad_items", "errors"}."""
        with self._lock:
            now = self.clock.now() if now is None else now
            return {"state": self.state, "reason": self.reason, "for_s": round(now - self.state_since, 2),
                    "last_item_age_s": None if self.last_item is None else round(now - self.last_item, 2),
                    "items": self.items, "bad_items": self.bad_items, "errors": self.errors}
