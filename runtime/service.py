"""The serving core: sensors + health + window + the pipeline, and the fallback between them.

Every answer is about the last T complete one-second segments. Per segment, a sensor is
real if it delivered valid data then (see runtime/window.py); the pipeline gets those
masks, so a sensor that failed in the middle of the window only loses the segments it
missed. The mode names what the answer rests on:

    complete       every segment real for both sensors: the normal path
    visual_pseudo  camera segments missing: pseudo visual features recalled by RMM from the
                   audio and the question for those segments, the pair refined by AVR
    audio_pseudo   the same for microphone segments
    none           both sensors failed (or nothing real in the window): no answer, never a guess

(If both sensors lost some segments, the mode names the one that lost more; ties go to a
failed sensor.)

The method (`ServeConfig.method`): `rmm+avr` as above, or `prompt` (docs/prompts.md; a bundle
exported with `--prompt`): absent segments stay zero-filled and the backbone answers with
the prompt set the mode names (MODE_CASE: complete -> `complete`, visual_pseudo -> `visual`,
audio_pseudo -> `audio`; `prompt_oracle` told the case by the health state). A mode whose
set the bundle lacks falls back to rmm+avr for that answer, and says so. `auto` serves
prompts where the bundle has usable prompt graphs.

Each answer carries its mode, its method (and prompt set), each sensor's state and reason
(source descriptions and reasons never show a stream's password: runtime/redact.py), the
real segments per sensor, the question's `unknown_words`, a confidence calibrated for its
method and mode (calibration/confidence.py) and scaled by the fraction of known words,
latency and the time span it covers. A question with more than half its words unknown is
refused (runtime/text.py).

    svc = build_service("bundles/edge", ServeConfig(camera="demo", mic="demo", inject="camera:off@15s"))
    svc.start(); svc.wait_ready(30)
    svc.ask("How many instruments are sounding?")   # -> dict (see `Service.ask`)
    svc.stop()
"""
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from avqa_edge.calibration.confidence import MODE_CASE
from avqa_edge.errors import AvqaError, QuestionError, SensorError

from . import signal as sig
from .clock import RealClock
from .health import SENSORS, CameraChecker, HealthMonitor, HealthThresholds, MicChecker, Transition, dbfs
from .inject import FaultSchedule, FaultySource, parse_faults
from .redact import redact
from .sensors import SensorLink, Sensors
from .sources import DemoReel, camera_factory, check_opens, mic_factory
from .text import LONE_SURROGATE, tokenize
from .window import Window, WindowData, masks_text

MODES = ("complete", "audio_pseudo", "visual_pseudo", "none")
SERVE_METHODS = ("auto", "rmm+avr", "prompt")
PROMPT_FIX = "avqa-edge export RUN --out BUNDLE --prompt PROMPT_RUN"
T = sig.T_SEGMENTS
MAX_QUESTION_CHARS = 500
# The demo reel's first clip starts one second after the segment grid's origin: the sensors
# deliver within that second, so the window's first covered segment is the clip's first one and
# every window ending on a multiple of T seconds after it shows one whole clip (until then the
# reel's last clip plays).
DEMO_LEAD_S = 1.0


class NotReady(Exception):
    """The service cannot answer yet (warming up); HTTP 503."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class ServeConfig:
    camera: str = "demo"                 # demo | none | device index | video file | stream URL
    mic: str = "demo"                    # demo | none | default | device index or name | sound file
    backend: str = "auto"                # auto | trt | ort
    allow_unverified_engines: bool = False   # serve TensorRT engines without a passing parity verdict (warned)
    method: str = "auto"                 # auto (prompt where the bundle has prompt graphs) | rmm+avr | prompt
    precision: str = "fp32"              # ONNX Runtime graphs: fp32 | fp16
    threads: int = 0                     # ONNX Runtime intra-op threads (0: its default)
    inject: str = ""                     # e.g. "camera:off@15s,mic:silence@25s-30s"
    thresholds: Optional[str] = None     # health thresholds JSON (default: fitted on the calibration set)
    confidence: Optional[str] = None     # confidence calibration JSON (default: the cache, fitted if absent)
    strict: bool = False                 # refuse to start when a given sensor cannot be opened
    warmup_s: float = float(T)           # answer once this much of the window is recorded
    top_k: int = 3
    workers: int = 1                     # concurrent inferences
    max_question_chars: int = MAX_QUESTION_CHARS
    demo_clips: Optional[List[int]] = None   # demo source: the clips to replay, in order (default: all)
    demo_question: Optional[str] = None      # demo source: play first the clips the calibration set asked this about


def decide_mode(real_a: int, real_v: int, covered: int, camera_state: str, mic_state: str) -> str:
    """The answer's mode from the real segments per sensor and the current states."""
    cam_failed, mic_failed = camera_state == "failed", mic_state == "failed"
    if (cam_failed and mic_failed) or (real_a == 0 and real_v == 0):
        return "none"
    miss_a, miss_v = covered - real_a, covered - real_v
    if miss_a <= 0 and miss_v <= 0:
        return "complete"
    if miss_v != miss_a:
        return "visual_pseudo" if miss_v > miss_a else "audio_pseudo"
    return "audio_pseudo" if mic_failed and not cam_failed else "visual_pseudo"


