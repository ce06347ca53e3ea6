"""Sensor health: checks, the state machine, thresholds fitted on
healthy clips, failure injection of every kind (simulated and live clocks), the ring
buffers, the resampler, and the Python 3.8 static check of the runtime. No bundle and no
torch needed: the clips come from the tiny built-in benchmark's validation split."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avqa_edge.calibration import thresholds as TH
from avqa_edge.errors import AvqaError
from avqa_edge.runtime import faultbench as FB
from avqa_edge.runtime import signal as sig
from avqa_edge.runtime.clock import SimClock
from avqa_edge.runtime.health import (DIGITAL_FLOOR, CameraChecker, HealthMonitor, HealthThresholds, MicChecker, Timing,
                                      Verdict, digital_residual)
from avqa_edge.runtime.inject import KINDS, parse_faults
from avqa_edge.runtime.sensors import SensorLink, run_simulated
from avqa_edge.runtime.sources import (AudioChunk, DemoCamera, DemoMic, DemoReel, FileMic, Frame, Resampler, Source,
                                       resample)
from avqa_edge.runtime.window import Window

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tiny_spec):
    """(frames (16, T, F, H, W, 3) uint8, audio (16, T*S) int16): healthy clips, including
    silent segments and static scenes."""
    from avqa_edge.toolkit.data.specs import load_split
    split = load_split(tiny_spec, "val")
    return split.frames, split.audio


@pytest.fixture(scope="module")
def fitted(clips):
    return TH.fit_from_calibset(*clips)


# ---- thresholds and checks ----------------------------------------------------------------------

def test_thresholds_fit_inside_healthy_data_and_round_trip(fitted, tmp_path):
    cam, mic = fitted.fitted_on["camera"], fitted.fitted_on["mic"]
    assert 0 < fitted.camera.black_luma < cam["min_luma"]
    assert cam["max_saturated"] < fitted.camera.saturated_frac < 1
    assert cam["max_roughness"] < fitted.camera.noise_roughness < TH.UNIFORM_NOISE_ROUGHNESS
    assert 0 < fitted.camera.freeze_diff < cam["min_diff"] and fitted.camera.freeze_content
    assert 0 < fitted.mic.silence_level < mic["min_level"] and fitted.mic.noise_level > mic["max_noise_like_level"]
    path = fitted.save(tmp_path / "th.json")
    assert HealthThresholds.load(path).to_dict() == fitted.to_dict()
    (tmp_path / "bad.json").write_text('{"kind": "something else"}')
    with pytest.raises(AvqaError, match="not an avqa-edge health thresholds file"):
        HealthThresholds.load(tmp_path / "bad.json")
    with pytest.raises(AvqaError, match="not found"):
        HealthThresholds.load(tmp_path / "missing.json")


def test_healthy_clips_raise_no_flag(clips, fitted):
    """Every frame and chunk of the healthy clips (silent segments and static scenes
    included) passes the checks fitted on them."""
    frames, audio = clips
    flagged = []
    for c in range(len(frames)):
        cc, mc = CameraChecker(fitted.camera), MicChecker(fitted.mic)
        for k, img in enumerate(frames[c].reshape((-1,) + frames.shape[3:])):
            v, _ = cc.check(Frame(k * 0.5, img, k * 500.0))
            flagged += [] if v.ok else [(c, "camera", v.reason)]
        x = sig.pcm16_to_float(audio[c])
        for j in range(0, len(x), 800):
            v, _ = mc.check(AudioChunk(j / 8000, x[j:j + 800]))
            flagged += [] if v.ok else [(c, "mic", v.reason)]
    assert flagged == []


def test_each_fault_signature_is_flagged(clips, fitted):
    frames, audio = clips
    img = frames[0, 0, 0]
    cc = CameraChecker(fitted.camera)
    assert cc.check(Frame(0.0, img, 0.0))[0].ok
    rng = np.random.default_rng(0)
    cases = {"black": np.zeros_like(img), "saturated": np.full_like(img, 255),
             "noise": rng.integers(0, 256, img.shape, dtype=np.uint8)}
    for code, bad in cases.items():
        v, _ = CameraChecker(fitted.camera).check(Frame(1.0, bad, 500.0))
        assert v.code == code and v.invalid, (code, v)
    nan = img.astype(np.float32)
    nan[0, 0, 0] = np.nan
    v, out = CameraChecker(fitted.camera).check(Frame(1.0, nan))
    assert v.code == "nan" and out is None
    v, _ = cc.check(Frame(0.5, img.copy(), 500.0))                  # identical content
    assert v.code == "frozen" and not v.invalid                     # dropped only once confirmed
    v, _ = cc.check(Frame(1.0, frames[0, 0, 1], 500.0))             # new content, same device timestamp
    assert v.code == "frozen" and "timestamp" in v.reason
    x = sig.pcm16_to_float(audio[0][:800])
    mic_cases = {"silence": np.zeros(800, np.float32), "flat": np.full(800, 0.3, np.float32),
                 "clipping": np.clip(x * 1000, -1, 1), "noise": rng.uniform(-0.5, 0.5, 800).astype(np.float32)}
    for code, bad in mic_cases.items():
        v, _ = MicChecker(fitted.mic).check(AudioChunk(0.0, bad))
        assert v.code == code and v.invalid, (code, v)
    y = x.copy()
    y[3] = np.inf
    assert MicChecker(fitted.mic).check(AudioChunk(0.0, y))[0].code == "nan"
    mc = MicChecker(fitted.mic)
    assert mc.check(AudioChunk(0.0, x))[0].ok and mc.check(AudioChunk(0.1, x.copy()))[0].code == "frozen"
    v, _ = MicChecker(fitted.mic).check(AudioChunk(0.0, x, overflow=True))
    assert v.ok and v.warn and "overflow" in v.warn


# ---- frozen audio: a stuck driver, not a periodic signal -------------------------------------

def _mic_link(source_factory, th, clock):
    monitor = HealthMonitor("mic", th.timing, th.mic.stall_s, clock, what="audio")
    return SensorLink("mic", source_factory, MicChecker(th.mic), monitor, Window(0.0), clock)


class _StuckDriver(Source):
    """A microphone driver that delivers real chunks, then from `stuck_at` s on returns its
    last buffer again and again (bit-identical), on time."""

    sensor, description = "mic", "stuck microphone"

    def __init__(self, wave: np.ndarray, clock, stuck_at: float):
        super().__init__(clock)
        self.wave, self.stuck_at, self.j, self.last = wave, stuck_at, 0, None

    def open(self) -> None:
        pass

    def next_due(self) -> float:
        return (self.j + 1) * 0.1

    def read(self) -> AudioChunk:
        self.clock.sleep_until(self.next_due())
        if self.last is None or self.j * 0.1 < self.stuck_at:
            n0 = (self.j * 800) % (len(self.wave) - 800)
            self.last = self.wave[n0:n0 + 800].copy()
        self.j += 1
        return AudioChunk((self.j - 1) * 0.1, self.last)


@pytest.mark.parametrize("rate,channels", [(44100, 2), (8000, 1), (96000, 6)])
def test_a_clean_tone_file_is_not_frozen(tmp_path, fitted, rate, channels):
    """A 440 Hz tone repeats bit-exactly every 100 ms chunk (44 periods); the old rule
    (any repeated buffer) declared the mic failed. Served from a WAV for 6 s: ok throughout."""
    sf = pytest.importorskip("soundfile", reason="needs soundfile")
    t = np.arange(2 * rate) / rate
    wave = np.repeat((0.5 * np.sin(2 * np.pi * 440 * t))[:, None], channels, axis=1)
    path = tmp_path / f"tone_{rate}_{channels}.wav"
    sf.write(str(path), wave.astype(np.float32), rate, subtype="PCM_16")
    clock = SimClock()
    link = _mic_link(lambda: FileMic(str(path), clock), fitted, clock)
    run_simulated([link], clock, 6.0)
    assert link.monitor.items >= 55 and link.monitor.bad_items == 0, link.monitor.reason
    assert link.monitor.state == "ok" and [tr.new for tr in link.monitor.transitions] == ["ok"]
    mic = FileMic(str(path), SimClock())
    mic.open()
    a, b, c = (mic.read().samples for _ in range(3))
    assert np.array_equal(b, c) and digital_residual(b) < DIGITAL_FLOOR / 10      # repeats exactly, is clean


def test_a_stuck_driver_is_still_frozen(clips, fitted):
    """A driver that returns the identical buffer (captured sound, with its noise floor)
    is failed as frozen within the usual detection time."""
    wave = sig.pcm16_to_float(clips[1][0])
    assert digital_residual(wave[:800]) > 10 * DIGITAL_FLOOR
    clock = SimClock()
    link = _mic_link(lambda: _StuckDriver(wave, clock, stuck_at=2.0), fitted, clock)
    run_simulated([link], clock, 4.0)
    m = link.monitor
    assert m.state == "failed" and "frozen" in m.reason and "stuck driver" in m.reason, m.reason
    failed = [tr for tr in m.transitions if tr.new == "failed"]
    assert len(failed) == 1 and 2.0 <= failed[0].t <= 3.0, failed


# ---- the state machine ----------------------------------------------------------------------

def _monitor(clock, **timing):
    return HealthMonitor("camera", Timing(**timing), stall_s=1.0, clock=clock, what="frames")


def test_state_machine_fails_recovers_and_does_not_flap():
    clock = SimClock()
    m = _monitor(clock)
    bad, good = Verdict("black", "black frames", True), Verdict()
    for i in range(6):                                    # healthy at 4 items/s
        clock.advance_to(i * 0.25)
        m.observe(clock.now(), good)
    m.tick(1.5)
    assert m.state == "ok"
    t = 1.5
    for i in range(40):                                   # a flicker: every other frame bad, for 10 s
        t += 0.25
        clock.advance_to(t)
        m.observe(t, bad if i % 2 == 0 else good)
    assert m.state == "degraded" and [tr.new for tr in m.transitions].count("failed") == 0
    assert len(m.transitions) <= 2                        # ok -> degraded, no flapping back and forth
    for i in range(3):                                    # a real fault: failed after fail_after_s (0.5 s)
        t += 0.25
        clock.advance_to(t)
        m.observe(t, bad)
    assert m.state == "failed" and m.transitions[-1].onset == pytest.approx(t - 0.5)
    for i in range(5):                                    # 1.25 s of good frames: not yet (recover_s = 1.5)
        t += 0.25
        clock.advance_to(t)
        m.observe(t, good)
    assert m.state == "failed" and "recovering" in m.reason
    for i in range(2):
        t += 0.25
        clock.advance_to(t)
        m.observe(t, good)
    assert m.state == "ok" and m.transitions[-1].reason == "recovered"


def test_stall_and_errors_fail_the_sensor():
    clock = SimClock()
    m = _monitor(clock)
    m.observe(0.0, Verdict())
    m.tick(0.9)
    assert m.state != "failed"
    m.tick(1.05)
    assert m.state == "failed" and m.reason.startswith("no frames for 1.")
    m2 = _monitor(SimClock())
    m2.error(0.0, "read failed: gone")
    m2.tick(0.2)
    assert m2.state == "degraded"
    m2.error(0.25, "open failed: gone")                   # errors confirm after error_fail_after_s
    assert m2.state == "failed" and m2.reason.startswith("open failed")
    m3 = _monitor(SimClock())
    m3.fail("not configured")
    m3.tick(100.0)
    assert m3.state == "failed" and m3.reason == "not configured"


# ---- ring buffers -----------------------------------------------------------------------------

def test_window_aligns_segments_and_masks_gaps():
    w = Window(t0=100.0, guard_s=0.15)
    img = np.full((32, 48, 3), 7, np.uint8)
    for k in range(12):                                    # 12 s of frames at 2 fps, none in second 5
        for f in range(2):
            t = 100.0 + k + 0.25 + 0.5 * f
            if k != 5:
                w.video.add(t, img + k, valid=not (k == 7 and f == 0))
    x = np.full(800, 0.1, np.float32)
    for j in range(120):                                   # 12 s of audio, second 3 half missing
        if not (30 <= j < 35):
            w.audio.add(100.0 + j * 0.1, x, valid=True)
    snap = w.snapshot(112.2)                               # window = seconds [2, 12)
    assert snap.k_end == 12 and snap.covered == 10 and snap.t_start == pytest.approx(102.0)
    assert snap.mask_v.tolist() == [1, 1, 1, 0, 1, 1, 1, 1, 1, 1]
    assert snap.mask_a.tolist() == [1, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    assert (snap.frames[0] == 7 + 2).all()                 # segment 2 holds second 2's frames
    assert (snap.frames[5, 0] == 7 + 7).all()              # the one valid frame fills both slots
    assert snap.audio[:8000].min() == pytest.approx(0.1) and snap.audio[8000:16000].max() == 0.0
    assert w.invalidate("mic", 109.0) > 0 and w.invalidate("camera", 110.0) == 4
    snap = w.snapshot(112.2)
    assert snap.mask_a.tolist()[-3:] == [0, 0, 0] and snap.mask_v.tolist()[-2:] == [0, 0]
    assert w.snapshot(101.0).covered == 0                  # before the first complete segment


def test_demo_reel_windows_and_lead_in():
    """The demo reel: which clips a window shows, and a source opened before the reel's start
    plays the reel's last clip first (the lead-in), then the first clip from `start` on."""
    T, F = sig.T_SEGMENTS, sig.FRAMES_PER_SEGMENT
    frames = np.zeros((3, T, F, sig.FRAME_H, sig.FRAME_W, 3), np.uint8)
    audio = np.zeros((3, T * sig.SEGMENT_SAMPLES), np.int16)
    for c in range(3):
        frames[c], audio[c] = 10 * (c + 1), 1000 * (c + 1)
    reel = DemoReel(frames, audio, start=101.0, clips=[2, 0])
    assert reel.clips_between(101.0, 111.0) == [(2, 10.0)]
    assert reel.clips_between(104.0, 114.0) == [(2, 7.0), (0, 3.0)]
    assert reel.clips_between(96.0, 106.0) == [(0, 5.0), (2, 5.0)]      # before the start: the reel's end
    assert reel.clips_between(121.0, 123.5) == [(2, 2.5)]                # it loops
    clock = SimClock(start=100.0)
    cam, mic = DemoCamera(reel, clock), DemoMic(reel, clock)
    cam.open()
    mic.open()
    first = cam.read()
    assert 100.0 <= first.t < 100.5 and (first.image == 10).all()       # lead-in: clip 0, the reel's last
    chunk = mic.read()
    assert chunk.t >= 100.0 and np.allclose(chunk.samples, 1000 / 32768, atol=1e-4)
    clock.advance_to(101.3)
    frame = cam.read()
    assert 101.0 < frame.t <= 101.3 and (frame.image == 30).all()       # from the start on: clip 2
    chunks = [mic.read() for _ in range(12)]                              # the mic's backlog, then on
    assert [np.allclose(c.samples, (1000 if c.t < 101.0 else 3000) / 32768, atol=1e-4) for c in chunks] == [True] * 12
    assert chunks[-1].t >= 101.0


