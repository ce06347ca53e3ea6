"""Clocks for the live runtime: the real one, and a simulated one for the fault benchmark.

Every timestamp in runtime/ (sources, health, ring buffers) is a `clock.now()` value in
seconds. The real clock is `time.monotonic()`; `wall(t)` maps such a time to Unix time for
reports. The simulated clock only moves when told to, so the fault benchmark can replay
ten minutes of sensor data in seconds, single-threaded and deterministic.
"""
import threading
import time
from typing import Optional


class RealClock:
    """Monotonic seconds; `sleep_until` wakes early when `stop` is set."""

    simulated = False

    def __init__(self):
        self._mono0 = time.monotonic()
        self._wall0 = time.time()

    def now(self) -> float:
        return time.monotonic()

    def wall(self, t: float) -> float:
        """Unix time of the monotonic time `t`."""
        return self._wall0 + (t - self._mono0)

    def sleep_until(self, t: float, stop: Optional[threading.Event] = None) -> bool:
        """Sleep until clock time `t`. -> False if `stop` was set meanwhile."""
        while True:
            left = t - time.monotonic()
            if stop is not None and stop.is_set():
                return False
            if left <= 0:
                return True
            if stop is not None:
                if stop.wait(min(left, 0.5)):
                    return False
            else:
                time.sleep(min(left, 0.5))


class SimClock:
    """A clock that moves only by `advance_to` / `sleep_until` (single-threaded use)."""

    simulated = True

    def __init__(self, start: float = 0.0, wall0: float = 0.0):
        self.t = float(start)
        self._wall0 = wall0

    def now(self) -> float:
        return self.t

    def wall(self, t: float) -> float:
        return self._wall0 + t

    def advance_to(self, t: float) -> None:
        self.t = max(self.t, float(t))

    def sleep_until(self, t: float, stop: Optional[threading.Event] = None) -> bool:
        self.advance_to(t)
        return not (stop is not None and stop.is_set())