def prompt_support(pipeline) -> Tuple[bool, str]:
    """(whether the pipeline can answer with prompt sets, why not)."""
    from .pipeline import PROMPT_COMPONENTS
    if pipeline.prompt_cases and all(c in pipeline.runners for c in PROMPT_COMPONENTS):
        return True, ""
    prompts = (pipeline.bundle.manifest.get("prompts") if pipeline.bundle is not None else None) or {}
    if not prompts:
        return False, f"the bundle has no prompt graphs: export it with them (`{PROMPT_FIX}`)"
    if (prompts.get("parity") or {}).get("passed") is False:
        return False, (f"the bundle's prompt graphs failed their parity gate (parity_prompts.md): re-export them "
                       f"(`{PROMPT_FIX}`)")
    if not pipeline.name.startswith("ort"):
        return False, "the prompt graphs run on ONNX Runtime only (no TensorRT engines for them yet): use --backend ort"
    return False, "the bundle's prompt graphs are not loaded"


def resolve_method(pipeline, requested: str) -> str:
    """`auto` / `rmm+avr` / `prompt` -> the method served: "prompt" or "rmm+avr"."""
    if requested not in SERVE_METHODS:
        raise AvqaError(f"--method must be one of {', '.join(SERVE_METHODS)}, got {requested!r}")
    ok, why = prompt_support(pipeline)
    if requested == "auto":
        return "prompt" if ok else "rmm+avr"
    if requested == "prompt" and not ok:
        raise AvqaError(f"--method prompt: {why}; or serve with --method rmm+avr")
    return requested


def confidence_methods(pipeline, method: str) -> List[str]:
    """The pipeline methods whose logits the served answers can come from: rmm+avr, or
    prompt_oracle (+ rmm+avr where a mode's prompt set is missing from the bundle)."""
    if method != "prompt":
        return ["rmm+avr"]
    missing = [m for m, case in MODE_CASE.items() if case not in pipeline.prompt_cases]
    return ["prompt_oracle"] + (["rmm+avr"] if missing else [])


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


