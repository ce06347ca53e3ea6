"""Fit the sensor health thresholds (runtime/health.py) on healthy data.

Two sources of healthy data:
- the bundle's calibration set (`fit_from_calibset`): the defaults `serve` uses when no
  thresholds file is given; they suit the demo source and are a starting point elsewhere;
- a short recording from the real camera and microphone (`record_device` then
  `fit_from_recording`, i.e. `avqa-edge calibrate --camera 0 --mic default --seconds 30
  --out device.json`): real noise floors, light levels and frame rates differ from
  synthetic ones. Record a healthy, *ordinary* scene: quiet moments and stillness included.

Rules (x = the statistic over every healthy frame / 100 ms chunk; margins keep a healthy
scene well inside, and each fault signature well outside):

    black_luma       0.4 * min luma                      (clamped to [1, 40])
    saturated_frac   max + half the way to 1             (clamped to [0.5, 0.98])
    noise_roughness  max + half the way to 1.15 (uniform noise); disabled if max >= 1.05
    freeze_diff      0.25 * min difference of consecutive frames; if a healthy pair was
                     identical (compressed streams of a static scene), content freeze
                     detection is off and frozen streams are caught by stalled device
                     timestamps and stalls only
    stall_s          the largest gap between items + 0.35 s (clamped to [0.85, 5] s)
    silence_level    0.3 * min level (AC RMS)               (clamped to [3e-5, 0.05])
    clip_frac        2 * max clipped fraction + 0.005       (clamped to [0.01, 0.5])
    noise_level      4 * the largest level among noise-like chunks (flatness >= 0.3)
                                                             (clamped to [0.02, 0.5])
"""
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from avqa_edge.errors import AvqaError
from avqa_edge.runtime import signal as sig
from avqa_edge.runtime.health import (CameraChecker, CameraThresholds, HealthThresholds, MicChecker, MicThresholds,
                                      Timing, chunk_stats, frame_diff, frame_stats)
from avqa_edge.runtime.sources import CHUNK_SAMPLES, AudioChunk, Frame

UNIFORM_NOISE_ROUGHNESS = 1.15       # mean |neighbour diff| / std of uniform random pixels
NOISE_LIKE_FLATNESS = 0.3


def _clamp(x: float, lo: float, hi: float) -> float:
    return float(min(max(x, lo), hi))


def camera_summary(sequences: Sequence[np.ndarray]) -> Dict[str, float]:
    """Statistics of healthy frame sequences (each (n, H, W, 3) uint8, in time order)."""
    stats = [frame_stats(f) for seq in sequences for f in seq]
    diffs = [frame_diff(seq[i], seq[i + 1]) for seq in sequences for i in range(len(seq) - 1)]
    if not stats:
        raise AvqaError("no frames to fit camera thresholds on")
    return {"frames": len(stats), "min_luma": min(s["luma"] for s in stats),
            "max_saturated": max(s["saturated"] for s in stats), "max_roughness": max(s["roughness"] for s in stats),
            "min_diff": min(diffs) if diffs else float("nan"), "identical_pairs": int(sum(d == 0 for d in diffs))}


def fit_camera(summary: Dict[str, float], max_gap_s: float) -> CameraThresholds:
    rough = summary["max_roughness"]
    min_diff = summary["min_diff"]
    content = bool(np.isfinite(min_diff) and min_diff > 0)
    return CameraThresholds(
        black_luma=_clamp(0.4 * summary["min_luma"], 1.0, 40.0),
        saturated_frac=_clamp(summary["max_saturated"] + 0.5 * (1 - summary["max_saturated"]), 0.5, 0.98),
        noise_roughness=(rough + 0.5 * (UNIFORM_NOISE_ROUGHNESS - rough)) if rough < 1.05 else float("inf"),
        freeze_diff=0.25 * min_diff if content else 0.0,
        freeze_content=content,
        stall_s=_clamp(max_gap_s + 0.35, 0.85, 5.0))


def mic_summary(chunks: Sequence[np.ndarray]) -> Dict[str, float]:
    """Statistics of healthy audio chunks (each (n,) float in [-1, 1], ~100 ms)."""
    stats = [chunk_stats(c) for c in chunks if len(c) > 16]
    if not stats:
        raise AvqaError("no audio to fit microphone thresholds on")
    noisy = [s["level"] for s in stats if s["flatness"] >= NOISE_LIKE_FLATNESS]
    return {"chunks": len(stats), "min_level": min(s["level"] for s in stats),
            "median_level": float(np.median([s["level"] for s in stats])),
            "max_level": max(s["level"] for s in stats), "max_clip": max(s["clip"] for s in stats),
            "max_flatness": max(s["flatness"] for s in stats),
            "max_noise_like_level": max(noisy) if noisy else 0.0}


