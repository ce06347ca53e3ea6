"""Failure injection, for demos, tests and the fault benchmark.

    --inject camera:off@5s,mic:silence@10s          from 5 s (10 s) after the start, for good
    --inject camera:black@5s-8s                     from 5 s to 8 s
    --inject mic:clip@4+2                           from 4 s, for 2 s

Kinds (per sensor):

    off        the device is gone: reads fail, reopening fails (reconnect with backoff)
    hang       reads block (a hung driver); the watchdog abandons the read and reopens
    freeze     the last item before the fault, repeated (same content, same device timestamp)
    black      camera: all-black frames
    saturate   camera: all-white frames (alias: clip)
    noise      camera: uniform random snow; mic: loud white noise
    nan        camera: float frames with NaN; mic: NaN samples
    silence    mic: digital silence
    clip       mic: overdriven input, clipped at full scale (alias: saturate)
    flat       mic: a flat line at a DC offset (a stuck ADC)

`FaultySource` wraps a source; the schedule is shared by every source a link opens, so a
fault outlives reconnects.
"""
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from avqa_edge.errors import AvqaError

from .sources import AudioChunk, Frame, Source, SourceError

CAMERA_KINDS = ("off", "hang", "freeze", "black", "saturate", "noise", "nan")
MIC_KINDS = ("off", "hang", "freeze", "silence", "clip", "noise", "nan", "flat")
KINDS: Dict[str, Sequence[str]] = {"camera": CAMERA_KINDS, "mic": MIC_KINDS}
ALIASES = {("camera", "clip"): "saturate", ("mic", "saturate"): "clip", ("camera", "white"): "saturate",
           ("mic", "mute"): "silence", ("camera", "offline"): "off", ("mic", "offline"): "off"}
SENSOR_ALIASES = {"camera": "camera", "cam": "camera", "video": "camera", "mic": "mic", "microphone": "mic",
                  "audio": "mic"}

_SPEC = re.compile(r"^(?P<sensor>[a-z]+):(?P<kind>[a-z]+)@(?P<start>\d+(?:\.\d+)?)s?"
                   r"(?:(?P<op>[-+])(?P<end>\d+(?:\.\d+)?)s?)?$")


@dataclass
class Fault:
    sensor: str                       # "camera" or "mic"
    kind: str
    start: float                      # seconds after the service start
    end: Optional[float] = None       # seconds after the start (None: until the end)

    def active(self, rel: float) -> bool:
        return rel >= self.start and (self.end is None or rel < self.end)

    def __str__(self) -> str:
        span = f"@{self.start:g}s" + ("" if self.end is None else f"-{self.end:g}s")
        return f"{self.sensor}:{self.kind}{span}"


def parse_faults(text: Optional[str]) -> List[Fault]:
    """'camera:off@5s,mic:silence@10s-12s' -> [Fault, ...]; AvqaError on a bad spec."""
    faults: List[Fault] = []
    for part in (text or "").split(","):
        part = part.strip().lower()
        if not part:
            continue
        m = _SPEC.match(part)
        if not m:
            raise AvqaError(f"--inject {part!r}: expected SENSOR:KIND@START[-END], e.g. camera:off@5s or mic:clip@4s-6s")
        sensor = SENSOR_ALIASES.get(m["sensor"])
        if sensor is None:
            raise AvqaError(f"--inject {part!r}: unknown sensor {m['sensor']!r} (camera or mic)")
        kind = ALIASES.get((sensor, m["kind"]), m["kind"])
        if kind not in KINDS[sensor]:
            raise AvqaError(f"--inject {part!r}: {sensor} faults are {', '.join(KINDS[sensor])}")
        start = float(m["start"])
        end = None
        if m["end"] is not None:
            end = start + float(m["end"]) if m["op"] == "+" else float(m["end"])
            if end <= start:
                raise AvqaError(f"--inject {part!r}: the fault must end after it starts")
        faults.append(Fault(sensor, kind, start, end))
    return faults


