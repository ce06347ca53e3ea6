"""Fault benchmark: inject every failure kind into the demo source and measure how fast
health notices it and how fast it recovers; count false alarms over a healthy replay.

Per (sensor, kind), `trials` runs; each replays the calibration clips for `warm_s`, injects
the fault for `fault_s` (its start shifted by a different fraction of a second per trial,
so it falls at different points between frames), then waits up to `settle_s`:

    time to detect   first transition to `failed` after the fault starts (goal: <= 1 s)
    time to recover  first transition back to `ok` after the fault ends
    false alarm      any `failed` before the fault starts, or of the other sensor

Healthy replay: `healthy_s` seconds of the clips with no fault; every transition to
`failed` is a false alarm (goal: 0), transitions to `degraded` are counted too.

With `holdout` (the default) thresholds are fitted on the even calibration clips and the
odd ones are replayed, so false alarms are measured on clips the fit never saw.

Two clocks: `simulated` (default) drives the real sources, checks, monitors and buffers
single-threaded on a SimClock, so ten minutes of replay take seconds and the result is
deterministic; `realtime` runs the live threads (watchdog included) on the wall clock, all
trials at once.
"""
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .clock import RealClock, SimClock
from .health import CameraChecker, HealthMonitor, HealthThresholds, MicChecker
from .inject import KINDS, Fault, FaultSchedule, FaultySource
from .sensors import SensorLink, Sensors, run_simulated
from .sources import DemoCamera, DemoMic, DemoReel
from .window import Window

GOAL_DETECT_S = 1.0


@dataclass
class KindResult:
    sensor: str
    kind: str
    trials: int
    detected: int
    detect_s: List[float] = field(default_factory=list)
    degrade_s: List[float] = field(default_factory=list)
    recovered: int = 0
    recover_s: List[float] = field(default_factory=list)
    false_alarms: int = 0
    reasons: List[str] = field(default_factory=list)

    @property
    def max_detect_s(self) -> Optional[float]:
        return max(self.detect_s) if self.detect_s else None

    @property
    def median_detect_s(self) -> Optional[float]:
        return float(np.median(self.detect_s)) if self.detect_s else None

    @property
    def max_recover_s(self) -> Optional[float]:
        return max(self.recover_s) if self.recover_s else None

    @property
    def meets_goal(self) -> bool:
        return self.detected == self.trials and (self.max_detect_s or 0) <= GOAL_DETECT_S


@dataclass
class HealthyResult:
    seconds: float
    failed: int                    # false alarms
    degraded: int
    reasons: List[str] = field(default_factory=list)


@dataclass
class FaultReport:
    clock: str
    kinds: List[KindResult]
    healthy: Optional[HealthyResult]
    thresholds: Dict
    clips: Dict

    def to_dict(self) -> Dict:
        kinds = []
        for k in self.kinds:
            d = asdict(k)
            d.update(max_detect_s=k.max_detect_s, median_detect_s=k.median_detect_s, max_recover_s=k.max_recover_s,
                     meets_goal=k.meets_goal)
            kinds.append(d)
        return {"clock": self.clock, "goal_detect_s": GOAL_DETECT_S, "kinds": kinds,
                "healthy": None if self.healthy is None else asdict(self.healthy),
                "thresholds": self.thresholds, "clips": self.clips}


class _Rig:
    """Both demo sensors wired as in `serve` (sources, faults, checks, monitors, window)."""

    def __init__(self, frames, audio, clips, th: HealthThresholds, faults: Sequence[Fault], clock, t0: float):
        self.clock, self.t0 = clock, t0
        reel = DemoReel(frames, audio, start=t0, clips=clips)
        self.window = Window(t0)
        self.links: Dict[str, SensorLink] = {}
        for sensor in ("camera", "mic"):
            schedule = FaultSchedule(sensor, faults, clock, t0, seed=int(t0 * 1000) % 9973)
            make = (lambda: DemoCamera(reel, clock)) if sensor == "camera" else (lambda: DemoMic(reel, clock))
            factory = (lambda mk, sch: (lambda: FaultySource(mk(), sch)))(make, schedule)
            stall = th.camera.stall_s if sensor == "camera" else th.mic.stall_s
            monitor = HealthMonitor(sensor, th.timing, stall, clock, what="frames" if sensor == "camera" else "audio",
                                    on_change=self._on_change)
            checker = CameraChecker(th.camera) if sensor == "camera" else MicChecker(th.mic)
            self.links[sensor] = SensorLink(sensor, factory, checker, monitor, self.window, clock)

    def _on_change(self, sensor, tr) -> None:
        if tr.new == "failed":
            self.window.invalidate(sensor, tr.onset)

    def transitions(self, sensor: str):
        return [(tr.t - self.t0, tr.old, tr.new, tr.reason) for tr in self.links[sensor].monitor.transitions]