def fit_mic(summary: Dict[str, float], max_gap_s: float) -> MicThresholds:
    noise_ref = summary["max_noise_like_level"] or summary["median_level"]
    return MicThresholds(
        silence_level=_clamp(0.3 * summary["min_level"], 3e-5, 0.05),
        clip_frac=_clamp(2 * summary["max_clip"] + 0.005, 0.01, 0.5),
        noise_flatness=NOISE_LIKE_FLATNESS,
        noise_level=_clamp(4 * noise_ref, 0.02, 0.5),
        stall_s=_clamp(max_gap_s + 0.35, 0.85, 5.0))


def fit_from_calibset(frames: np.ndarray, audio: np.ndarray, clips: Optional[Sequence[int]] = None,
                      source: str = "bundle calibration set") -> HealthThresholds:
    """frames (N, T, F, H, W, 3) uint8, audio (N, T*S) int16 -> thresholds (see the module
    docstring); `clips` restricts the fit (the fault benchmark holds the others out)."""
    idx = list(range(len(frames))) if clips is None else [int(c) for c in clips]
    n, t, f = len(idx), frames.shape[1], frames.shape[2]
    seqs = [frames[c].reshape((t * f,) + frames.shape[3:]) for c in idx]                    # (T*F, H, W, 3) each
    x = sig.pcm16_to_float(audio[idx]).reshape(n, -1)
    chunks = [row[i:i + CHUNK_SAMPLES] for row in x for i in range(0, len(row) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES)]
    cam, mic = camera_summary(seqs), mic_summary(chunks)
    return HealthThresholds(fit_camera(cam, 1.0 / f), fit_mic(mic, CHUNK_SAMPLES / sig.SAMPLE_RATE), Timing(),
                            {"source": source, "clips": n, "camera": cam, "mic": mic})


def fit_from_recording(frames: List[Frame], chunks: List[AudioChunk], base: Optional[HealthThresholds] = None,
                       source: str = "device recording") -> HealthThresholds:
    """Thresholds from a healthy device recording; a sensor with nothing recorded keeps
    `base`'s values (default: the built-in defaults). Refuses a recording that is itself
    broken (black, saturated, NaN), since thresholds fitted on it would hide that fault."""
    base = base or HealthThresholds()
    cam_th, mic_th = base.camera, base.mic
    fitted: Dict = {"source": source}
    if frames:
        imgs = _check_recording_frames(frames)
        gaps = np.diff([f.t for f in frames]) if len(frames) > 1 else np.array([0.5])
        cam = camera_summary([np.stack(imgs)])
        cam["fps"] = round(float((len(frames) - 1) / max(frames[-1].t - frames[0].t, 1e-6)), 2) if len(frames) > 1 else 0.0
        cam_th = fit_camera(cam, float(gaps.max()))
        fitted["camera"] = cam
    if chunks:
        xs = [np.asarray(c.samples, np.float32) for c in chunks]
        if any(not np.isfinite(x).all() for x in xs):
            raise AvqaError("the microphone recording holds NaN/Inf samples: fix the device before calibrating")
        ends = [c.t + len(c.samples) / sig.SAMPLE_RATE for c in chunks]
        gaps = np.diff([c.t for c in chunks]) if len(chunks) > 1 else np.array([0.1])
        mic = mic_summary(xs)
        if mic["min_level"] < 3e-5:
            raise AvqaError("the microphone recording contains digital silence (a muted or disconnected input): "
                            "calibrate on a live microphone")
        mic["seconds"] = round(ends[-1] - chunks[0].t, 2)
        mic_th = fit_mic(mic, float(gaps.max()))
        fitted["mic"] = mic
    return HealthThresholds(cam_th, mic_th, base.timing, fitted)


def _check_recording_frames(frames: List[Frame]) -> List[np.ndarray]:
    imgs = []
    for fr in frames:
        if fr.image.dtype != np.uint8 and not np.isfinite(fr.image).all():
            raise AvqaError("the camera recording holds NaN/Inf pixels: fix the device before calibrating")
        imgs.append(fr.image if fr.image.dtype == np.uint8 else np.clip(fr.image, 0, 255).astype(np.uint8))
    lum = np.array([frame_stats(i)["luma"] for i in imgs])
    if (lum < 2).mean() > 0.5:
        raise AvqaError("the camera recording is mostly black (lens covered, or a dead camera): calibrate on a lit scene")
    return imgs


