"""Sensor links: source -> content checks -> health monitor -> ring buffer, with reconnects.

A `SensorLink` owns one sensor. `step()` does one unit of work: open the source (on
failure: retry after an exponential backoff, `backoff_min_s` doubling up to
`backoff_max_s`, reset by the first good item) or read one item, check it, tell the health
monitor and store it in the window (valid unless bad on its own or the sensor is failed).

Two ways to drive links:
- `Sensors` (live): one thread per link, plus a supervisor thread that ticks the health
  monitors (stall detection) and runs the watchdog: a read that has not returned after
  `hang_s` is abandoned (its thread is left to exit when the read returns, dropping the
  item and closing its own source) and a fresh source is opened on a new thread. Nothing here ever blocks the HTTP server.
- `run_simulated` (fault benchmark): single-threaded on a SimClock, in time order.
"""
import threading
from typing import Callable, Dict, List, Optional

from .health import HealthMonitor
from .redact import redact
from .sources import Source, SourceError, SourceFactory
from .window import Window


class SensorLink:
    """One sensor (see the module docstring). `factory` None: the sensor is not configured."""

    def __init__(self, sensor: str, factory: Optional[SourceFactory], checker, monitor: HealthMonitor,
                 window: Window, clock, backoff_min_s: float = 0.25, backoff_max_s: float = 5.0):
        self.sensor, self.factory, self.checker, self.monitor = sensor, factory, checker, monitor
        self.window, self.clock = window, clock
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self.source: Optional[Source] = None
        self.next_open = clock.now()
        self.delay = backoff_min_s
        self.generation = 0
        self.read_started: Optional[float] = None
        self.opened = 0                 # successful opens
        self.open_attempts = 0
        self.abandoned = 0              # hung reads given up on
        self.lock = threading.Lock()
        self.description = "not configured" if factory is None else redact(factory().description)

    @property
    def reconnects(self) -> int:
        """Successful reopens after the first open."""
        return max(0, self.opened - 1)

    def next_due(self) -> float:
        if self.factory is None:
            return float("inf")
        src = self.source
        return self.next_open if src is None else src.next_due()

    def _backoff(self, now: float) -> float:
        wait = self.delay
        self.next_open = now + wait
        self.delay = min(self.delay * 2, self.backoff_max_s)
        return wait

    def step(self, generation: Optional[int] = None) -> bool:
        """One open attempt or one read. -> False if this generation was abandoned."""
        if self.factory is None:
            return True
        gen = self.generation if generation is None else generation
        if self.source is None:
            return self._open(gen)
        src = self.source
        with self.lock:
            self.read_started = self.clock.now()
        try:
            item = src.read()
            error = None
        except SourceError as e:
            item, error = None, f"read failed: {e}" if not str(e).startswith("read failed") else str(e)
        except Exception as e:                                   # a backend bug must not kill the link
            item, error = None, f"read failed: {type(e).__name__}: {e}"
        with self.lock:
            self.read_started = None
            stale = gen != self.generation
        if stale:
            _close_quietly(src)
            return False
        now = self.clock.now()
        if error is not None:
            _close_quietly(src)
            self.source = None
            wait = self._backoff(now)
            self.monitor.error(now, redact(f"{error} (reopening in {wait:.2f} s)"))
            return True
        verdict, data = self.checker.check(item)
        state = self.monitor.observe(item.t, verdict)
        if verdict.ok:
            self.delay = self.backoff_min_s
        if data is not None:
            valid = not verdict.invalid and state != "failed"
            if self.sensor == "camera":
                self.window.video.add(item.t, data, valid)
            else:
                self.window.audio.add(item.t, data, valid)
        return True

    def _open(self, gen: int) -> bool:
        now = self.clock.now()
        if now < self.next_open:
            return True
        self.open_attempts += 1
        src = self.factory()
        try:
            src.open()
            error = None
        except SourceError as e:
            error = str(e)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        now = self.clock.now()
        if error is not None:
            _close_quietly(src)
            wait = self._backoff(now)
            self.monitor.error(now, redact(f"open failed: {error} (retrying in {wait:.2f} s)"))
            return True
        with self.lock:
            if gen != self.generation:
                _close_quietly(src)
                return False
            self.source = src
        self.opened += 1
        return True

    def abandon_if_hung(self, now: float, hang_s: float) -> bool:
        """Watchdog: give up a read running for more than hang_s. -> True if one was abandoned
        (the caller starts a new thread for `self.generation`)."""
        with self.lock:
            if self.read_started is None or now - self.read_started <= hang_s:
                return False
            self.generation += 1
            src, self.source, self.read_started = self.source, None, None
            self.abandoned += 1
            wait = self._backoff(now)
        if src is not None:                       # the hung thread closes it if its read returns
            try:
                src.abandon()
            except Exception:
                pass
        self.monitor.error(now, f"read timed out after {hang_s:.1f} s (hung device); reopening in {wait:.2f} s")
        return True

    def close(self) -> None:
        with self.lock:
            self.generation += 1
            src, self.source = self.source, None
        if src is not None:
            _close_quietly(src)

    def stats(self) -> Dict:
        return {"source": self.description, "reconnects": self.reconnects, "open_attempts": self.open_attempts,
                "hung_reads": self.abandoned}


