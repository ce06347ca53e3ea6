"""Time-aligned ring buffers, cut into the model's T one-second segments.

Segment k covers clock time [t0 + k, t0 + k + 1), where t0 is the service start; both
sensors share this grid, so segment k of the video and of the audio are the same second.
Segments that start before the data start (`set_data_start`: both sensors delivered, or
gave up) lie "before the start": absent for both and not counted as covered, so a sensor
that opens a little later than the other does not look like a failure.
`Window.snapshot(now)` returns the last T *complete* segments (a segment is complete once
`guard_s` has passed after its end, so late audio chunks are in):

    frames (T, F, H, W, 3) uint8    F = FRAMES_PER_SEGMENT; frame f of a segment is the valid
                                    frame nearest to k + (f + 0.5) / F (the other one where a
                                    half-second has none)
    audio  (T * SEGMENT_SAMPLES,)   float32; samples that never arrived or are invalid are 0
    mask_v, mask_a (T,) float32     1 = the sensor has valid data in that segment: at least
                                    one valid frame; at least `min_audio_coverage` of the
                                    samples

Items are stored with a validity flag (bad content, or the sensor was failed); `invalidate(since)`
drops what arrived after a failure's onset once the failure is confirmed.
"""
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Deque, Optional, Tuple

import numpy as np

from . import signal as sig

T = sig.T_SEGMENTS
F = sig.FRAMES_PER_SEGMENT
SR = sig.SAMPLE_RATE


@dataclass
class WindowData:
    frames: np.ndarray        # (T, F, H, W, 3) uint8
    audio: np.ndarray         # (T * SEGMENT_SAMPLES,) float32
    mask_v: np.ndarray        # (T,) float32, 1 = real video segment
    mask_a: np.ndarray        # (T,) float32, 1 = real audio segment
    k_end: int                # the window is segments [k_end - T, k_end)
    t_start: float            # clock time of the window's start, s
    t_end: float              # clock time of its end, s
    covered: int              # segments of the window that lie after the service start
    version: int              # changes whenever stored data is invalidated


class VideoRing:
    """The last `horizon_s` seconds of frames: (t, image (H, W, 3) uint8, valid)."""

    def __init__(self, horizon_s: float = T + 3.0):
        self.horizon_s = horizon_s
        self.items: Deque[Tuple[float, np.ndarray, bool]] = deque()
        self.lock = threading.Lock()
        self.latest: Optional[Tuple[float, np.ndarray, bool]] = None
        self.version = 0

    def add(self, t: float, image: np.ndarray, valid: bool) -> None:
        with self.lock:
            self.items.append((t, image, bool(valid)))
            self.latest = (t, image, bool(valid))
            while self.items and self.items[0][0] < t - self.horizon_s:
                self.items.popleft()

    def invalidate(self, since: float) -> int:
        """Mark frames at or after `since` invalid. -> how many were changed."""
        n = 0
        with self.lock:
            for i, (t, img, valid) in enumerate(self.items):
                if t >= since and valid:
                    self.items[i] = (t, img, False)
                    n += 1
            if n:
                self.version += 1
        return n

    def segment(self, t_seg: float) -> Optional[np.ndarray]:
        """(F, H, W, 3) frames for the segment starting at clock time t_seg, or None."""
        with self.lock:
            inside = [(t, img) for t, img, valid in self.items if valid and t_seg <= t < t_seg + 1.0]
        if not inside:
            return None
        out = []
        for f in range(F):
            lo, hi = t_seg + f / F, t_seg + (f + 1) / F
            centre = (lo + hi) / 2
            half = [(abs(t - centre), i) for i, (t, _) in enumerate(inside) if lo <= t < hi]
            pool = half or [(abs(t - centre), i) for i, (t, _) in enumerate(inside)]
            out.append(inside[min(pool)[1]][1])
        return np.stack(out)