class Service:
    """Owns the running sensors and answers questions about the current window."""

    def __init__(self, pipeline, window: Window, links: Dict[str, SensorLink], sensors: Sensors, confidence,
                 thresholds: HealthThresholds, clock, t0: float, cfg: ServeConfig,
                 log: Callable[[str], None] = lambda *_: None, faults=(), method: str = "rmm+avr"):
        if method not in ("rmm+avr", "prompt"):
            raise AvqaError(f"the service answers with rmm+avr or prompt, got {method!r}")
        self.pipeline, self.window, self.links, self.sensors = pipeline, window, links, sensors
        self.method = method                           # resolved: "rmm+avr" | "prompt" (see resolve_method)
        self.confidence, self.thresholds, self.clock, self.t0, self.cfg = confidence, thresholds, clock, t0, cfg
        self.log, self.faults = log, list(faults)
        self.reel = None                               # the demo reel and fault schedules follow t0 (start())
        self.calib = None                              # the calibration set (the demo reel's clips and answers)
        self.schedules: List[FaultSchedule] = []
        self.metrics = None
        self.warmup_segments = int(min(T, max(1, math.ceil(cfg.warmup_s))))
        self._sem = threading.Semaphore(max(1, cfg.workers))
        self._cache_lock = threading.Lock()
        self._cache: Tuple[Optional[tuple], object] = (None, None)
        self.answers = 0
        self.started = False
        self.data_started = False
        self.startup_timeout_s = 5.0                   # a sensor slower than this to open counts as missing
        window.set_data_start(float("inf"))            # nothing is covered until the sensors deliver
        for link in links.values():
            link.monitor.on_change = self._on_transition

    # -- lifetime --------------------------------------------------------------------------------
    def _set_origin(self, t0: float) -> None:
        """Put the segment grid, the demo reel, the fault schedule and the monitors' clocks at t0."""
        self.t0 = t0
        self.window.t0 = self.window.audio.t0 = t0
        if self.reel is not None:
            self.reel.start = t0 + DEMO_LEAD_S
        for sch in self.schedules:
            sch.t0 = t0
        for link in self.links.values():
            m = link.monitor
            m.t_start = m.state_since = m.last_bad = t0
            link.next_open = t0

    def start(self) -> "Service":
        """Start the sensors; the segment grid (and the --inject times) start now."""
        if not self.started:
            self._set_origin(self.clock.now() + 0.05)
            self.sensors.on_tick = self._on_tick
            self.sensors.start()
            self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            self.sensors.stop()
            self.started = False
        self.pipeline.close()

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _on_transition(self, sensor: str, tr: Transition) -> None:
        if tr.new == "failed":
            self.window.invalidate(sensor, tr.onset)          # drop what arrived since the problem began
        if self.metrics is not None:
            self.metrics.transition(sensor, tr.new)
        self.log(redact(f"[{tr.t - self.t0:7.2f}s] {sensor}: {tr.old} -> {tr.new}" + (f" ({tr.reason})" if tr.reason else "")))

    def _on_tick(self, now: float) -> None:
        if not self.data_started:
            started = all(link.factory is None or link.monitor.last_item is not None or link.monitor.state == "failed"
                          for link in self.links.values())
            if started or now - self.t0 > self.startup_timeout_s:
                self.window.set_data_start(now)           # the first covered segment starts after this
                self.data_started = True
        if self.metrics is not None:
            self.metrics.update(self.status(now, window=False))

    # -- state -----------------------------------------------------------------------------------
    def elapsed(self, now: Optional[float] = None) -> float:
        return (self.clock.now() if now is None else now) - self.t0

    def sensor_states(self, now: Optional[float] = None) -> Dict[str, Dict]:
        now = self.clock.now() if now is None else now
        out = {}
        for name, link in self.links.items():
            info = link.monitor.snapshot(now)
            info.update(link.stats())
            out[name] = info
        return out

    def readiness(self, now: Optional[float] = None) -> Tuple[bool, str]:
        now = self.clock.now() if now is None else now
        done = self.window.elapsed_segments(now)
        if done < self.warmup_segments:
            return False, f"warming up: {done} of {self.warmup_segments} s of the window recorded"
        states = [link.monitor.state for link in self.links.values()]
        if all(s == "failed" for s in states):
            return False, "no sensor available: every sensor has failed"
        return True, "degraded" if any(s != "ok" for s in states) else "ok"

    def wait_ready(self, timeout_s: float, stop: Optional[threading.Event] = None) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.window.elapsed_segments(self.clock.now()) >= self.warmup_segments:
                return True
            if stop is not None and stop.wait(0.05):
                return False
            time.sleep(0.05)
        return False

    def status(self, now: Optional[float] = None, window: bool = True) -> Dict:
        """Sensors, levels and (with `window`) the current window's masks and prospective mode."""
        now = self.clock.now() if now is None else now
        sensors = self.sensor_states(now)
        latest = self.window.video.latest
        out: Dict = {"uptime_s": round(now - self.t0, 2), "method": self.method, "sensors": sensors,
                     "frame_age_s": None if latest is None else round(now - latest[0], 3),
                     "audio_level_dbfs": round(dbfs(self.window.audio.level), 1) if self.window.audio.head else None,
                     "faults": [str(f) for f in self.faults], "answers": self.answers}
        if window:
            win = self.window.snapshot(now)
            real = {"camera": int(win.mask_v.sum()), "mic": int(win.mask_a.sum())}
            for s in SENSORS:
                sensors[s]["real_segments"] = real[s]
            out["window"] = {"camera": masks_text(win.mask_v), "mic": masks_text(win.mask_a), "covered": win.covered,
                             "t": T}
            out["mode"] = decide_mode(real["mic"], real["camera"], win.covered, sensors["camera"]["state"],
                                      sensors["mic"]["state"])
            ready, why = self.readiness(now)
            out["ready"], out["readiness"] = ready, why
        return out

    # -- answering ---------------------------------------------------------------------------------
    def check_question(self, question) -> np.ndarray:
        """QuestionError for unusable questions (not a string, too long, control characters
        or lone UTF-16 surrogates, no words, mostly unknown words); -> (1, L) token ids."""
        if not isinstance(question, str):
            raise QuestionError("the question must be a string")
        if len(question) > self.cfg.max_question_chars:
            raise QuestionError(f"the question has {len(question)} characters; at most {self.cfg.max_question_chars}")
        if any(ord(ch) < 32 and ch not in "\t\n\r" for ch in question):
            raise QuestionError("the question contains control characters")
        if LONE_SURROGATE.search(question):
            raise QuestionError("the question contains a lone UTF-16 surrogate (U+D800 to U+DFFF), not a character: "
                                "send valid Unicode")
        if question.strip() and not tokenize(question):
            raise QuestionError("the question has no words (only punctuation or symbols)")
        tokens = self.pipeline.tokens(question)
        self.pipeline.vocab.check_known(question)
        return tokens

    def _features(self, win: WindowData):
        key = (win.k_end, win.mask_a.tobytes(), win.mask_v.tobytes(), win.version)
        with self._cache_lock:
            if self._cache[0] == key:
                return self._cache[1], True
            feats = self.pipeline.encode(win.frames, win.audio, win.mask_a, win.mask_v)
            self._cache = (key, feats)
            return feats, False

    def ask(self, question, top_k: Optional[int] = None) -> Dict:
        """Answer a question about the last T seconds. Raises AvqaError (bad question) or
        NotReady (warming up); sensor failures are never errors: they change the mode."""
        t_req = time.perf_counter()
        tokens = self.check_question(question)
        k = self.cfg.top_k if top_k is None else int(top_k)
        if not 1 <= k <= 10:
            raise AvqaError("top_k must lie in [1, 10]")
        now = self.clock.now()
        done = self.window.elapsed_segments(now)
        if done < self.warmup_segments:
            raise NotReady(f"warming up: {done} of {self.warmup_segments} s of the window recorded",
                           retry_after_s=self.warmup_segments - done)
        win = self.window.snapshot(now)
        sensors = self.sensor_states(now)
        real = {"camera": int(win.mask_v.sum()), "mic": int(win.mask_a.sum())}
        for s in SENSORS:
            sensors[s]["real_segments"] = real[s]
        mode = decide_mode(real["mic"], real["camera"], win.covered, sensors["camera"]["state"], sensors["mic"]["state"])
        unknown = self.pipeline.vocab.unknown(question)
        known = 1.0 - len(unknown) / max(1, len(tokenize(question)))      # the confidence is scaled by this
        body: Dict = {"question": question, "unknown_words": unknown, "mode": mode, "sensors": sensors,
                      "segments": {"total": T, "covered": win.covered, "camera": masks_text(win.mask_v),
                                   "mic": masks_text(win.mask_a), "real": real},
                      "span": {"start": _iso(self.clock.wall(win.t_start)), "end": _iso(self.clock.wall(win.t_end)),
                               "seconds": T, "end_age_s": round(now - win.t_end, 3),
                               "start_s": round(win.t_start - self.t0, 3), "end_s": round(win.t_end - self.t0, 3)}}
        if win.covered < T:
            body["warming_up"] = True
        if self.reel is not None and "demo" in (self.cfg.camera, self.cfg.mic):
            body["demo"] = self.demo_window(win.t_end - win.covered, win.t_end, question)   # 1 s segments
        method, case, fallback = self.plan(mode)
        body["method"] = method
        if case is not None:
            body["prompt_set"] = case
        if mode == "none":
            failed = [f"{s} {sensors[s]['state']} ({sensors[s]['reason']})" for s in SENSORS]
            body.update(answer=None, confidence=0.0, top_k=[], calibration=self.confidence.describe("none", method),
                        message="no sensor available: " + "; ".join(failed) + ". Not answering rather than guessing.")
        else:
            with self._sem:
                feats, cached = self._features(win)
                ans = self.pipeline.answer_features(feats, tokens, method=method, top_k=k, case=case)
            conf, probs = self.confidence.confidence(ans.logits, mode, method)
            order = np.argsort(-probs, kind="stable")[:k]
            note = self._note(mode, real, win.covered, method, case) + fallback
            if unknown:
                note += (f"; {len(unknown)} unknown word(s) read as <unk> ({', '.join(unknown)}): the confidence is "
                         f"scaled by the known fraction ({known:.0%})")
            body.update(answer=ans.answer, confidence=round(conf * known, 4),
                        top_k=[{"answer": self.pipeline.answers[int(i)], "probability": round(float(probs[i]), 4),
                                "raw_probability": round(float(p), 4)}
                               for i, p in zip(order, _softmax(ans.logits)[order])],
                        calibration=self.confidence.describe(mode, method), timings_ms=ans.timings_ms,
                        graph=ans.graph,
                        encode_cached=cached, message=note)
        latency = time.perf_counter() - t_req
        body["latency_ms"] = round(latency * 1e3, 2)
        self.answers += 1
        if self.metrics is not None:
            self.metrics.answer(mode, latency)
        return body

    def demo_window(self, t_start: float, t_end: float, question: str) -> Dict:
        """What the demo reel showed in the window's covered part [t_start, t_end):
        {"clips": [{"clip", "seconds"}], "truth"}. truth: the calibration set's answer when that is
        one whole clip it asked this question about, else None (a window across two clips has no
        single true answer)."""
        parts = self.reel.clips_between(t_start, t_end)
        truth = None
        if len(parts) == 1 and parts[0][1] >= self.reel.t - 1e-3 and self.calib is not None:
            truth = self.calib.truths(question).get(parts[0][0])
        return {"clips": [{"clip": c, "seconds": sec} for c, sec in parts], "truth": truth}

    def plan(self, mode: str) -> Tuple[str, Optional[str], str]:
        """How an answer in `mode` is made: (pipeline method, prompt set or None, a note for
        the answer when the prompt method had to fall back to rmm+avr)."""
        if self.method != "prompt":
            return "rmm+avr", None, ""
        if mode == "none":
            return "prompt_oracle", None, ""                           # no model call at all
        case = MODE_CASE[mode]
        if case in self.pipeline.prompt_cases:
            return "prompt_oracle", case, ""
        return "rmm+avr", None, (f". The bundle has no {case!r} prompt set (its sets: "
                                 f"{', '.join(self.pipeline.prompt_cases)}), so this answer used RMM + AVR instead")

    def method_text(self) -> str:
        if self.method != "prompt":
            return "rmm+avr"
        return (f"prompt sets chosen by sensor health (bundle sets: {', '.join(self.pipeline.prompt_cases)}; "
                "complete / visual_pseudo / audio_pseudo -> complete / visual / audio)")

    def _note(self, mode: str, real: Dict[str, int], covered: int, method: str = "rmm+avr",
              case: Optional[str] = None) -> str:
        prompt = f"answered with the {case!r} prompt set" if method == "prompt_oracle" else ""
        if mode == "complete":
            return "both sensors real for the whole window" + (f"; {prompt}" if prompt else "")
        lost, other = ("camera", "microphone") if mode == "visual_pseudo" else ("microphone", "camera")
        n_lost = covered - real["camera" if mode == "visual_pseudo" else "mic"]
        acc = self.confidence.describe(mode, method).get("calibration_accuracy")
        acc_c = self.confidence.describe("complete", method).get("calibration_accuracy")
        tail = (f"; expect lower accuracy (calibration set: {acc:.0%} in this mode, {acc_c:.0%} complete)"
                if acc is not None and acc_c is not None else "")
        how = (f"zero-filled and {prompt} (prompt learning)" if prompt else
               f"recalled from the {other} and the question (RMM) and refined (AVR)")
        return f"{lost} missing in {n_lost} of {covered} segments: {how}{tail}"


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