def test_resampler_keeps_frequency_and_level_and_streams():
    sr = 44100
    t = np.arange(sr) / sr
    x = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t)   # 6 kHz must be removed
    y = resample(x, sr)
    assert len(y) == 8000
    spec = np.abs(np.fft.rfft(y[1000:7000] * np.hanning(6000)))
    freqs = np.fft.rfftfreq(6000, 1 / 8000)
    assert abs(freqs[spec.argmax()] - 440) < 3
    assert y[1000:7000].std() == pytest.approx(0.5 / np.sqrt(2), rel=0.05)        # 440 Hz kept, 6 kHz gone
    r = Resampler(sr)
    streamed = np.concatenate([r.process(x[i:i + 4410]) for i in range(0, sr, 4410)])
    assert np.allclose(streamed[:7900], y[:7900], atol=1e-5)


# ---- failure injection -----------------------------------------------------------------------

def test_inject_spec_parsing():
    fs = parse_faults("camera:off@5s, mic:silence@10-12s,cam:clip@3+2")
    assert [(f.sensor, f.kind, f.start, f.end) for f in fs] == [
        ("camera", "off", 5.0, None), ("mic", "silence", 10.0, 12.0), ("camera", "saturate", 3.0, 5.0)]
    for bad, msg in (("camera:melt@1s", "camera faults are"), ("lidar:off@1s", "unknown sensor"),
                     ("camera:off", "SENSOR:KIND@START"), ("mic:clip@5-4", "must end after")):
        with pytest.raises(AvqaError, match=msg):
            parse_faults(bad)