def _score(rig: _Rig, fault: Fault) -> Tuple[Optional[float], Optional[float], Optional[float], int, str]:
    """-> (detect_s, degrade_s, recover_s, false alarms, reason at detection)."""
    own = rig.transitions(fault.sensor)
    other = rig.transitions("mic" if fault.sensor == "camera" else "camera")
    false_alarms = sum(1 for t, _, new, _ in own if new == "failed" and t < fault.start)
    false_alarms += sum(1 for _, _, new, _ in other if new == "failed")
    detect = next(((t - fault.start, why) for t, _, new, why in own if new == "failed" and t >= fault.start), None)
    degrade = next((t - fault.start for t, _, new, _ in own if new != "ok" and t >= fault.start), None)
    recover = None
    if detect is not None and fault.end is not None:
        last_fail = max(t for t, _, new, _ in own if new == "failed")
        recover = next((t - fault.end for t, _, new, _ in own if new == "ok" and t > last_fail), None)
    return (None if detect is None else detect[0]), degrade, recover, false_alarms, ("" if detect is None else detect[1])


def _all_kinds() -> List[Tuple[str, str]]:
    return [(s, k) for s in ("camera", "mic") for k in KINDS[s]]


def run(frames: np.ndarray, audio: np.ndarray, thresholds: Optional[HealthThresholds] = None,
        kinds: Optional[Sequence[Tuple[str, str]]] = None, trials: int = 4, warm_s: float = 4.0, fault_s: float = 3.0,
        settle_s: float = 8.0, healthy_s: float = 600.0, holdout: bool = True, realtime: bool = False,
        log: Callable[[str], None] = lambda *_: None) -> FaultReport:
    """The benchmark (see the module docstring). frames (N, T, F, H, W, 3) uint8, audio (N, T*S) int16."""
    from avqa_edge.calibration.thresholds import fit_from_calibset
    n = len(frames)
    if holdout and n >= 2:
        fit_clips, replay = list(range(0, n, 2)), list(range(1, n, 2))
    else:
        fit_clips, replay = list(range(n)), list(range(n))
    th = thresholds or fit_from_calibset(frames, audio, fit_clips, source="calibration set (fit clips)")
    kinds = list(kinds or _all_kinds())
    plans = [(sensor, kind, Fault(sensor, kind, warm_s + 0.13 * i, warm_s + 0.13 * i + fault_s))
             for sensor, kind in kinds for i in range(trials)]
    until = warm_s + 0.13 * trials + fault_s + settle_s
    results = {(s, k): KindResult(s, k, trials, 0) for s, k in kinds}
    t_start = time.perf_counter()
    if realtime:
        rigs = _run_realtime(frames, audio, replay, th, plans, until)
    else:
        rigs = []
        for _, _, fault in plans:
            clock = SimClock()
            rig = _Rig(frames, audio, replay, th, [fault], clock, 0.0)
            run_simulated(list(rig.links.values()), clock, fault.end + settle_s)
            rigs.append(rig)
    for (sensor, kind, fault), rig in zip(plans, rigs):
        r = results[(sensor, kind)]
        detect, degrade, recover, fa, why = _score(rig, fault)
        r.false_alarms += fa
        if detect is not None:
            r.detected += 1
            r.detect_s.append(round(detect, 3))
            if why and why not in r.reasons:
                r.reasons.append(why)
        if degrade is not None:
            r.degrade_s.append(round(degrade, 3))
        if recover is not None:
            r.recovered += 1
            r.recover_s.append(round(recover, 3))
    log(f"fault trials: {len(plans)} in {time.perf_counter() - t_start:.1f} s ({'realtime' if realtime else 'simulated'} clock)")
    healthy = None
    if healthy_s > 0:
        t_start = time.perf_counter()
        healthy = _healthy(frames, audio, replay, th, healthy_s, realtime)
        log(f"healthy replay: {healthy_s:g} s in {time.perf_counter() - t_start:.1f} s")
    return FaultReport("realtime" if realtime else "simulated", [results[k] for k in kinds], healthy, th.to_dict(),
                       {"fitted_on": fit_clips, "replayed": replay, "holdout": bool(holdout and n >= 2)})