# ---- building a service -------------------------------------------------------------------------

def open_pipeline(bundle_dir, backend: str = "auto", precision: str = "fp32", threads: int = 0, verify: bool = True,
                  allow_unverified_engines: bool = False, log: Callable[[str], None] = lambda *_: None):
    """Pipeline.from_bundle with `auto`: TensorRT where the bundle has engines and TensorRT
    imports, else ONNX Runtime. `verify`: False when the caller verified the bundle already.
    TensorRT engines without a passing parity verdict are refused unless
    `allow_unverified_engines` (then a warning goes to `log`)."""
    from .bundle import Bundle, read_manifest
    from .pipeline import Pipeline
    if backend not in ("auto", "trt", "ort"):
        raise AvqaError(f"--backend must be auto, trt or ort, got {backend!r}")
    if backend == "auto":
        backend = "ort"
        if read_manifest(bundle_dir).get("engines"):
            try:
                import tensorrt  # noqa: F401
                backend = "trt"
            except ImportError:
                pass
    if backend == "trt":
        from .trt import check_engine_verdicts
        bundle = Bundle.open(bundle_dir, verify=verify)
        check_engine_verdicts(bundle.manifest, bundle.graphs, bundle_dir, allow_unverified_engines, warn=log)
        verify = False                                     # just verified (or the caller did)
    return Pipeline.from_bundle(bundle_dir, backend=backend, precision=precision, threads=threads, verify=verify)


