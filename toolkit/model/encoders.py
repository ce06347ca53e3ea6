"""Encoders: raw frames -> visual map, waveform -> audio vector, question -> vector.

Shapes: B batch, T segments, F frames per segment, C = config.dim, H'/W' the map size.
"""
import math

import numpy as np
import torch
from torch import nn

from avqa_edge.runtime import signal as sig


class LogMel(nn.Module):
    """Log-mel front end written so it exports to ONNX and TensorRT 8.5+.

    A Conv1d holding fixed windowed cos/sin weights (the DFT), power, a MatMul with the mel
    filterbank and a log: no STFT/DFT op. Matches runtime.signal.log_mel (the numpy
    reference) to float error.
    """

    def __init__(self):
        super().__init__()
        n = np.arange(sig.N_FFT, dtype=np.float64)
        k = np.arange(sig.N_BINS, dtype=np.float64)[:, None]
        window = sig.hann_window().astype(np.float64)
        cos = np.cos(2 * np.pi * k * n / sig.N_FFT) * window
        sin = -np.sin(2 * np.pi * k * n / sig.N_FFT) * window
        dft = np.concatenate([cos, sin])[:, None, :]                        # (2*N_BINS, 1, N_FFT)
        self.register_buffer("dft", torch.tensor(dft, dtype=torch.float32), persistent=False)
        self.register_buffer("mel", torch.tensor(sig.mel_filterbank()), persistent=False)  # (N_MELS, N_BINS)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """wave (N, SEGMENT_SAMPLES) -> (N, N_MELS, N_FRAMES)."""
        spec = nn.functional.conv1d(wave[:, None], self.dft, stride=sig.HOP_LENGTH)  # (N, 2*N_BINS, N_FRAMES)
        re, im = spec[:, : sig.N_BINS], spec[:, sig.N_BINS:]
        power = re * re + im * im                                           # (N, N_BINS, N_FRAMES)
        return torch.log(torch.matmul(self.mel, power) + sig.LOG_EPS)       # (N, N_MELS, N_FRAMES)


def _conv(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AudioEncoder(nn.Module):
    """Waveform segments -> one C vector per segment.

    The CNN keeps 8 of the 32 mel bands (harmonic profiles tell instruments apart) and pools
    time by mean and max (plucks are short). A level path adds each band's mean log-mel after
    the LayerNorm, so absolute loudness, which the normalisation removes, reaches the model
    (louder-than and longer-than questions)."""

    def __init__(self, dim: int):
        super().__init__()
        self.frontend = LogMel()
        self.norm_in = nn.BatchNorm2d(1)
        self.body = nn.Sequential(_conv(1, 16, 2), _conv(16, 32, 2), _conv(32, 64, (1, 2)))  # (N,64,8,8)
        self.proj = nn.Linear(2 * 64 * (sig.N_MELS // 4), dim)
        self.norm = nn.LayerNorm(dim)
        self.level = nn.Linear(sig.N_MELS, dim)

    def from_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, T, N_MELS, N_FRAMES) -> (B, T, C)."""
        b, t = mel.shape[:2]
        x = self.norm_in(mel.reshape(b * t, 1, *mel.shape[2:]))             # (B*T, 1, N_MELS, N_FRAMES)
        level = x.mean(dim=3).flatten(1)                                      # (B*T, N_MELS)
        x = self.body(x)                                                      # (B*T, 64, 8, 8)
        x = torch.cat([x.mean(dim=3), x.amax(dim=3)], dim=1).flatten(1)      # (B*T, 2*64*8): pool time, keep pitch
        return (self.norm(self.proj(x)) + self.level(level)).reshape(b, t, -1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """wave (B, T*SEGMENT_SAMPLES) float in [-1, 1] -> (B, T, C)."""
        b = wave.shape[0]
        mel = self.frontend(wave.reshape(-1, sig.SEGMENT_SAMPLES))           # (B*T, N_MELS, N_FRAMES)
        return self.from_mel(mel.reshape(b, -1, *mel.shape[1:]))


class VisualEncoder(nn.Module):
    """Frames -> a (C, H', W') map per segment; the F frames of a segment are stacked as
    channels so motion (a sounding instrument moves) is visible to the first conv."""

    def __init__(self, dim: int, frames_per_segment: int = sig.FRAMES_PER_SEGMENT):
        super().__init__()
        self.body = nn.Sequential(_conv(3 * frames_per_segment, 16, 2), _conv(16, 32, 2), _conv(32, 64, 2),
                                  nn.Conv2d(64, dim, 1))
        self.norm = nn.LayerNorm(dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, F, H, W, 3) uint8 -> (B, T, C, H/8, W/8)."""
        b, t, f, h, w, _ = frames.shape
        x = frames.to(torch.float32).div(255.0)
        x = x.permute(0, 1, 2, 5, 3, 4).reshape(b * t, f * 3, h, w)          # (B*T, F*3, H, W)
        x = self.body(x)                                                      # (B*T, C, H', W')
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)              # LayerNorm over C
        return x.reshape(b, t, *x.shape[1:])


class FeatureProjections(nn.Module):
    """MUSIC-AVQA pre-extracted features -> model width (the `paper` preset)."""

    def __init__(self, audio_in: int, visual_in: int, dim: int):
        super().__init__()
        self.audio = nn.Sequential(nn.Linear(audio_in, dim), nn.LayerNorm(dim))
        self.visual = nn.Conv2d(visual_in, dim, 1)
        self.visual_norm = nn.LayerNorm(dim)

    def encode_audio(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, T, audio_in) -> (B, T, C)."""
        return self.audio(feats)

    def encode_visual(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, T, visual_in, H, W) -> (B, T, C, H, W)."""
        b, t = feats.shape[:2]
        x = self.visual(feats.reshape(b * t, *feats.shape[2:]).to(torch.float32))
        x = self.visual_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x.reshape(b, t, *x.shape[1:])


class QuestionEncoder(nn.Module):
    """Token ids (right-padded with 0) -> question states (B, 1 + L, C): embedding +
    one-direction LSTM. Row 0 is the output at the last real token (a Gather, so it exports
    without packed sequences), the question vector q; rows 1..L are the per-word outputs,
    zero at padding, which the backbone's temporal pooling reads word by word (model
    version 3: "is the x louder than the y" needs x and y apart, not one mixed vector)."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) int64 -> (B, 1 + L, C)."""
        out, _ = self.lstm(self.embed(tokens))                               # (B, L, C)
        last = (tokens != 0).sum(dim=1).clamp(min=1) - 1                     # (B,)
        idx = last[:, None, None].expand(-1, 1, out.shape[-1])               # (B, 1, C)
        words = self.norm(out) * (tokens != 0)[..., None].to(out.dtype)      # (B, L, C), 0 at padding
        return torch.cat([self.norm(out.gather(1, idx)), words], dim=1)      # (B, 1 + L, C)


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) -> (N, dim) sinusoidal embedding of a step index."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], dim=-1)
