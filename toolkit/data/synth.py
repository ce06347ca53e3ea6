"""The built-in benchmark: procedurally generated audio-visual clips modelled on MUSIC-AVQA.

Every clip is ``T_SEGMENTS`` one-second segments of raw video frames (``FRAMES_PER_SEGMENT``
RGB frames of ``FRAME_H x FRAME_W`` per segment) and mono audio at ``SAMPLE_RATE``, so a
model's encoders see real signals. A clip shows 0-4 instruments on a 3 x 2 grid (left /
middle / right columns, two rows of 16 x 16 px cells); each has its own look (shape, colour,
texture) and its own sound (harmonic profile, pitch range, envelope). The cues mirror real
footage:

* a sounding instrument moves (its two frames in a sounding segment are 1-2 px apart),
  silent ones stay still apart from the global camera jitter;
* nearer instruments are drawn larger and tend to be louder (correlation ~0.5, not a rule);
* audio is mono (location cannot be heard), with low background noise; the video has a
  textured background, pixel noise, camera jitter and per-segment lighting changes;
* some visible instruments stay silent, and sometimes an off-screen instrument sounds.

Ground truth lives in a :class:`Scene`. ``render`` realises each sounding instrument at the
loudness stored in the scene (RMS of its own signal over its sounding segments, before
mixing), so every answer of :func:`candidate_questions` is computed from the scene alone.
:func:`generate` samples scenes, renders them, and picks questions so that answers are
balanced within each template (and within each question text, so a name in the question is
no shortcut). Everything is deterministic from ``(config, seed, split)``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from avqa_edge.runtime.signal import (
    FRAME_H,
    FRAME_W,
    FRAMES_PER_SEGMENT,
    SAMPLE_RATE,
    SEGMENT_SAMPLES,
    T_SEGMENTS,
    float_to_pcm16,
)
from avqa_edge.toolkit.data.types import QA, QUESTION_TYPES, RawSplit

__all__ = [
    "GENERATOR_VERSION", "INSTRUMENTS", "LOCATIONS", "SPLITS", "TEMPLATES",
    "SynthConfig", "Source", "Scene",
    "sample_scene", "render", "candidate_questions", "template_of", "generate", "cache_key",
    "segment_labels",
]

GENERATOR_VERSION = "1.0"

INSTRUMENTS: Tuple[str, ...] = (
    "piano", "violin", "flute", "guitar", "drum", "trumpet", "cello", "xylophone",
)
LOCATIONS: Tuple[str, ...] = ("left", "middle", "right")
SPLITS: Tuple[str, ...] = ("train", "val", "test")

N_COLS, N_ROWS = 3, 2
CELL = 16                                   # px; 3 x 2 cells of 16 x 16 tile the 48 x 32 frame
assert N_COLS * CELL == FRAME_W and N_ROWS * CELL == FRAME_H

SIZE_RANGE = (0.7, 1.3)                     # on-screen scale: nearer instruments are larger
LOUDNESS_DB = -24.0                         # mean target RMS of one instrument, dBFS (float scale)
LOUDNESS_SIZE_DB = 5.0                      # dB per unit of standardised size ((size - 1) / 0.3)
LOUDNESS_NOISE_DB = 5.0                     # independent spread: corr(size, dB) = 0.5
LOUDNESS_DB_RANGE = (-36.0, -12.0)
PEAK_LIMIT = 0.95                           # a clip is scaled down only if its peak exceeds this
COMPARE_RATIO = 1.5                         # loudness comparisons only asked at this RMS ratio
MIN_RUN = 2                                 # a sounding run lasts at least two segments
VIDEO_NOISE = 3.0                           # per-frame pixel noise std (0-255 scale)
BRIGHTNESS_RANGE = (0.85, 1.15)

_F = FRAMES_PER_SEGMENT
_N_FRAMES = T_SEGMENTS * FRAMES_PER_SEGMENT
_N_SAMPLES = T_SEGMENTS * SEGMENT_SAMPLES


# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    train_clips: int = 6000
    val_clips: int = 400
    test_clips: int = 800
    questions_per_clip: int = 6     # average; balancing may drop some candidates
    p_visible_sounds: float = 0.75
    p_offscreen: float = 0.15
    max_visible: int = 4
    audio_noise: float = 0.01       # background noise RMS (float scale)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def clips(self, split: str) -> int:
        _check_split(split)
        return {"train": self.train_clips, "val": self.val_clips, "test": self.test_clips}[split]


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


# --------------------------------------------------------------------------- ground truth

@dataclass(frozen=True)
class Source:
    """One instrument of a clip (visible or off-screen)."""
    name: str                        # one of INSTRUMENTS
    column: int                      # 0..2 (left / middle / right); -1 when off-screen
    row: int                         # 0..1; -1 when off-screen
    size: float                      # drawing scale in SIZE_RANGE (nearness; 1.0 for off-screen)
    sounding: Tuple[bool, ...]       # T flags: the segments in which it plays
    loudness: float                  # RMS render() realises over its sounding segments

    @property
    def visible(self) -> bool:
        return self.column >= 0

    @property
    def sounds(self) -> bool:
        return any(self.sounding)

    @property
    def onset(self) -> int:
        """First sounding segment (T when silent)."""
        return next((t for t, s in enumerate(self.sounding) if s), len(self.sounding))

    @property
    def duration(self) -> int:
        """Number of sounding segments."""
        return int(sum(bool(s) for s in self.sounding))

    @property
    def location(self) -> Optional[str]:
        return LOCATIONS[self.column] if self.visible else None


@dataclass
class Scene:
    """Ground truth of one clip. Plain fields: edit with ``dataclasses.replace``."""
    sources: Tuple[Source, ...]                  # visible ones (distinct cells) and off-screen ones
    jitter: Tuple[Tuple[int, int], ...]          # per frame (T*F) camera shift (dy, dx) in -1..1:
    #                                              the whole image content moves by (-dy, -dx)
    brightness: Tuple[float, ...]                # per segment lighting factor
    background: int                              # seed of the background texture
    video_noise: float = VIDEO_NOISE             # per-frame pixel noise std
    audio_noise: float = 0.01                    # background audio noise RMS

    @property
    def visible(self) -> List[Source]:
        return [s for s in self.sources if s.visible]

    @property
    def offscreen(self) -> List[Source]:
        return [s for s in self.sources if not s.visible]

    @property
    def sounding(self) -> List[Source]:
        return [s for s in self.sources if s.sounds]

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "sources": [
                {"name": s.name, "column": s.column, "row": s.row, "size": s.size,
                 "sounding": [int(bool(x)) for x in s.sounding], "loudness": s.loudness}
                for s in self.sources
            ],
            "jitter": [list(j) for j in self.jitter],
            "brightness": list(self.brightness),
            "background": self.background,
            "video_noise": self.video_noise,
            "audio_noise": self.audio_noise,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(
            sources=tuple(
                Source(s["name"], int(s["column"]), int(s["row"]), float(s["size"]),
                       tuple(bool(x) for x in s["sounding"]), float(s["loudness"]))
                for s in d["sources"]
            ),
            jitter=tuple((int(a), int(b)) for a, b in d["jitter"]),
            brightness=tuple(float(b) for b in d["brightness"]),
            background=int(d["background"]),
            video_noise=float(d["video_noise"]),
            audio_noise=float(d["audio_noise"]),
        )


def _sample_loudness(rng: np.random.Generator, size: float) -> float:
    z = (size - 1.0) / ((SIZE_RANGE[1] - SIZE_RANGE[0]) / 2)          # in [-1, 1]
    db = LOUDNESS_DB + LOUDNESS_SIZE_DB * z + LOUDNESS_NOISE_DB * rng.standard_normal()
    return float(10.0 ** (np.clip(db, *LOUDNESS_DB_RANGE) / 20.0))


def _sample_run(rng: np.random.Generator) -> Tuple[bool, ...]:
    onset = int(rng.integers(0, T_SEGMENTS - MIN_RUN + 1))
    length = int(rng.integers(MIN_RUN, T_SEGMENTS - onset + 1))
    return tuple(onset <= t < onset + length for t in range(T_SEGMENTS))


def sample_scene(rng: np.random.Generator, cfg: SynthConfig) -> Scene:
    """Draw one clip's ground truth.

    0..max_visible visible instruments (uniform count, distinct names and cells); each sounds
    with probability ``p_visible_sounds`` during one contiguous run of >= 2 segments. With
    probability ``p_offscreen`` (if fewer than ``max_visible`` are visible, so that at most
    ``max_visible`` instruments sound) an
    off-screen instrument also sounds. Loudness ~ log-normal, correlated with size.
    """
    max_vis = int(min(cfg.max_visible, N_COLS * N_ROWS, len(INSTRUMENTS) - 1))
    n_vis = int(rng.integers(0, max_vis + 1))
    cells = rng.permutation(N_COLS * N_ROWS)[:n_vis]
    names = rng.permutation(len(INSTRUMENTS))
    silent = (False,) * T_SEGMENTS
    sources = []
    for k in range(n_vis):
        col, row = int(cells[k] % N_COLS), int(cells[k] // N_COLS)
        size = float(np.round(rng.uniform(*SIZE_RANGE), 3))
        loud = _sample_loudness(rng, size)
        sounding = _sample_run(rng) if rng.random() < cfg.p_visible_sounds else silent
        sources.append(Source(INSTRUMENTS[names[k]], col, row, size, sounding, loud))
    if n_vis < max_vis and rng.random() < cfg.p_offscreen:
        dist_size = float(rng.uniform(*SIZE_RANGE))    # how near it is, only sets its loudness
        sources.append(Source(INSTRUMENTS[names[n_vis]], -1, -1, 1.0, _sample_run(rng),
                              _sample_loudness(rng, dist_size)))
    jitter = rng.integers(-1, 2, size=(_N_FRAMES, 2))
    brightness = rng.uniform(*BRIGHTNESS_RANGE, size=T_SEGMENTS)
    return Scene(
        sources=tuple(sources),
        jitter=tuple((int(a), int(b)) for a, b in jitter),
        brightness=tuple(float(b) for b in np.round(brightness, 4)),
        background=int(rng.integers(0, 2 ** 31 - 1)),
        video_noise=VIDEO_NOISE,
        audio_noise=float(cfg.audio_noise),
    )


# --------------------------------------------------------------------------- looks

# name -> (shape, RGB colour, texture)
LOOKS: Dict[str, Tuple[str, Tuple[int, int, int], str]] = {
    "piano": ("square", (235, 235, 225), "stripes"),
    "violin": ("triangle", (205, 55, 30), "solid"),
    "flute": ("hbar", (240, 215, 60), "dots"),
    "guitar": ("diamond", (40, 190, 70), "solid"),
    "drum": ("circle", (45, 95, 235), "dots"),
    "trumpet": ("cross", (250, 140, 20), "solid"),
    "cello": ("vbar", (165, 50, 195), "stripes"),
    "xylophone": ("ring", (40, 215, 215), "stripes"),
}
_SPRITE_RADIUS = 5.6                     # px at size 1.0: 3.9 .. 7.3 px over SIZE_RANGE
_SPRITES: Dict[Tuple[str, int], Tuple[np.ndarray, np.ndarray]] = {}
_GRID = np.arange(CELL, dtype=np.float64) - (CELL - 1) / 2.0   # pixel centres of a cell


def _sprite(name: str, size: float) -> Tuple[np.ndarray, np.ndarray]:
    """(rgb (16,16,3) float32 of 0..255 integers, mask (16,16) bool), centred in a cell."""
    q = int(round(size * 40))                      # sizes quantised to 0.025
    key = (name, q)
    hit = _SPRITES.get(key)
    if hit is not None:
        return hit
    shape, colour, texture = LOOKS[name]
    r = _SPRITE_RADIUS * q / 40.0
    y, x = np.meshgrid(_GRID, _GRID, indexing="ij")
    ay, ax = np.abs(y), np.abs(x)
    if shape == "circle":
        mask = x * x + y * y <= r * r
    elif shape == "square":
        mask = np.maximum(ay, ax) <= 0.8 * r
    elif shape == "triangle":
        mask = (y >= -r) & (y <= 0.8 * r) & (ax <= 0.55 * (y + r))
    elif shape == "diamond":
        mask = ax + ay <= 1.05 * r
    elif shape == "cross":
        mask = ((ax <= 0.34 * r) & (ay <= r)) | ((ay <= 0.34 * r) & (ax <= r))
    elif shape == "ring":
        d2 = x * x + y * y
        mask = (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    elif shape == "vbar":
        mask = (ax <= max(0.35 * r, 1.0)) & (ay <= r)
    elif shape == "hbar":
        mask = (ay <= max(0.35 * r, 1.0)) & (ax <= r)
    else:  # pragma: no cover
        raise ValueError(shape)
    yi, xi = np.meshgrid(np.arange(CELL), np.arange(CELL), indexing="ij")
    shade = np.ones((CELL, CELL))
    if texture == "stripes":
        shade = np.where((xi // 2) % 2 == 0, 1.0, 0.55) if shape != "vbar" else \
            np.where((yi // 2) % 2 == 0, 1.0, 0.55)
    elif texture == "dots":
        shade = np.where((yi % 3 == 1) & (xi % 3 == 1), 0.35, 1.0)
    rgb = np.clip(np.asarray(colour, np.float64)[None, None] * shade[..., None], 0, 255)
    out = (rgb.astype(np.uint8).astype(np.float32), mask)
    _SPRITES[key] = out
    return out


def _background(seed: int) -> np.ndarray:
    """(H+2, W+2, 3) float32 textured background (padded by the 1 px camera jitter)."""
    rng = np.random.default_rng(seed)
    h, w = FRAME_H + 2, FRAME_W + 2
    base = rng.uniform(45, 105, size=3)
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    pattern = np.zeros((h, w), np.float32)
    for _ in range(2):       # two random gratings: wallpaper, floor boards, ...
        fy, fx = rng.uniform(-0.5, 0.5, size=2)
        pattern += np.float32(rng.uniform(5, 14)) * np.sin(fy * y + fx * x + rng.uniform(0, 6.3))
    grad = np.float32(rng.uniform(-15, 15)) * (y / h - 0.5)
    speckle = _noise_bank(rng, h * w).reshape(h, w) * np.float32(6.0)
    lum = pattern + grad + speckle
    return (base.astype(np.float32)[None, None] + lum[..., None]).astype(np.float32)


# shared standard-normal noise; clips read it at random offsets (much cheaper than drawing
# fresh Gaussians per sample, and deterministic given the clip's rng)
_BANK_SIZE = 1 << 20
_BANK: Optional[np.ndarray] = None


def _noise_bank(rng: np.random.Generator, n: int) -> np.ndarray:
    global _BANK
    if _BANK is None:
        _BANK = np.random.default_rng(0x5EED).standard_normal(_BANK_SIZE, dtype=np.float32)
    if n > _BANK_SIZE:
        return rng.standard_normal(n, dtype=np.float32)
    start = int(rng.integers(0, _BANK_SIZE - n + 1))
    seg = _BANK[start:start + n]
    return -seg if rng.random() < 0.5 else seg.copy()


# 1-2 px motion offsets of a sounding instrument's second frame in a segment
_MOTIONS = np.array([(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0)])


def _paste(img: np.ndarray, rgb: np.ndarray, mask: np.ndarray, top: int, left: int) -> None:
    h, w = mask.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, img.shape[0]), min(left + w, img.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    m = mask[y0 - top:y1 - top, x0 - left:x1 - left]
    np.copyto(img[y0:y1, x0:x1], rgb[y0 - top:y1 - top, x0 - left:x1 - left], where=m[..., None])


def _render_video(scene: Scene, base: int) -> np.ndarray:
    bg = _background(scene.background)                 # the world, 1 px wider each side
    vis = scene.visible
    moves = []
    for s in vis:                                       # one motion offset per sounding segment
        rng = _stream(base, 0, INSTRUMENTS.index(s.name))
        m = _MOTIONS[rng.integers(0, len(_MOTIONS), size=T_SEGMENTS)]
        m[~np.asarray(s.sounding, bool)] = 0
        moves.append(m)
    sprites = [_sprite(s.name, s.size) for s in vis]

    def world(t: Optional[int]) -> np.ndarray:          # sprites at rest (t None) or moved
        w = bg.copy()
        for s, (rgb, mask), m in zip(vis, sprites, moves):
            dy, dx = (0, 0) if t is None else m[t]
            _paste(w, rgb, mask, 1 + s.row * CELL + dy, 1 + s.column * CELL + dx)
        return w

    rest = world(None)
    jit = np.asarray(scene.jitter, dtype=np.int64).reshape(_N_FRAMES, 2)
    frames = np.empty((_N_FRAMES, FRAME_H, FRAME_W, 3), np.float32)
    for t in range(T_SEGMENTS):
        moved = any(m[t].any() for m in moves)
        for k in range(_F):
            f = t * _F + k
            w = world(t) if (moved and k % 2 == 1) else rest
            dy, dx = jit[f]                             # the camera moves: the window shifts
            frames[f] = w[1 + dy:1 + dy + FRAME_H, 1 + dx:1 + dx + FRAME_W]
    light = np.repeat(np.asarray(scene.brightness, np.float32), _F)
    frames *= light[:, None, None, None]
    if scene.video_noise > 0:
        noise = _noise_bank(_stream(base, 1), _N_FRAMES * FRAME_H * FRAME_W).reshape(_N_FRAMES, FRAME_H, FRAME_W, 1)
        frames += noise * np.float32(scene.video_noise)
    frames += np.float32(0.5)                           # round half up on the cast below
    np.clip(frames, 0, 255, out=frames)
    return frames.astype(np.uint8).reshape(T_SEGMENTS, _F, FRAME_H, FRAME_W, 3)


# --------------------------------------------------------------------------- sounds

@dataclass(frozen=True)
class _Sound:
    f_range: Tuple[float, float]         # fundamental range (Hz)
    harmonics: Tuple[float, ...]         # amplitude of harmonic k+1
    envelope: str                        # "pluck" (decay per note) | "sustain" | "noise" (drum)
    note: Tuple[float, float]            # note length range (s)
    tau: float = 0.3                     # decay time constant (pluck / noise)
    attack: float = 0.01                 # s
    vibrato: float = 0.0                 # relative frequency modulation depth at 5.5 Hz
    tremolo: float = 0.0                 # amplitude modulation depth at 6.5 Hz
    breath: float = 0.0                  # added noise, relative


SOUNDS: Dict[str, _Sound] = {
    "piano": _Sound((220, 587), (1.0, 0.45, 0.25, 0.12, 0.06), "pluck", (0.25, 0.5), tau=0.45,
                    attack=0.004),
    "violin": _Sound((392, 880), (1.0, 0.7, 0.5, 0.35), "sustain", (0.5, 1.0),
                     attack=0.06, vibrato=0.02),
    "flute": _Sound((520, 1200), (1.0, 0.18, 0.04), "sustain", (0.4, 0.8), attack=0.05,
                    breath=0.12),
    "guitar": _Sound((147, 392), (1.0, 0.9, 0.75, 0.6, 0.45, 0.35, 0.25, 0.18, 0.12),
                     "pluck", (0.18, 0.35), tau=0.16, attack=0.002),
    "drum": _Sound((55, 95), (1.0,), "noise", (0.2, 0.5), tau=0.07, attack=0.001),
    "trumpet": _Sound((233, 700), (0.4, 0.75, 1.0, 0.85, 0.55), "sustain", (0.3, 0.6),
                      attack=0.025),
    "cello": _Sound((98, 247), tuple(1.0 / k ** 0.7 for k in range(1, 15)), "sustain",
                    (0.6, 1.2), attack=0.08, tremolo=0.6),
    "xylophone": _Sound((600, 1200), (1.0, 0.0, 0.5), "pluck", (0.12, 0.25), tau=0.07,
                        attack=0.001),
}
assert set(SOUNDS) == set(INSTRUMENTS) == set(LOOKS)

_TABLE_BITS = 12
_TABLE_N = 1 << _TABLE_BITS
_TABLES: Dict[str, np.ndarray] = {}
_T_AXIS = np.arange(_N_SAMPLES, dtype=np.float64) / SAMPLE_RATE
_VIBRATO = np.sin(2 * np.pi * 5.5 * _T_AXIS)
_TREMOLO = np.sin(2 * np.pi * 6.5 * _T_AXIS).astype(np.float32)


def _table(name: str) -> np.ndarray:
    """One period of the instrument's waveform (harmonic sum), float32, peak-normalised."""
    tab = _TABLES.get(name)
    if tab is None:
        snd = SOUNDS[name]
        assert len(snd.harmonics) * snd.f_range[1] < SAMPLE_RATE / 2, name   # no aliasing
        ph = np.arange(_TABLE_N) / _TABLE_N * 2 * np.pi
        tab = sum(a * np.sin((k + 1) * ph + 0.7 * k) for k, a in enumerate(snd.harmonics))
        tab = (tab / np.abs(tab).max()).astype(np.float32)
        _TABLES[name] = tab
    return tab