def _run_realtime(frames, audio, replay, th, plans, until: float) -> List[_Rig]:
    clock = RealClock()
    t0 = clock.now() + 0.2
    rigs, drivers = [], []
    for _, _, fault in plans:
        rig = _Rig(frames, audio, replay, th, [fault], clock, t0)
        for link in rig.links.values():
            link.monitor.t_start = t0
        drivers.append(Sensors(rig.links, clock, hang_s=max(2.0, 2 * max(th.camera.stall_s, th.mic.stall_s))))
        rigs.append(rig)
    for d in drivers:
        d.start()
    clock.sleep_until(t0 + until)
    for d in drivers:
        d.stop(timeout_s=0.5)
    return rigs


def _healthy(frames, audio, replay, th, seconds: float, realtime: bool) -> HealthyResult:
    clock = RealClock() if realtime else SimClock()
    t0 = clock.now() + (0.2 if realtime else 0.0)
    rig = _Rig(frames, audio, replay, th, [], clock, t0)
    if realtime:
        d = Sensors(rig.links, clock)
        d.start()
        clock.sleep_until(t0 + seconds)
        d.stop(timeout_s=0.5)
    else:
        run_simulated(list(rig.links.values()), clock, t0 + seconds)
    failed, degraded, reasons = 0, 0, []
    for sensor in rig.links:
        for t, old, new, why in rig.transitions(sensor):
            if old == "degraded" and why.startswith("starting"):
                continue
            if new == "failed":
                failed += 1
            elif new == "degraded" and old == "ok":
                degraded += 1
            if new != "ok":
                reasons.append(f"{sensor} @{t:.1f}s {new}: {why}")
    return HealthyResult(seconds, failed, degraded, reasons[:50])


def table_rows(report: FaultReport) -> List[List[str]]:
    """Rows for a table: sensor, kind, detected, median / max detect, max recover, FA, reason."""
    def s(x):
        return "-" if x is None else f"{x:.2f}"
    return [[k.sensor, k.kind, f"{k.detected}/{k.trials}", s(k.median_detect_s), s(k.max_detect_s),
             f"{k.recovered}/{k.trials}", s(k.max_recover_s), str(k.false_alarms), "yes" if k.meets_goal else "NO",
             _short(k.reasons[0]) if k.reasons else ""] for k in report.kinds]


def _short(reason: str, n: int = 34) -> str:
    """The reason's head: 'black frames (mean luma 0.0 < 18.3)' -> 'black frames'."""
    head = reason.split(" (")[0].split(";")[0]
    return head if len(head) <= n else head[:n - 1] + "…"



def table(report: FaultReport, trials: int, fault_s: float):
    """The report as a rich Table (rich is imported here, on use)."""
    from rich.table import Table
    out = Table(title=f"fault injection ({report.clock} clock, {trials} trials per kind, faults of {fault_s:g} s)")
    for col in ("sensor", "kind", "detected", "median s", "max s", "recovered", "max s", "false alarms", "<= 1 s",
                "reason"):
        out.add_column(col, no_wrap=col == "reason", overflow="ellipsis")
    for row in table_rows(report):
        out.add_row(*row)
    return out


def summary_lines(report: FaultReport) -> List[str]:
    """What the columns mean, and the healthy replay's false alarms."""
    lines = ["detected / median s / max s: time to detect (failed state) after the fault starts; "
             "recovered / max s: back to ok after it ends"]
    if report.healthy is not None:
        h, clips = report.healthy, report.clips
        lines.append(f"healthy replay of {h.seconds:g} s ({'held-out' if clips['holdout'] else 'fitted'} clips "
                     f"{clips['replayed'][:8]}{'...' if len(clips['replayed']) > 8 else ''}): "
                     f"{h.failed} false alarms (failed), {h.degraded} degraded episodes")
        lines += [f"  {r}" for r in h.reasons[:10]]
    return lines