def default_confidence_path(bundle_dir) -> Path:
    """The bundle's cached confidence calibration (calibration/confidence.py's cache_path):
    never beside or inside the bundle, which may be read-only."""
    from avqa_edge.calibration.confidence import cache_path

    from .bundle import read_manifest
    return cache_path(read_manifest(bundle_dir))


def load_confidence(pipeline, calib, path: Optional[str], bundle_dir, log: Callable[[str], None],
                    methods: Sequence[str] = ("rmm+avr",)):
    """The confidence calibration for `methods` (pipeline methods, each in the modes it
    answers in): from `path` (refused if it lacks one); else the cached file (calibration/
    confidence.py's cache_path, keyed by the bundle's file hashes) if it matches this bundle,
    with the methods it lacks fitted now and added; else fitted now. Cached when the cache
    folder is writable; never written beside the bundle (`bundle_dir` is not used for it)."""
    from avqa_edge.calibration import confidence as C
    manifest = pipeline.bundle.manifest if pipeline.bundle is not None else {}
    needs = {m: C.modes_for(m, pipeline.prompt_cases) for m in methods}
    if path:
        cal = C.ConfidenceCalibration.load(path)
        if cal.bundle_hash and cal.bundle_hash != C.bundle_hash(manifest):
            raise AvqaError(f"{path} was fitted for another bundle: delete it or pass the matching file")
        missing = cal.missing(needs)
        if missing:
            raise AvqaError(f"{path} has no confidence calibration for {', '.join(missing)} (it holds "
                            f"{', '.join(sorted(cal.methods)) or 'nothing'}; files written before the prompt method "
                            "was served hold rmm+avr only): drop --confidence to fit it at startup, or serve with "
                            "--method rmm+avr")
        return cal
    cache = C.cache_path(manifest)
    cal = None
    if cache.is_file():
        try:
            cal = C.ConfidenceCalibration.load(cache)
            if cal.bundle_hash != C.bundle_hash(manifest):
                cal = None
        except AvqaError:
            cal = None
    todo = [m for m in methods if cal is None or cal.missing({m: needs[m]})]
    if not todo:
        return cal
    t = time.perf_counter()
    log(f"fitting the per-mode confidence calibration ({', '.join(todo)}) on the bundle's calibration set ...")
    new = C.fit(pipeline, calib, manifest, methods=todo)
    log(f"  done in {time.perf_counter() - t:.1f} s: "
        + ", ".join(f"{meth} {m} T={c.temperature:.2f} acc={c.accuracy:.0%}"
                    for meth, modes in new.methods.items() for m, c in modes.items()))
    cal = new if cal is None else cal.merged(new)
    try:
        cal.save(cache)
        log(f"  saved {cache}")
    except OSError as e:
        log(f"  note: could not cache it ({e}); it is fitted again at the next start")
    return cal


