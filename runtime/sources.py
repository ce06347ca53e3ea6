"""Sensor sources: camera (OpenCV: device index, video file, RTSP URL), microphone
(sounddevice, or a sound file), and the demo source that replays the bundle's calibration
clips in real time (no hardware needed).

A source is opened, read item by item, and closed by a `runtime.sensors.SensorLink`, which
runs it in its own thread, reconnects with backoff and abandons a read that hangs. Items:

    Frame(t, image, device_ts)      image (FRAME_H, FRAME_W, 3) RGB, uint8 (a float image
                                    from an odd backend is passed through so that NaN/Inf
                                    can be detected); t in clock seconds
    AudioChunk(t, samples, overflow) samples (n,) float32 in [-1, 1] at SAMPLE_RATE Hz,
                                    t = time of the first sample

`read()` raises SourceError when the device fails; `next_due()` is when the next item will
be ready (sources that block in `read` say "now"). OpenCV, sounddevice and soundfile are
imported only when a source that needs them is made.
"""
import math
import os
import queue
import threading
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from avqa_edge.errors import AvqaError, SensorError

from . import signal as sig
from .redact import redact

CHUNK_SECONDS = 0.1                                  # audio is read in 100 ms chunks
CHUNK_SAMPLES = int(round(sig.SAMPLE_RATE * CHUNK_SECONDS))
FRAME_SHAPE = (sig.FRAME_H, sig.FRAME_W, 3)
URL_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class SourceError(Exception):
    """A device problem (open failed, read failed, stream error): handled by the health
    monitor and the reconnect loop, never shown to the user as a crash."""


@dataclass
class Frame:
    t: float                          # capture time, clock seconds
    image: np.ndarray                 # (FRAME_H, FRAME_W, 3) RGB uint8 (float passed through)
    device_ts: Optional[float] = None  # the device's own timestamp, ms (None where unknown)


@dataclass
class AudioChunk:
    t: float                          # time of the first sample, clock seconds
    samples: np.ndarray               # (n,) float32 in [-1, 1] at SAMPLE_RATE Hz
    overflow: bool = False            # the device dropped input before this chunk


class Source:
    """Base: `open()`, `read()` -> Frame / AudioChunk, `close()`, `next_due()`."""

    sensor = "camera"                 # "camera" or "mic"
    description = "source"

    def __init__(self, clock):
        self.clock = clock

    def open(self) -> None:
        raise NotImplementedError

    def read(self):
        raise NotImplementedError

    def close(self) -> None:
        pass

    def abandon(self) -> None:
        """Called by the watchdog (another thread) when `read` hangs. Default: nothing; the
        reading thread closes the source if its read ever returns (closing an OpenCV capture
        from another thread while it reads is not safe)."""

    def next_due(self) -> float:
        """Clock time at which `read` will have the next item (default: now; read blocks)."""
        return self.clock.now()


# ---- resampling ------------------------------------------------------------------------------