def test_every_fault_kind_is_detected_and_recovers_simulated(clips):
    """Simulated clock: every kind, 3 trials at shifted phases, thresholds fitted on the even
    clips, the odd ones replayed; then 5 minutes of healthy replay without a false alarm."""
    report = FB.run(*clips, trials=3, fault_s=3.0, healthy_s=300.0)
    assert {(k.sensor, k.kind) for k in report.kinds} == {(s, k) for s in KINDS for k in KINDS[s]}
    for k in report.kinds:
        assert k.detected == k.trials and k.max_detect_s <= 1.5, (k.sensor, k.kind, k.detect_s)
        assert k.recovered == k.trials and k.max_recover_s <= 6.0, (k.sensor, k.kind, k.recover_s)
        assert k.false_alarms == 0, (k.sensor, k.kind)
    assert report.clips["holdout"] and report.healthy.failed == 0, report.healthy.reasons
    assert report.to_dict()["kinds"][0]["max_detect_s"] is not None


def test_every_fault_kind_is_detected_and_recovers_live(clips):
    """Live threads on the wall clock (watchdog included: `hang` blocks inside read), every
    kind at once; bounds are generous for a loaded CI machine."""
    report = FB.run(*clips, trials=1, warm_s=3.0, fault_s=2.5, settle_s=5.5, healthy_s=0, realtime=True)
    for k in report.kinds:
        assert k.detected == 1 and k.max_detect_s <= 2.5, (k.sensor, k.kind, k.detect_s, k.reasons)
        assert k.recovered == 1 and k.max_recover_s <= 5.0, (k.sensor, k.kind, k.recover_s)
        assert k.false_alarms == 0, (k.sensor, k.kind)