def record_device(camera, mic, seconds: float, clock, log=lambda *_: None) -> Tuple[List[Frame], List[AudioChunk]]:
    """Record `seconds` from a camera source and a mic source (either may be None), each in
    its own thread. Raises AvqaError when a configured sensor delivered nothing."""
    out: Dict[str, list] = {"camera": [], "mic": []}
    errors: Dict[str, str] = {}
    stop = threading.Event()

    def run(name: str, src) -> None:
        try:
            src.open()
            while not stop.is_set():
                clock.sleep_until(src.next_due(), stop)
                if stop.is_set():
                    break
                out[name].append(src.read())
        except Exception as e:              # SourceError and backend errors alike: reported below
            errors[name] = str(e)
        finally:
            try:
                src.close()
            except Exception:
                pass

    threads = [threading.Thread(target=run, args=(name, src), daemon=True)
               for name, src in (("camera", camera), ("mic", mic)) if src is not None]
    for t in threads:
        t.start()
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end and any(t.is_alive() for t in threads):
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(5.0)
    for name, src in (("camera", camera), ("mic", mic)):
        if src is not None and not out[name]:
            raise AvqaError(f"calibrate: no data from the {name} ({src.description})"
                            + (f": {errors[name]}" if name in errors else ""))
    log(f"recorded {len(out['camera'])} frames and {len(out['mic'])} audio chunks in {seconds:g} s")
    return out["camera"], out["mic"]


def check_against(th: HealthThresholds, frames: List[Frame], chunks: List[AudioChunk]) -> Dict[str, int]:
    """How many recorded items the fitted thresholds would flag (should be 0 but frozen pairs)."""
    cc, mc = CameraChecker(th.camera), MicChecker(th.mic)
    flagged = {"camera": 0, "mic": 0}
    for fr in frames:
        flagged["camera"] += 0 if cc.check(fr)[0].ok else 1
    for ch in chunks:
        flagged["mic"] += 0 if mc.check(ch)[0].ok else 1
    return flagged



def calibrate_device(camera: str, mic: str, seconds: float, bundle=None, log=lambda *_: None):
    """`avqa-edge calibrate`: record `seconds` of a healthy scene from the given devices and fit
    the thresholds on it; sensors not recorded keep the bundle's (or the built-in) ones.
    -> (thresholds, report lines)."""
    from avqa_edge.runtime.clock import RealClock
    from avqa_edge.runtime.redact import redact
    from avqa_edge.runtime.sources import camera_factory, mic_factory
    if camera == "none" and mic == "none":
        raise AvqaError("give --camera and/or --mic to record")
    if "demo" in (camera, mic):
        raise AvqaError("calibrate records a real device; the demo source's thresholds come from the bundle already")
    if not 2 <= seconds <= 3600:
        raise AvqaError("--seconds must lie in [2, 3600]")
    base = HealthThresholds()
    if bundle is not None:
        from avqa_edge.calibration.calibset import CalibrationSet
        cs = CalibrationSet.load(bundle / "calibration")
        base = fit_from_calibset(cs.frames, cs.audio)
    clock = RealClock()
    cam_f, mic_f = camera_factory(camera, clock), mic_factory(mic, clock)
    log(f"recording {seconds:g} s of a healthy scene (keep it ordinary: quiet moments and stillness are fine) ...")
    frames, chunks = record_device(cam_f() if cam_f else None, mic_f() if mic_f else None, seconds, clock, log=log)
    th = fit_from_recording(frames, chunks, base, source=redact(f"camera {camera}, mic {mic}, {seconds:g} s"))
    return th, fit_lines(th, check_against(th, frames, chunks), len(frames), len(chunks))


def fit_lines(th: HealthThresholds, flagged: Dict[str, int], n_frames: int, n_chunks: int) -> List[str]:
    """The fitted thresholds in words, and how many recorded items they would flag."""
    from avqa_edge.runtime.health import dbfs
    c, m, lines = th.camera, th.mic, []
    if n_frames:
        lines.append(f"  camera: black below luma {c.black_luma:.1f}, saturated above {c.saturated_frac:.0%}, snow above "
                     f"roughness {c.noise_roughness:.2f}, frozen at difference <= {c.freeze_diff:.2f}"
                     + ("" if c.freeze_content else " (content check off: the recording had identical frames)")
                     + f", stall after {c.stall_s:.1f} s; {flagged['camera']} of {n_frames} recorded frames flagged")
    if n_chunks:
        lines.append(f"  mic: silence below {m.silence_level:.5f} ({dbfs(m.silence_level):.0f} dBFS), "
                     f"clipping above {m.clip_frac:.1%}, noise at level >= {m.noise_level:.3f}, stall after {m.stall_s:.1f} s; "
                     f"{flagged['mic']} of {n_chunks} recorded chunks flagged")
    return lines