class Resampler:
    """Streaming resampler to `sr_out` (mono float32): a Hamming-windowed sinc low-pass at
    0.45 * min(sr_in, sr_out), then linear interpolation. Feed consecutive blocks to
    `process`; the output has no delay (the filter is centred)."""

    def __init__(self, sr_in: int, sr_out: int = sig.SAMPLE_RATE, half_width: int = 8):
        if sr_in <= 0 or sr_out <= 0:
            raise AvqaError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
        self.sr_in, self.sr_out = int(sr_in), int(sr_out)
        self.ratio = self.sr_in / self.sr_out                       # input samples per output sample
        fc = 0.45 * min(1.0, 1.0 / self.ratio)                      # cycles per input sample
        self.k = int(math.ceil(half_width * max(1.0, self.ratio)))
        m = np.arange(-self.k, self.k + 1, dtype=np.float64)
        h = 2 * fc * np.sinc(2 * fc * m) * np.hamming(2 * self.k + 1)
        self.h = (h / h.sum()).astype(np.float64)
        self.hist = np.zeros(2 * self.k, np.float64)               # input history (len(h) - 1)
        self.ybuf = np.zeros(0, np.float64)                         # filtered, not yet consumed
        self.ybuf_start = -self.k                                   # absolute input index of ybuf[0]
        self.j_next = 0                                             # next output sample index

    @property
    def passthrough(self) -> bool:
        return self.sr_in == self.sr_out

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if self.passthrough:
            return x.astype(np.float32)
        buf = np.concatenate([self.hist, x])
        self.hist = buf[len(buf) - (len(self.h) - 1):]
        y = np.convolve(buf, self.h, mode="valid")                  # len(x) values
        self.ybuf = np.concatenate([self.ybuf, y])
        last = self.ybuf_start + len(self.ybuf) - 1                 # last filtered input index
        j_max = int(math.floor((last - 1) / self.ratio))
        if j_max < self.j_next:
            return np.zeros(0, np.float32)
        p = np.arange(self.j_next, j_max + 1) * self.ratio          # output positions, input samples
        out = np.interp(p, self.ybuf_start + np.arange(len(self.ybuf)), self.ybuf)
        self.j_next = j_max + 1
        keep_from = int(math.floor(self.j_next * self.ratio)) - self.ybuf_start
        if keep_from > 0:
            self.ybuf = self.ybuf[keep_from:]
            self.ybuf_start += keep_from
        return out.astype(np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int = sig.SAMPLE_RATE) -> np.ndarray:
    """Resample a whole signal (n,) -> (round(n * sr_out / sr_in),) float32."""
    r = Resampler(sr_in, sr_out)
    if r.passthrough:
        return np.asarray(x, np.float32).reshape(-1)
    n_out = int(round(len(x) * sr_out / sr_in))
    y = r.process(np.concatenate([np.asarray(x, np.float64).reshape(-1), np.zeros(r.k + int(math.ceil(r.ratio)) + 2)]))
    return np.pad(y, (0, max(0, n_out - len(y))))[:n_out]