def _close_quietly(src: Source) -> None:
    try:
        src.close()
    except Exception:
        pass


class Sensors:
    """Live driving of the links: a thread each, a supervisor for ticks and the watchdog."""

    def __init__(self, links: Dict[str, SensorLink], clock, tick_s: float = 0.05, hang_s: float = 2.5,
                 on_tick: Optional[Callable[[float], None]] = None):
        self.links, self.clock, self.tick_s, self.hang_s, self.on_tick = links, clock, tick_s, hang_s, on_tick
        self.stop_event = threading.Event()
        self.threads: List[threading.Thread] = []

    def _spawn(self, link: SensorLink) -> None:
        gen = link.generation
        t = threading.Thread(target=self._run_link, args=(link, gen), name=f"avqa-{link.sensor}-{gen}", daemon=True)
        self.threads.append(t)
        t.start()

    def _run_link(self, link: SensorLink, gen: int) -> None:
        while not self.stop_event.is_set():
            if not self.clock.sleep_until(link.next_due(), self.stop_event):
                break
            if not link.step(gen):
                break

    def _supervise(self) -> None:
        while not self.stop_event.wait(self.tick_s):
            now = self.clock.now()
            for link in self.links.values():
                link.monitor.tick(now)
                if link.abandon_if_hung(now, self.hang_s):
                    self._spawn(link)
            self.threads = [t for t in self.threads if t.is_alive()]
            if self.on_tick is not None:
                try:
                    self.on_tick(now)
                except Exception:
                    pass

    def start(self) -> None:
        for link in self.links.values():
            if link.factory is not None:
                self._spawn(link)
        sup = threading.Thread(target=self._supervise, name="avqa-supervisor", daemon=True)
        self.threads.append(sup)
        sup.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self.stop_event.set()
        for link in self.links.values():
            link.close()
        for t in list(self.threads):
            t.join(timeout_s)


def run_simulated(links: List[SensorLink], clock, until: float, tick_s: float = 0.05,
                  on_tick: Optional[Callable[[float], None]] = None) -> None:
    """Drive links on a SimClock up to clock time `until`, in time order (ticks first on ties)."""
    next_tick = clock.now()
    while True:
        due, i = min(((link.next_due(), i) for i, link in enumerate(links)), default=(float("inf"), -1))
        if min(due, next_tick) > until:
            break
        if next_tick <= due:
            clock.advance_to(next_tick)
            for link in links:
                link.monitor.tick(next_tick)
            if on_tick is not None:
                on_tick(next_tick)
            next_tick += tick_s
        else:
            clock.advance_to(due)
            links[i].step()