class FaultSchedule:
    """The faults of one sensor, relative to clock time `t0`; remembers the last good item
    (for `freeze`) across reconnects."""

    def __init__(self, sensor: str, faults: Sequence[Fault], clock, t0: float, seed: int = 0):
        self.sensor = sensor
        self.faults = [f for f in faults if f.sensor == sensor]
        self.clock, self.t0 = clock, t0
        self.rng = np.random.default_rng(seed)
        self.frozen = None

    def active(self, t: Optional[float] = None) -> Optional[Fault]:
        rel = (self.clock.now() if t is None else t) - self.t0
        for f in self.faults:
            if f.active(rel):
                return f
        return None

    def end_of(self, fault: Fault) -> float:
        return float("inf") if fault.end is None else self.t0 + fault.end


class FaultySource(Source):
    """A source with the schedule's faults applied (see the module docstring)."""

    def __init__(self, inner: Source, schedule: FaultSchedule):
        super().__init__(inner.clock)
        self.inner, self.schedule = inner, schedule
        self.sensor, self.description = inner.sensor, inner.description
        self.closed = False

    def open(self) -> None:
        f = self.schedule.active()
        if f is not None and f.kind == "off":
            raise SourceError(f"cannot open {self.description} (injected {f})")
        self.closed = False
        self.inner.open()

    def close(self) -> None:
        self.closed = True
        self.inner.close()

    def abandon(self) -> None:
        self.closed = True                     # ends a simulated hang
        self.inner.abandon()

    def next_due(self) -> float:
        due = self.inner.next_due()
        f = self.schedule.active(due)
        if f is not None and f.kind == "hang" and self.clock.simulated:
            return max(due, self.schedule.end_of(f))   # simulated: nothing arrives until the hang ends
        return due

    def read(self):
        f = self.schedule.active(self.inner.next_due())
        if f is not None and f.kind == "hang" and not self.clock.simulated:
            end = self.schedule.end_of(f)
            while not self.closed and self.clock.now() < end:   # a hung read: only the watchdog gets out
                self.clock.sleep_until(min(end, self.clock.now() + 0.05))
            if self.closed:
                raise SourceError("read abandoned")
        item = self.inner.read()
        f = self.schedule.active(item.t)
        if f is None:
            self.schedule.frozen = item
            return item
        if f.kind == "off":
            raise SourceError(f"read failed: device lost (injected {f})")
        if f.kind == "hang":
            return item
        return self._apply(f.kind, item)

    def _apply(self, kind: str, item):
        rng = self.schedule.rng
        if isinstance(item, Frame):
            img = item.image
            if kind == "freeze":
                last = self.schedule.frozen if isinstance(self.schedule.frozen, Frame) else item
                self.schedule.frozen = last
                return Frame(item.t, last.image.copy(), last.device_ts)
            if kind == "black":
                return Frame(item.t, np.zeros_like(img), item.device_ts)
            if kind == "saturate":
                return Frame(item.t, np.full_like(img, 255), item.device_ts)
            if kind == "noise":
                return Frame(item.t, rng.integers(0, 256, img.shape, dtype=np.uint8), item.device_ts)
            if kind == "nan":
                x = img.astype(np.float32)
                x[: x.shape[0] // 2] = np.nan
                return Frame(item.t, x, item.device_ts)
        elif isinstance(item, AudioChunk):
            x = item.samples
            if kind == "freeze":
                last = self.schedule.frozen if isinstance(self.schedule.frozen, AudioChunk) else item
                self.schedule.frozen = last
                return AudioChunk(item.t, last.samples.copy(), item.overflow)
            if kind == "silence":
                return AudioChunk(item.t, np.zeros_like(x), item.overflow)
            if kind == "clip":
                return AudioChunk(item.t, np.clip(x * 1000.0, -1.0, 1.0).astype(np.float32), item.overflow)
            if kind == "noise":
                return AudioChunk(item.t, rng.uniform(-0.5, 0.5, x.shape).astype(np.float32), item.overflow)
            if kind == "nan":
                y = x.astype(np.float32).copy()
                y[::7] = np.nan
                return AudioChunk(item.t, y, item.overflow)
            if kind == "flat":
                return AudioChunk(item.t, np.full_like(x, 0.3), item.overflow)
        raise AvqaError(f"fault {kind!r} does not apply to {type(item).__name__}")