class AudioRing:
    """The last `capacity_s` seconds of audio on an absolute sample grid:
    sample n <-> clock time t0 + n / SAMPLE_RATE."""

    def __init__(self, t0: float, capacity_s: float = T + 3.0):
        self.t0 = t0
        self.cap = int(capacity_s * SR)
        self.data = np.zeros(self.cap, np.float32)
        self.owner = np.full(self.cap, -1, np.int64)      # absolute sample index held in each slot
        self.valid = np.zeros(self.cap, bool)
        self.head = 0                                      # one past the newest absolute sample
        self.lock = threading.Lock()
        self.version = 0
        self.level = 0.0                                   # AC RMS of the latest chunk

    def _slots(self, n0: int, n: int) -> np.ndarray:
        return (n0 + np.arange(n)) % self.cap

    def add(self, t: float, samples: np.ndarray, valid: bool) -> None:
        x = np.asarray(samples, np.float32).reshape(-1)
        if not np.isfinite(x).all():
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        n0 = int(round((t - self.t0) * SR))
        if n0 < 0:                                         # before the grid starts: drop that part
            x, n0 = x[-n0:], 0
        if len(x) == 0:
            return
        if len(x) > self.cap:
            x, n0 = x[-self.cap:], n0 + len(x) - self.cap
        with self.lock:
            idx = self._slots(n0, len(x))
            self.data[idx], self.owner[idx], self.valid[idx] = x, n0 + np.arange(len(x)), bool(valid)
            self.head = max(self.head, n0 + len(x))
            self.level = float(x.std())

    def invalidate(self, since: float) -> int:
        n_since = max(0, int(round((since - self.t0) * SR)))
        with self.lock:
            if n_since >= self.head:
                return 0
            n_since = max(n_since, self.head - self.cap)
            idx = self._slots(n_since, self.head - n_since)
            mine = self.owner[idx] == n_since + np.arange(len(idx))
            changed = int((self.valid[idx] & mine).sum())
            self.valid[idx[mine]] = False
            if changed:
                self.version += 1
        return changed

    def segment(self, k: int) -> Tuple[np.ndarray, float]:
        """Segment k's samples (SEGMENT_SAMPLES,) float32 (0 where absent) and the fraction
        of them that are present and valid."""
        n0 = k * sig.SEGMENT_SAMPLES
        with self.lock:
            idx = self._slots(n0, sig.SEGMENT_SAMPLES)
            ok = (self.owner[idx] == n0 + np.arange(sig.SEGMENT_SAMPLES)) & self.valid[idx]
            x = np.where(ok, self.data[idx], 0.0).astype(np.float32)
        return x, float(ok.mean())


class Window:
    """The T-segment window over both rings (see the module docstring)."""

    def __init__(self, t0: float, guard_s: float = 0.15, min_audio_coverage: float = 0.9,
                 data_start: Optional[float] = None):
        self.t0 = t0
        self.guard_s = guard_s
        self.min_audio_coverage = min_audio_coverage
        self.video = VideoRing()
        self.audio = AudioRing(t0)
        self.k_first = 0
        if data_start is not None:
            self.set_data_start(data_start)

    def set_data_start(self, t: float) -> None:
        """Segments starting before clock time `t` (sensors still opening) lie before the
        start: absent for both sensors and not counted as covered."""
        self.k_first = max(0, int(math.ceil(t - self.t0 - 1e-9))) if math.isfinite(t) else 2 ** 62

    def k_end(self, now: float) -> int:
        """One past the newest complete segment at clock time `now`."""
        return int(math.floor(now - self.guard_s - self.t0))

    def elapsed_segments(self, now: float) -> int:
        """Complete segments since the data start."""
        return max(0, self.k_end(now) - self.k_first)

    def invalidate(self, sensor: str, since: float) -> int:
        return self.video.invalidate(since) if sensor == "camera" else self.audio.invalidate(since)

    def snapshot(self, now: float) -> WindowData:
        k_end = self.k_end(now)
        frames = np.zeros((T, F, sig.FRAME_H, sig.FRAME_W, 3), np.uint8)
        audio = np.zeros(T * sig.SEGMENT_SAMPLES, np.float32)
        mask_v, mask_a = np.zeros(T, np.float32), np.zeros(T, np.float32)
        for i, k in enumerate(range(k_end - T, k_end)):
            if k < self.k_first:
                continue                                              # before the sensors started
            seg = self.video.segment(self.t0 + k)
            if seg is not None:
                frames[i], mask_v[i] = seg, 1.0
            x, coverage = self.audio.segment(k)
            if coverage >= self.min_audio_coverage:
                audio[i * sig.SEGMENT_SAMPLES:(i + 1) * sig.SEGMENT_SAMPLES], mask_a[i] = x, 1.0
        return WindowData(frames, audio, mask_v, mask_a, k_end, self.t0 + k_end - T, self.t0 + k_end,
                          covered=int(np.clip(k_end - self.k_first, 0, T)), version=self.video.version * 1000003 + self.audio.version)


def masks_text(mask: np.ndarray) -> str:
    """(T,) 0/1 -> e.g. '1111100000' (oldest segment first)."""
    return "".join("1" if m else "0" for m in np.asarray(mask).reshape(-1))