def to_mono(x: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32, the channel mean."""
    x = np.asarray(x, dtype=np.float32)
    return x.mean(axis=1) if x.ndim == 2 else x.reshape(-1)


# ---- camera: OpenCV ---------------------------------------------------------------------------

def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise AvqaError(f"the camera needs OpenCV ({e}): pip install opencv-python-headless "
                        "(or 'avqa-edge[serve]'); `--camera demo` needs nothing") from None
    try:                                 # open failures are reported by the health monitor, not as warnings
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:
        pass
    return cv2


def resize_frame(image: np.ndarray, cv2=None) -> np.ndarray:
    """(h, w, 3) RGB -> (FRAME_H, FRAME_W, 3), area-averaged; dtype kept (float stays float)."""
    if image.shape[:2] == FRAME_SHAPE[:2]:
        return image
    cv2 = cv2 or _cv2()
    return cv2.resize(image, (sig.FRAME_W, sig.FRAME_H), interpolation=cv2.INTER_AREA)


class OpenCVCamera(Source):
    """A camera through OpenCV: a device index ("0"), a video file (played in real time,
    looped) or a stream URL (RTSP, HTTP). Frames are converted to RGB and resized to
    FRAME_W x FRAME_H; at most `max_fps` frames per second are passed on."""

    sensor = "camera"

    def __init__(self, spec: str, clock, max_fps: float = 8.0, open_timeout_s: float = 5.0,
                 read_timeout_s: float = 2.0, loop: bool = True):
        super().__init__(clock)
        self.spec = spec
        self.cv2 = _cv2()
        self.is_index = spec.isdigit()
        self.is_url = spec.lower().startswith(URL_PREFIXES)
        self.is_file = not self.is_index and not self.is_url
        shown = redact(spec)                                        # never a stream's password
        self.description = f"camera {spec}" if self.is_index else (f"stream {shown}" if self.is_url else f"video file {shown}")
        self.min_interval = 1.0 / max_fps
        self.open_timeout_s, self.read_timeout_s = open_timeout_s, read_timeout_s
        self.loop = loop
        self.cap = None
        self._last_emit = -1e9
        self._file_t0 = 0.0
        self._file_n = 0
        self._fps = 0.0

    def open(self) -> None:
        cv2 = self.cv2
        if self.is_file and not os.path.isfile(self.spec):
            raise SourceError(f"video file {self.spec} not found")
        if self.is_url and hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000)]
            cap = cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(int(self.spec) if self.is_index else self.spec)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.description}")
        self.cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS) if self.is_file else 0.0
        self._fps = fps if fps and 0 < fps < 1000 else 25.0
        self._file_t0, self._file_n = self.clock.now(), 0

    def _grab(self):
        ok, img = self.cap.read()
        if not ok and self.is_file and self.loop:                  # end of file: start again
            self.cap.set(self.cv2.CAP_PROP_POS_FRAMES, 0)
            self._file_t0, self._file_n = self.clock.now(), 0
            ok, img = self.cap.read()
        if not ok or img is None:
            raise SourceError("read failed (end of stream or device lost)")
        return img

    def next_due(self) -> float:
        if self.is_file and self.cap is not None:                 # play a file at its own frame rate
            return self._file_t0 + self._file_n / self._fps
        return self.clock.now()

    def read(self) -> Frame:
        if self.cap is None:
            raise SourceError("camera is not open")
        cv2 = self.cv2
        while True:
            if self.is_file:
                self.clock.sleep_until(self.next_due())
            img = self._grab()
            self._file_n += 1
            t = self.clock.now()
            if t - self._last_emit >= self.min_interval * 0.95:
                break                                               # decimate fast cameras
        self._last_emit = t
        ts = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        device_ts = float(ts) if ts and ts > 0 else None
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.dtype == np.uint8 else img[..., ::-1]
        return Frame(t=t, image=resize_frame(np.ascontiguousarray(rgb), cv2), device_ts=device_ts)

    def close(self) -> None:
        if self.cap is not None:
            try:
                self.cap.release()
            finally:
                self.cap = None


# ---- microphone: sounddevice, sound files -----------------------------------------------------

def _sounddevice():
    """The sounddevice module; AvqaError where it or the PortAudio library is missing."""
    try:
        import sounddevice
    except (ImportError, OSError) as e:   # OSError: "PortAudio library not found"
        raise AvqaError(f"the microphone needs sounddevice with the PortAudio library ({e}): "
                        "pip install sounddevice, and apt install libportaudio2 (Debian / Ubuntu / JetPack); "
                        "a WAV file (`--mic path.wav`) or `--mic demo` work without it") from None
    return sounddevice


class _Timeline:
    """Sample-accurate chunk times: t = anchor + samples so far / SAMPLE_RATE, re-anchored
    on the arrival time when they drift apart by more than `tolerance_s` (lost data)."""

    def __init__(self, clock, tolerance_s: float = 0.3):
        self.clock, self.tolerance_s = clock, tolerance_s
        self.anchor: Optional[float] = None
        self.n = 0

    def place(self, n_samples: int) -> float:
        start = self.clock.now() - n_samples / sig.SAMPLE_RATE        # first sample, from the arrival
        t = None if self.anchor is None else self.anchor + self.n / sig.SAMPLE_RATE
        if t is None or abs(t - start) > self.tolerance_s:
            self.anchor, self.n, t = start, 0, start
        self.n += n_samples
        return t


class SoundDeviceMic(Source):
    """A microphone through PortAudio: "default", a device index or a (partial) device name.
    Opens at 8 kHz mono where the device allows it, else at its default rate, resampled.
    Blocks of CHUNK_SECONDS arrive through a callback; its overflow flag is kept."""

    sensor = "mic"

    def __init__(self, spec: str, clock, read_timeout_s: float = 2.0):
        super().__init__(clock)
        self.sd = _sounddevice()
        self.spec = spec
        self.device = None if spec == "default" else (int(spec) if spec.isdigit() else spec)
        self.description = f"microphone {spec}"
        self.read_timeout_s = read_timeout_s
        self.stream = None
        self.q: "queue.Queue" = queue.Queue(maxsize=64)
        self.resampler: Optional[Resampler] = None
        self.timeline = _Timeline(clock)
        self._dropped = 0

    def _callback(self, indata, frames, time_info, status) -> None:
        try:
            self.q.put_nowait((to_mono(indata).copy(), bool(getattr(status, "input_overflow", False))))
        except queue.Full:
            self._dropped += 1

    def open(self) -> None:
        sd = self.sd
        self.q = queue.Queue(maxsize=64)
        self.timeline = _Timeline(self.clock)
        try:
            rates = [sig.SAMPLE_RATE]
            try:
                native = int(sd.query_devices(self.device, "input")["default_samplerate"])
                if native != sig.SAMPLE_RATE:
                    rates.append(native)
            except Exception:
                pass
            last: Optional[Exception] = None
            for rate in rates:
                try:
                    stream = sd.InputStream(device=self.device, channels=1, samplerate=rate, dtype="float32",
                                            blocksize=int(rate * CHUNK_SECONDS), callback=self._callback)
                    stream.start()
                except Exception as e:                                 # PortAudioError, ValueError
                    last = e
                    continue
                self.stream = stream
                self.resampler = Resampler(rate) if rate != sig.SAMPLE_RATE else None
                return
            raise SourceError(f"cannot open {self.description}: {last}")
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(f"cannot open {self.description}: {e}") from None

    def read(self) -> AudioChunk:
        if self.stream is None:
            raise SourceError("microphone is not open")
        try:
            x, overflow = self.q.get(timeout=self.read_timeout_s)
        except queue.Empty:
            raise SourceError(f"no audio from {self.description} for {self.read_timeout_s:g} s (read timeout)") from None
        if self._dropped:
            overflow, self._dropped = True, 0
        y = self.resampler.process(x) if self.resampler else x.astype(np.float32)
        return AudioChunk(t=self.timeline.place(len(y)), samples=y, overflow=overflow)

    def close(self) -> None:
        if self.stream is not None:
            try:
                self.stream.stop()
                self.stream.close()
            except Exception:
                pass
            finally:
                self.stream = None


class FileMic(Source):
    """A sound file (WAV, FLAC, ...) as the microphone: mixed to mono, resampled to 8 kHz,
    played in real time in CHUNK_SECONDS chunks, looped."""

    sensor = "mic"

    def __init__(self, path: str, clock, loop: bool = True):
        super().__init__(clock)
        try:
            import soundfile
        except (ImportError, OSError) as e:
            raise AvqaError(f"sound files need soundfile ({e}): pip install soundfile") from None
        self.soundfile = soundfile
        self.path, self.loop = path, loop
        self.description = f"sound file {path}"
        self.wave: Optional[np.ndarray] = None
        self._t0, self._j = 0.0, 0

    def open(self) -> None:
        if self.wave is None:
            try:
                data, rate = self.soundfile.read(self.path, dtype="float32", always_2d=True)
            except Exception as e:                                     # missing or undecodable file
                raise SourceError(f"cannot read {self.path}: {e}") from None
            if len(data) < CHUNK_SAMPLES:
                raise SourceError(f"{self.path} holds less than {CHUNK_SECONDS:g} s of audio")
            self.wave = resample(to_mono(data), int(rate))
        self._t0, self._j = self.clock.now(), 0

    def next_due(self) -> float:
        return self._t0 + (self._j + 1) * CHUNK_SECONDS

    def read(self) -> AudioChunk:
        if self.wave is None:
            raise SourceError("sound file is not open")
        n0 = self._j * CHUNK_SAMPLES
        if n0 + CHUNK_SAMPLES > len(self.wave) and not self.loop:
            raise SourceError(f"end of {self.path}")
        self.clock.sleep_until(self.next_due())
        idx = (n0 + np.arange(CHUNK_SAMPLES)) % len(self.wave)
        chunk = AudioChunk(t=self._t0 + self._j * CHUNK_SECONDS, samples=self.wave[idx])
        self._j += 1
        return chunk


# ---- the demo source --------------------------------------------------------------------------

class DemoReel:
    """The calibration clips replayed back to back from clock time `start`, looping.

    frames (N, T, F, H, W, 3) uint8, audio (N, T*SEGMENT_SAMPLES) int16; `clips` picks and
    orders the clips (default all). Frame k (F per second) is shown at start + (k + 0.5) / F,
    so segment s of a clip covers [s, s + 1) seconds of its slot, as in the model's input.
    A source opened before `start` plays the end of the reel first (negative k)."""

    def __init__(self, frames: np.ndarray, audio: np.ndarray, start: float, clips: Optional[Sequence[int]] = None):
        if frames.ndim != 6 or frames.shape[3:] != FRAME_SHAPE or frames.dtype != np.uint8:
            raise AvqaError(f"demo frames must be uint8 (N, T, F, {sig.FRAME_H}, {sig.FRAME_W}, 3), got {frames.dtype} {frames.shape}")
        self.frames, self.audio, self.start = frames, audio, float(start)
        self.order = list(range(len(frames))) if clips is None else [int(c) for c in clips]
        if not self.order:
            raise AvqaError("the demo source needs at least one clip")
        self.t, self.f = frames.shape[1], frames.shape[2]

    @classmethod
    def from_bundle(cls, bundle_dir, start: float, clips: Optional[Sequence[int]] = None) -> "DemoReel":
        from avqa_edge.calibration.calibset import CalibrationSet
        from pathlib import Path
        cs = CalibrationSet.load(Path(bundle_dir) / "calibration")
        return cls(cs.frames, cs.audio, start, clips)

    def clip_at(self, seconds: float) -> int:
        """Which calibration clip plays at `seconds` after the start (before it: the reel's end)."""
        return self.order[int(math.floor(seconds / self.t)) % len(self.order)]

    def clips_between(self, t_start: float, t_end: float) -> List[Tuple[int, float]]:
        """The clips shown in clock time [t_start, t_end), in order: [(clip, seconds), ...]."""
        out: List[Tuple[int, float]] = []
        a, b = t_start - self.start, t_end - self.start
        while a < b - 1e-6:
            slot_end = min(b, (math.floor(a / self.t + 1e-9) + 1) * self.t)
            out.append((self.clip_at(a + 1e-9), round(slot_end - a, 3)))
            a = slot_end
        return out

    def frame(self, k: int) -> np.ndarray:
        per_clip = self.t * self.f
        clip = self.order[(k // per_clip) % len(self.order)]
        within = k % per_clip
        return self.frames[clip, within // self.f, within % self.f]

    def samples(self, n0: int, n: int) -> np.ndarray:
        """Global samples [n0, n0 + n) as float32."""
        per_clip = self.audio.shape[1]
        idx = n0 + np.arange(n)
        clips = np.asarray(self.order)[(idx // per_clip) % len(self.order)]
        return sig.pcm16_to_float(self.audio[clips, idx % per_clip])


class DemoCamera(Source):
    sensor = "camera"
    description = "demo camera (calibration clips)"

    def __init__(self, reel: DemoReel, clock):
        super().__init__(clock)
        self.reel = reel
        self.k = 0

    def _due(self, k: int) -> float:
        return self.reel.start + (k + 0.5) / self.reel.f

    def open(self) -> None:
        self.k = int(math.ceil((self.clock.now() - self.reel.start) * self.reel.f - 0.5))   # < 0: the reel's lead-in

    def next_due(self) -> float:
        return self._due(self.k)

    def read(self) -> Frame:
        now_k = int(math.floor((self.clock.now() - self.reel.start) * self.reel.f - 0.5))
        self.k = max(self.k, now_k)                     # a late reader gets the current frame, not a backlog
        t = self._due(self.k)
        self.clock.sleep_until(t)
        frame = Frame(t=t, image=self.reel.frame(self.k), device_ts=self.k * 1000.0 / self.reel.f)
        self.k += 1
        return frame


class DemoMic(Source):
    sensor = "mic"
    description = "demo microphone (calibration clips)"

    def __init__(self, reel: DemoReel, clock, max_backlog_s: float = 1.0):
        super().__init__(clock)
        self.reel = reel
        self.j = 0
        self.max_backlog_s = max_backlog_s

    def open(self) -> None:
        self.j = int(math.floor((self.clock.now() - self.reel.start) / CHUNK_SECONDS))

    def next_due(self) -> float:
        return self.reel.start + (self.j + 1) * CHUNK_SECONDS

    def read(self) -> AudioChunk:
        behind = int(math.floor((self.clock.now() - self.reel.start) / CHUNK_SECONDS)) - 1 - self.j
        if behind * CHUNK_SECONDS > self.max_backlog_s:  # like a device buffer: keep at most max_backlog_s
            self.j += behind - int(self.max_backlog_s / CHUNK_SECONDS)
        self.clock.sleep_until(self.next_due())
        chunk = AudioChunk(t=self.reel.start + self.j * CHUNK_SECONDS,
                           samples=self.reel.samples(self.j * CHUNK_SAMPLES, CHUNK_SAMPLES))
        self.j += 1
        return chunk


# ---- from a command-line spec -----------------------------------------------------------------

SourceFactory = Callable[[], Source]


def camera_factory(spec: str, clock, reel: Optional[DemoReel] = None, max_fps: float = 8.0) -> Optional[SourceFactory]:
    """`--camera SPEC` -> a factory making a fresh, unopened source (None for "none").
    SPEC: "demo", "none", a device index, a stream URL or a video file path."""
    spec = str(spec).strip()
    if spec == "none":
        return None
    if spec == "demo":
        if reel is None:
            raise AvqaError("--camera demo needs the bundle's calibration clips")
        return lambda: DemoCamera(reel, clock)
    if not (spec.isdigit() or spec.lower().startswith(URL_PREFIXES) or os.path.isfile(spec)):
        raise AvqaError(f"--camera {redact(spec)!r}: not a device index, a stream URL (rtsp://...), an existing video file, "
                        "'demo' or 'none'")
    _cv2()                                                             # fail now, clearly, without OpenCV
    return lambda: OpenCVCamera(spec, clock, max_fps=max_fps)


def mic_factory(spec: str, clock, reel: Optional[DemoReel] = None) -> Optional[SourceFactory]:
    """`--mic SPEC` -> a factory (None for "none"). SPEC: "demo", "none", "default", a device
    index or name (sounddevice), or a sound file path (WAV, FLAC, ...)."""
    spec = str(spec).strip()
    if spec == "none":
        return None
    if spec == "demo":
        if reel is None:
            raise AvqaError("--mic demo needs the bundle's calibration clips")
        return lambda: DemoMic(reel, clock)
    if os.path.isfile(spec):
        FileMic(spec, clock)                                           # checks soundfile now
        return lambda: FileMic(spec, clock)
    if spec.lower().endswith((".wav", ".flac", ".ogg", ".aiff")):
        raise AvqaError(f"--mic {spec!r}: file not found")
    _sounddevice()
    return lambda: SoundDeviceMic(spec, clock)


def check_opens(factory: SourceFactory, sensor: str, timeout_s: float = 5.0) -> str:
    """Open a fresh source from `factory`, read one item and close it. -> its description.

    SensorError (what failed, on one line) when it cannot be opened or read within `timeout_s`;
    the attempt runs in its own thread, so a hung device cannot block the caller."""
    src = factory()
    result: List = []
    stage = ["open"]

    def attempt() -> None:
        try:
            src.open()
            stage[0] = "read"
            try:
                src.read()
            finally:
                src.close()
            result.append(None)
        except Exception as e:                                          # SourceError or a backend bug
            result.append(e)

    t = threading.Thread(target=attempt, name=f"avqa-check-{sensor}", daemon=True)
    t.start()
    t.join(timeout_s)
    if not result:
        raise SensorError(f"{sensor}: {src.description} did not {stage[0]} within {timeout_s:g} s (hung device?)")
    if result[0] is not None:
        what = "" if stage[0] == "open" else f"{src.description} opened, but its first read failed: "
        raise SensorError(f"{sensor}: {what}{result[0]}")
    return src.description


def list_devices() -> str:
    """Audio input devices as text (for error messages), or why they cannot be listed."""
    try:
        return str(_sounddevice().query_devices())
    except AvqaError as e:
        return str(e)

