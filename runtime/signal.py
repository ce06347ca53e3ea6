"""Signal constants and the numpy log-mel front end (torch-free).

The model's audio encoder (toolkit/model/encoders.py) builds its ONNX-exportable front end
(fixed-weight conv DFT + mel matmul + log) from the same constants and the same filterbank
table; tests/test_frontend.py checks the two agree.
"""
import numpy as np

T_SEGMENTS = 10            # a clip is T one-second segments (paper: T = 10)
SEGMENT_SECONDS = 1.0
SAMPLE_RATE = 8000         # Hz, mono
SEGMENT_SAMPLES = int(SAMPLE_RATE * SEGMENT_SECONDS)
N_FFT = 256                # samples per analysis window (32 ms)
HOP_LENGTH = 128           # samples between windows (16 ms)
N_MELS = 32
F_MIN, F_MAX = 50.0, SAMPLE_RATE / 2
LOG_EPS = 1e-5
N_FRAMES = (SEGMENT_SAMPLES - N_FFT) // HOP_LENGTH + 1   # 61 windows per segment, no padding
N_BINS = N_FFT // 2 + 1

FRAME_H, FRAME_W = 32, 48  # video frames are resized to this
FRAMES_PER_SEGMENT = 2     # two frames per second, half a second apart: motion is visible
assert (N_FRAMES - 1) * HOP_LENGTH + N_FFT <= SEGMENT_SAMPLES and N_FRAMES == 61


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank() -> np.ndarray:
    """(N_MELS, N_BINS) float32 triangular HTK-mel filters, computed in float64."""
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_BINS)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(F_MAX), N_MELS + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lower) / (centre - lower)
    down = (upper - freqs[None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def hann_window() -> np.ndarray:
    """(N_FFT,) periodic Hann window, float32."""
    n = np.arange(N_FFT, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)).astype(np.float32)


def log_mel(wave: np.ndarray) -> np.ndarray:
    """Log-mel of one-second segments.

    wave: (..., SEGMENT_SAMPLES) float in [-1, 1]  ->  (..., N_MELS, N_FRAMES) float32.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.shape[-1] != SEGMENT_SAMPLES:
        raise ValueError(f"expected {SEGMENT_SAMPLES} samples per segment, got {wave.shape[-1]}")
    idx = np.arange(N_FRAMES)[:, None] * HOP_LENGTH + np.arange(N_FFT)[None]   # (N_FRAMES, N_FFT)
    frames = wave[..., idx] * hann_window()                                     # (..., N_FRAMES, N_FFT)
    power = np.abs(np.fft.rfft(frames.astype(np.float64), axis=-1)) ** 2        # (..., N_FRAMES, N_BINS)
    mel = power @ mel_filterbank().T.astype(np.float64)                         # (..., N_FRAMES, N_MELS)
    return np.log(mel + LOG_EPS).swapaxes(-1, -2).astype(np.float32)


def pcm16_to_float(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM -> float32 in [-1, 1)."""
    return np.asarray(pcm, dtype=np.float32) / 32768.0


def float_to_pcm16(wave: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16 PCM (clipped)."""
    return np.clip(np.round(np.asarray(wave) * 32767.0), -32768, 32767).astype(np.int16)