def build_service(bundle_dir, cfg: ServeConfig, log: Callable[[str], None] = lambda *_: None, clock=None) -> Service:
    """Check the options, load the bundle, thresholds and calibration, wire the sensors."""
    from avqa_edge.calibration.calibset import CalibrationSet
    from avqa_edge.calibration.thresholds import fit_from_calibset

    faults = parse_faults(cfg.inject)                                  # user errors first, before any loading
    if cfg.precision not in ("fp32", "fp16"):
        raise AvqaError(f"--precision must be fp32 or fp16, got {cfg.precision!r}")
    if cfg.method not in SERVE_METHODS:
        raise AvqaError(f"--method must be one of {', '.join(SERVE_METHODS)}, got {cfg.method!r}")
    if cfg.warmup_s <= 0:
        raise AvqaError("--warmup must be positive")
    if cfg.camera == "none" and cfg.mic == "none":
        raise AvqaError("give at least one sensor: --camera and --mic are both 'none'")
    from .bundle import Bundle
    Bundle.open(bundle_dir, verify=True)                               # trust first: nothing read before it
    clock = clock or RealClock()
    calib = CalibrationSet.load(Path(bundle_dir) / "calibration")
    truths = calib.truths(cfg.demo_question) if cfg.demo_question else None
    order = cfg.demo_clips
    if order is None and truths:                                       # clips whose true answer is known first
        order = sorted(truths) + [c for c in range(calib.n_clips) if c not in truths]
    reel = DemoReel(calib.frames, calib.audio, start=0.0, clips=order)   # started below
    factories = {"camera": camera_factory(cfg.camera, clock, reel), "mic": mic_factory(cfg.mic, clock, reel)}
    for sensor, spec in (("camera", cfg.camera), ("mic", cfg.mic)):
        if factories[sensor] is not None and spec != "demo":
            try:
                check_opens(factories[sensor], sensor)
            except SensorError as e:
                if cfg.strict:
                    raise SensorError(f"{e}. --strict: not starting without it") from None
                log(f"WARNING: {e}. Serving without the {sensor} until it opens (retried with backoff); "
                    "--strict refuses to start instead")
    thresholds = HealthThresholds.load(cfg.thresholds) if cfg.thresholds else fit_from_calibset(calib.frames, calib.audio)
    pipeline = open_pipeline(bundle_dir, cfg.backend, cfg.precision, cfg.threads, verify=False,
                             allow_unverified_engines=cfg.allow_unverified_engines, log=log)
    try:
        method = resolve_method(pipeline, cfg.method)
        has_prompts = bool(pipeline.bundle is not None and pipeline.bundle.manifest.get("prompts"))
        if cfg.method == "auto" and method == "rmm+avr" and has_prompts:
            log(f"note: not serving the bundle's prompt sets: {prompt_support(pipeline)[1]}")
        confidence = load_confidence(pipeline, calib, cfg.confidence, bundle_dir, log,
                                     methods=confidence_methods(pipeline, method))
    except BaseException:
        pipeline.close()
        raise
    t0 = clock.now() + 0.05                                            # provisional: Service.start() resets it
    reel.start = t0 + DEMO_LEAD_S
    window = Window(t0)
    links: Dict[str, SensorLink] = {}
    schedules: List[FaultSchedule] = []
    for sensor in SENSORS:
        factory = factories[sensor]
        if factory is not None and any(f.sensor == sensor for f in faults):
            schedule = FaultSchedule(sensor, faults, clock, t0)
            schedules.append(schedule)
            factory = (lambda inner, sch: (lambda: FaultySource(inner(), sch)))(factory, schedule)
        th = thresholds.camera if sensor == "camera" else thresholds.mic
        monitor = HealthMonitor(sensor, thresholds.timing, th.stall_s, clock,
                                what="frames" if sensor == "camera" else "audio")
        checker = CameraChecker(thresholds.camera) if sensor == "camera" else MicChecker(thresholds.mic)
        links[sensor] = SensorLink(sensor, factory, checker, monitor, window, clock)
        if factory is None:
            monitor.fail(f"not configured (--{sensor} none)")
    hang_s = max(2.0, 2 * max(thresholds.camera.stall_s, thresholds.mic.stall_s))
    sensors = Sensors(links, clock, hang_s=hang_s)
    svc = Service(pipeline, window, links, sensors, confidence, thresholds, clock, t0, cfg, log, faults, method=method)
    svc.reel, svc.schedules, svc.calib = reel, schedules, calib
    return svc