# ---- Python 3.8 ----------------------------------------------------------------------------------

BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}


def _new_annotations(tree: ast.AST):
    """Annotations evaluated at import that Python 3.8 cannot evaluate: X | Y, list[int]."""
    bad = []

    def check(ann, where):
        for node in ast.walk(ann) if ann is not None else ():
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
                bad.append(f"{where}: X | Y")
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in BUILTIN_GENERICS:
                bad.append(f"{where}: {node.value.id}[...]")
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                 any(a.name == "annotations" for a in n.names) for n in tree.body)
    if future:
        return bad
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for a in args.args + args.kwonlyargs + args.posonlyargs + [args.vararg, args.kwarg]:
                if a is not None:
                    check(a.annotation, f"{node.name}({a.arg})")
            check(node.returns, f"{node.name} -> ")
        elif isinstance(node, ast.AnnAssign):
            check(node.annotation, f"line {node.lineno}")
    return bad


def test_runtime_is_python38_compatible():
    files = [p for d in ("runtime", "calibration", "avqa_edge") for p in sorted((ROOT / d).glob("*.py"))]
    assert len(files) >= 15                   # avqa_edge/: the CLI that `serve` runs through
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))
        assert _new_annotations(tree) == [], path
    if _has_module("vermin"):                 # stdlib API use as well (e.g. str.removeprefix is 3.9)
        out = subprocess.run([sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())",
                              "-t=3.8-", "--no-tips", "--violations", "--eval-annotations", *map(str, files)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def _has_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def test_the_38_check_catches_new_syntax():
    assert _new_annotations(ast.parse("def f(x: list[int]) -> int | None: ...")) == ["f(x): list[...]", "f -> : X | Y"]
    assert _new_annotations(ast.parse("from __future__ import annotations\ndef f(x: list[int]): ...")) == []
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1: pass\n", feature_version=(3, 8))