def _runs(mask: Sequence[bool]) -> List[Tuple[int, int]]:
    """[(start, stop)) segment runs where mask is true."""
    runs, start = [], None
    for t, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = t
        elif not m and start is not None:
            runs.append((start, t))
            start = None
    return runs


_ENVELOPES: Dict[str, np.ndarray] = {}
_FADE = np.linspace(0.0, 1.0, int(0.005 * SAMPLE_RATE), dtype=np.float32)


def _pluck_envelope(name: str) -> np.ndarray:
    """Attack ramp + exponential decay over the longest note, float32 (indexed by sample)."""
    env = _ENVELOPES.get(name)
    if env is None:
        snd = SOUNDS[name]
        t = np.arange(int(snd.note[1] * SAMPLE_RATE) + 1, dtype=np.float64)
        env = np.exp(-t / (snd.tau * SAMPLE_RATE)) * np.minimum(t / (snd.attack * SAMPLE_RATE), 1.0)
        env = env.astype(np.float32)
        _ENVELOPES[name] = env
    return env


def _synth_run(name: str, start: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unnormalised float32 signal of one instrument over clip samples [start, start + n)."""
    snd = SOUNDS[name]
    lo, hi = int(snd.note[0] * SAMPLE_RATE), int(snd.note[1] * SAMPLE_RATE)
    lens = rng.integers(lo, hi + 1, size=n // lo + 2)
    ends = np.cumsum(lens)
    k = int(np.searchsorted(ends, n)) + 1
    lens, ends = lens[:k], ends[:k]
    lens[-1] -= ends[-1] - n                       # notes tile the run exactly
    ends[-1] = n
    starts = ends - lens
    n_semis = int(np.floor(12 * np.log2(snd.f_range[1] / snd.f_range[0])))
    f0 = snd.f_range[0] * 2.0 ** (rng.integers(0, n_semis + 1, size=k) / 12.0)
    idx = np.arange(n, dtype=np.int32)
    t_in = idx - np.repeat(starts.astype(np.int32), lens)          # sample index in its note
    if snd.envelope == "sustain":
        t_left = np.repeat(ends.astype(np.int32), lens) - idx      # samples to the note's end
        env = np.minimum(t_in.astype(np.float32) * np.float32(1.0 / (snd.attack * SAMPLE_RATE)),
                         t_left.astype(np.float32) * np.float32(1.0 / (0.03 * SAMPLE_RATE)))
        np.clip(env, 0.0, 1.0, out=env)
    else:
        env = np.take(_pluck_envelope(name), t_in)
    # fixed-point phase accumulator (wraps mod 2^32): exact and cheap
    if snd.vibrato:
        freq = np.repeat(f0, lens) * (1.0 + snd.vibrato * _VIBRATO[start:start + n])
        inc = np.rint(freq * (2.0 ** 32 / SAMPLE_RATE)).astype(np.uint32)
    else:
        inc = np.repeat(np.rint(f0 * (2.0 ** 32 / SAMPLE_RATE)).astype(np.uint32), lens)
    phase = np.cumsum(inc, dtype=np.uint32)
    phase >>= np.uint32(32 - _TABLE_BITS)
    tone = np.take(_table(name), phase)
    if snd.envelope == "noise":                    # drum: low-passed noise burst + a thump
        noise = _noise_bank(rng, n + 3)
        body = noise[3:] + noise[2:-1]
        body += noise[1:-2]
        body += noise[:-3]
        body *= np.float32(0.5)
        tone *= np.float32(0.8)
        tone += body
    if snd.tremolo:
        tone *= np.float32(1.0) + np.float32(snd.tremolo) * _TREMOLO[start:start + n]
    if snd.breath:
        tone += np.float32(snd.breath) * _noise_bank(rng, n)
    tone *= env
    fade = min(len(_FADE), n // 2)                 # no click at the run's edges
    tone[:fade] *= _FADE[:fade]
    tone[n - fade:] *= _FADE[:fade][::-1]
    return tone


def _source_runs(src: Source, rng: np.random.Generator) -> List[Tuple[int, np.ndarray]]:
    """[(first sample, signal)] of one source, scaled so that its RMS over all its sounding
    segments is exactly ``src.loudness``; [] when it is silent."""
    runs = _runs(src.sounding)
    if not runs:
        return []
    out = [(a * SEGMENT_SAMPLES,
            _synth_run(src.name, a * SEGMENT_SAMPLES, (b - a) * SEGMENT_SAMPLES, rng))
           for a, b in runs]
    energy = sum(float(np.dot(x, x)) for _, x in out)
    n_on = sum(len(x) for _, x in out)
    gain = np.float32(src.loudness / max(np.sqrt(energy / n_on), 1e-12))
    for _, x in out:
        x *= gain
    return out


def _render_audio(scene: Scene, base: int) -> np.ndarray:
    if scene.audio_noise > 0:                 # room noise, slightly tilted to low frequencies
        w = _noise_bank(_stream(base, 2), _N_SAMPLES + 1)
        mix = w[1:] + np.float32(0.6) * w[:-1]
        mix *= np.float32(scene.audio_noise / np.sqrt(1.36))
    else:
        mix = np.zeros(_N_SAMPLES, np.float32)
    for s in scene.sources:
        for s0, x in _source_runs(s, _stream(base, 3, INSTRUMENTS.index(s.name))):
            mix[s0:s0 + len(x)] += x
    peak = float(np.abs(mix).max())
    if peak > PEAK_LIMIT:                    # one gain for the clip: relative loudness is kept
        mix *= np.float32(PEAK_LIMIT / peak)
    return mix


def _check_scene(scene: Scene) -> None:
    if len(scene.jitter) != _N_FRAMES or any(abs(int(v)) > 1 for j in scene.jitter for v in j):
        raise ValueError(f"jitter must hold {_N_FRAMES} (dy, dx) pairs in -1..1")
    if len(scene.brightness) != T_SEGMENTS:
        raise ValueError(f"brightness must hold {T_SEGMENTS} factors")
    cells = set()
    for s in scene.sources:
        if s.name not in SOUNDS:
            raise ValueError(f"unknown instrument {s.name!r}")
        if len(s.sounding) != T_SEGMENTS:
            raise ValueError(f"{s.name}: sounding must hold {T_SEGMENTS} flags")
        if s.visible:
            if not (0 <= s.column < N_COLS and 0 <= s.row < N_ROWS):
                raise ValueError(f"{s.name}: cell ({s.column}, {s.row}) is off the grid")
            if (s.column, s.row) in cells:
                raise ValueError(f"{s.name}: cell ({s.column}, {s.row}) is taken")
            cells.add((s.column, s.row))
    if len({s.name for s in scene.sources}) != len(scene.sources):
        raise ValueError("instrument names must be distinct within a clip")


def render(scene: Scene, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Render a scene: frames (T, F, H, W, 3) uint8 RGB and audio (T*SEGMENT_SAMPLES,)
    float32 in [-1, 1].

    Each sounding source is synthesised at RMS ``loudness`` over its sounding segments before
    mixing; the mix is scaled down as a whole only if its peak exceeds 0.95. ``rng`` gives one
    draw; each source (its notes, its motion) and each noise then has its own stream, so
    editing one source leaves the others' pixels and samples unchanged."""
    _check_scene(scene)
    base = int(rng.integers(0, 2 ** 63 - 1))
    frames = _render_video(scene, base)
    audio = _render_audio(scene, base)
    return frames, audio


def _stream(base: int, *key: int) -> np.random.Generator:
    """Independent random stream of one part of a clip (a source's notes, its motion, noise):
    removing or editing one source leaves the rendering of the others unchanged."""
    return np.random.default_rng([base, *key])


# --------------------------------------------------------------------------- questions

# template id -> (question type, pattern)
TEMPLATES: Dict[str, Tuple[str, str]] = {
    "a_count": ("Audio/Counting", "How many instruments are sounding?"),
    "a_louder": ("Audio/Comparative", "Is the {x} louder than the {y}?"),
    "a_longer": ("Audio/Comparative", "Does the {x} play longer than the {y}?"),
    "v_count": ("Visual/Counting", "How many instruments are in the video?"),
    "v_where": ("Visual/Location", "Where is the {x}?"),
    "v_what": ("Visual/Location", "What is the instrument on the {l}?"),
    "av_playing": ("Audio-Visual/Existential", "Is the {x} playing?"),
    "av_where_sounding": ("Audio-Visual/Location", "Where is the sounding instrument?"),
    "av_where_loudest": ("Audio-Visual/Location", "Where is the loudest instrument?"),
    "av_count": ("Audio-Visual/Counting", "How many instruments in the video are playing?"),
    "av_louder": ("Audio-Visual/Comparative",
                  "Is the instrument on the {l} louder than the instrument on the {m}?"),
    "av_first_which": ("Audio-Visual/Temporal", "Which instrument plays first?"),
    "av_first_where": ("Audio-Visual/Temporal", "Where is the first sounding instrument?"),
}
assert {q for q, _ in TEMPLATES.values()} == set(QUESTION_TYPES)


def _template_regex():
    import re
    out = []
    for tid, (_, pat) in TEMPLATES.items():
        rx = re.escape(pat)
        for ph in ("x", "y", "l", "m"):
            rx = rx.replace(re.escape("{" + ph + "}"), "[a-z]+")
        out.append((tid, re.compile("^" + rx + "$")))
    return out


_TEMPLATE_RX = _template_regex()


def template_of(question: str) -> str:
    """Template id of a generated question."""
    for tid, rx in _TEMPLATE_RX:
        if rx.match(question):
            return tid
    raise KeyError(question)


def _ask(tid: str, answer, **slots) -> Tuple[str, str, str, str]:
    qtype, pat = TEMPLATES[tid]
    return tid, pat.format(**slots), str(answer), qtype


def _candidates(scene: Scene) -> List[Tuple[str, str, str, str]]:
    """(template id, question, answer, qtype) for every askable question of the scene."""
    out = []
    vis = scene.visible
    snd = scene.sounding
    vis_snd = [s for s in vis if s.sounds]
    by_col = [[s for s in vis if s.column == c] for c in range(N_COLS)]

    def ratio_ok(a: Source, b: Source) -> bool:
        hi, lo = max(a.loudness, b.loudness), min(a.loudness, b.loudness)
        return hi >= COMPARE_RATIO * lo

    # Audio/Counting
    out.append(_ask("a_count", len(snd)))
    # Audio/Comparative (both orders; answers complement)
    for a in snd:
        for b in snd:
            if a is b:
                continue
            if ratio_ok(a, b):
                out.append(_ask("a_louder", "yes" if a.loudness > b.loudness else "no",
                                x=a.name, y=b.name))
            if abs(a.duration - b.duration) >= 2:
                out.append(_ask("a_longer", "yes" if a.duration > b.duration else "no",
                                x=a.name, y=b.name))
    # Visual/Counting
    out.append(_ask("v_count", len(vis)))
    # Visual/Location
    for s in vis:
        out.append(_ask("v_where", s.location, x=s.name))
    for c in range(N_COLS):
        if len(by_col[c]) == 1:
            out.append(_ask("v_what", by_col[c][0].name, l=LOCATIONS[c]))
    # Audio-Visual/Existential
    for s in vis:
        out.append(_ask("av_playing", "yes" if s.sounds else "no", x=s.name))
    # Audio-Visual/Location
    if len(vis_snd) == 1:
        out.append(_ask("av_where_sounding", vis_snd[0].location))
    if len(snd) >= 2:
        ranked = sorted(snd, key=lambda s: -s.loudness)
        top, nxt = ranked[0], ranked[1]
        if top.visible and top.loudness >= COMPARE_RATIO * nxt.loudness:
            out.append(_ask("av_where_loudest", top.location))
    # Audio-Visual/Counting
    out.append(_ask("av_count", len(vis_snd)))
    # Audio-Visual/Comparative
    for c1 in range(N_COLS):
        for c2 in range(N_COLS):
            if c1 == c2 or len(by_col[c1]) != 1 or len(by_col[c2]) != 1:
                continue
            a, b = by_col[c1][0], by_col[c2][0]
            if a.sounds and b.sounds and ratio_ok(a, b):
                out.append(_ask("av_louder", "yes" if a.loudness > b.loudness else "no",
                                l=LOCATIONS[c1], m=LOCATIONS[c2]))
    # Audio-Visual/Temporal
    if len(snd) >= 2:
        onsets = sorted(s.onset for s in snd)
        first = min(snd, key=lambda s: s.onset)
        if onsets[0] < onsets[1] and first.visible:
            out.append(_ask("av_first_which", first.name))
            out.append(_ask("av_first_where", first.location))
    return out


def segment_labels(scene: Scene) -> Dict[str, np.ndarray]:
    """Per-segment event labels of one clip, read from its ground truth, for training's
    auxiliary tagging loss (toolkit/model/tagger.py). The model never sees them at inference.

    sounding (T, K) 0/1: instrument k plays in segment t (off-screen ones included);
    level    (T, K) its loudness in dB, centred and scaled ((dB - LOUDNESS_DB) / LOUDNESS_NOISE_DB),
             0 where it is silent;
    cell     (T, N_ROWS, N_COLS) int64: 0 empty, 1 + k for instrument k in that grid cell;
    moving   (T, N_ROWS, N_COLS) 0/1: that cell's instrument plays, so it moves, in segment t.
    """
    k = len(INSTRUMENTS)
    out = {"sounding": np.zeros((T_SEGMENTS, k), np.float32), "level": np.zeros((T_SEGMENTS, k), np.float32),
           "cell": np.zeros((T_SEGMENTS, N_ROWS, N_COLS), np.int64),
           "moving": np.zeros((T_SEGMENTS, N_ROWS, N_COLS), np.float32)}
    for s in scene.sources:
        i = INSTRUMENTS.index(s.name)
        on = np.asarray(s.sounding, np.float32)
        db = 20.0 * np.log10(max(s.loudness, 1e-6))
        out["sounding"][:, i] = on
        out["level"][:, i] = on * (db - LOUDNESS_DB) / LOUDNESS_NOISE_DB
        if s.visible:
            out["cell"][:, s.row, s.column] = 1 + i
            out["moving"][:, s.row, s.column] = on
    return out


def candidate_questions(scene: Scene) -> List[Tuple[str, str, str]]:
    """Every askable (question, answer, qtype) of the scene, answers from its ground truth."""
    return [(q, a, t) for _, q, a, t in _candidates(scene)]


def _waterfill(caps: Sequence[int], total: int) -> List[int]:
    """Split ``total`` as evenly as possible under per-item capacities."""
    alloc = [0] * len(caps)
    order = sorted(range(len(caps)), key=lambda i: caps[i])
    left = total
    for k, i in enumerate(order):
        rest = len(caps) - k
        share = -(-left // rest)                       # ceil
        alloc[i] = int(min(caps[i], share, left))
        left -= alloc[i]
    return alloc


def _select(cands: List[Tuple[int, str, str, str, str]], budget: int,
            rng: np.random.Generator) -> List[int]:
    """Indices of the chosen candidates (clip, tid, question, answer, qtype).

    Within each question text, every observed answer keeps the same number of candidates
    (texts with a single observed answer are dropped: they would be shortcuts). Candidates are
    then taken round-robin over the (question, answer) cells, with the budget shared evenly
    over question types and, within a type, over templates.
    """
    cells: Dict[str, Dict[str, Dict[str, List[int]]]] = {tid: {} for tid in TEMPLATES}
    for i, (_, tid, q, a, _) in enumerate(cands):
        cells[tid].setdefault(q, {}).setdefault(a, []).append(i)
    pools: Dict[str, List[int]] = {}
    for tid in TEMPLATES:
        ranked = []
        for q, by_ans in cells[tid].items():
            if len(by_ans) < 2:
                continue
            m = min(len(v) for v in by_ans.values())
            for a, idx in by_ans.items():
                pick = rng.permutation(len(idx))[:m]
                ranked.extend((r, int(idx[j])) for r, j in enumerate(pick))
        tie = rng.random(len(ranked))
        order = sorted(range(len(ranked)), key=lambda k: (ranked[k][0], tie[k]))
        pools[tid] = [ranked[k][1] for k in order]
    by_type = {t: [tid for tid, (qt, _) in TEMPLATES.items() if qt == t] for t in QUESTION_TYPES}
    type_alloc = _waterfill([sum(len(pools[tid]) for tid in by_type[t]) for t in QUESTION_TYPES],
                            budget)
    chosen: List[int] = []
    for t, n_t in zip(QUESTION_TYPES, type_alloc):
        tids = by_type[t]
        for tid, n in zip(tids, _waterfill([len(pools[tid]) for tid in tids], n_t)):
            chosen.extend(pools[tid][:n])
    return sorted(chosen)


# --------------------------------------------------------------------------- splits

def cache_key(cfg: SynthConfig, split: str) -> str:
    blob = json.dumps({"version": GENERATOR_VERSION, "config": cfg.to_dict(), "split": split},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _count(items) -> Dict[str, Dict[str, int]]:
    out: Dict[str, Dict[str, int]] = {}
    for key, ans in items:
        d = out.setdefault(key, {})
        d[ans] = d.get(ans, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def _build(cfg: SynthConfig, split: str) -> RawSplit:
    split_idx = _check_split(split)
    if cfg.seed < 0:
        raise ValueError("seed must be non-negative")
    n = cfg.clips(split)
    frames = np.empty((n, T_SEGMENTS, _F, FRAME_H, FRAME_W, 3), np.uint8)
    audio = np.empty((n, _N_SAMPLES), np.int16)
    cands: List[Tuple[int, str, str, str, str]] = []
    scenes = []
    for i in range(n):
        rng = np.random.default_rng([cfg.seed, split_idx, 1, i])
        scene = sample_scene(rng, cfg)
        f, a = render(scene, rng)
        frames[i] = f
        audio[i] = float_to_pcm16(a)
        scenes.append(scene.to_dict())
        cands.extend((i,) + c for c in _candidates(scene))
    sel_rng = np.random.default_rng([cfg.seed, split_idx, 2])
    budget = int(round(n * cfg.questions_per_clip))
    chosen = _select(cands, budget, sel_rng)
    qa = [QA(clip=cands[k][0], question=cands[k][2], answer=cands[k][3], qtype=cands[k][4])
          for k in chosen]
    answer_counts = _count((q.qtype, q.answer) for q in qa)
    meta = {
        "source": "synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "split": split,
        "config": cfg.to_dict(),
        "n_clips": n,
        "n_questions": len(qa),
        "n_candidates": len(cands),
        "answer_counts": {t: answer_counts.get(t, {}) for t in QUESTION_TYPES},
        "template_answer_counts": _count((cands[k][1], cands[k][3]) for k in chosen),
        "instruments": list(INSTRUMENTS),
        "locations": list(LOCATIONS),
        "scenes": scenes,
    }
    return RawSplit(frames=frames, audio=audio, qa=qa, meta=meta)


def _save(path: str, data: RawSplit) -> None:
    qa_json = json.dumps([dataclasses.asdict(q) for q in data.qa])
    buf = io.BytesIO()
    np.savez(buf, frames=data.frames, audio=data.audio,
             qa_json=np.array(qa_json), meta_json=np.array(json.dumps(data.meta)))
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getbuffer())
        os.replace(tmp, path)                 # atomic: readers never see half a file
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _load(path: str) -> RawSplit:
    with np.load(path, allow_pickle=False) as z:
        qa = [QA(**d) for d in json.loads(str(z["qa_json"]))]
        return RawSplit(frames=z["frames"], audio=z["audio"], qa=qa,
                        meta=json.loads(str(z["meta_json"])))


def generate(cfg: SynthConfig, split: str, cache_dir: Optional[str] = None) -> RawSplit:
    """Generate (or load from ``cache_dir``) one split of the built-in benchmark.

    Same config + split -> byte-identical frames, audio and questions. Splits use separate
    random streams (``[seed, split_index, ...]``). The cache is an ``.npz`` (no pickle) named
    by a hash of (GENERATOR_VERSION, config, split), holding the QA list and meta as JSON.
    """
    _check_split(split)
    path = None
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)
        path = os.path.join(cache_dir, f"synth_{split}_{cache_key(cfg, split)}.npz")
        if os.path.exists(path):
            try:
                return _load(path)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass                          # unreadable cache: regenerate and overwrite
    data = _build(cfg, split)
    if path is not None:
        _save(path, data)
    return data
