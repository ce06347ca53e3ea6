"""Ground truth of a clip (Scene, Source), how it is sampled, and its per-segment labels."""
import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from avqa_edge.runtime.signal import T_SEGMENTS

from .config import (BRIGHTNESS_RANGE, INSTRUMENTS, LOCATIONS, LOUDNESS_DB, LOUDNESS_DB_RANGE,
                     LOUDNESS_NOISE_DB, LOUDNESS_SIZE_DB, MIN_RUN, N_COLS, N_ROWS, REGISTER_AGREEMENT,
                     SIZE_RANGE, VIDEO_NOISE, SynthConfig, _N_FRAMES)

FINISHES: Tuple[str, ...] = ("light", "dark")        # version 2: how an instrument looks ...
REGISTERS: Tuple[str, ...] = ("high", "low")         # ... and the register it plays in


@dataclass(frozen=True)
class Source:
    """One instrument of a clip (visible or off-screen)."""
    name: str                        # one of INSTRUMENTS
    column: int                      # 0..2 (left / middle / right); -1 when off-screen
    row: int                         # 0..1; -1 when off-screen
    size: float                      # drawing scale in SIZE_RANGE (nearness; 1.0 for off-screen)
    sounding: Tuple[bool, ...]       # T flags: the segments in which it plays
    loudness: float                  # RMS render() realises over its sounding segments
    finish: Optional[str] = None     # version 2, visible ones: "light" | "dark" (None: version 1's look)
    register: Optional[str] = None   # version 2: "high" | "low" half of its pitch range (None: all of it)

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
            "sources": [_source_dict(s) for s in self.sources],
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
                       tuple(bool(x) for x in s["sounding"]), float(s["loudness"]),
                       s.get("finish"), s.get("register"))
                for s in d["sources"]
            ),
            jitter=tuple((int(a), int(b)) for a, b in d["jitter"]),
            brightness=tuple(float(b) for b in d["brightness"]),
            background=int(d["background"]),
            video_noise=float(d["video_noise"]),
            audio_noise=float(d["audio_noise"]),
        )


def _source_dict(s: Source) -> dict:
    d = {"name": s.name, "column": s.column, "row": s.row, "size": s.size,
         "sounding": [int(bool(x)) for x in s.sounding], "loudness": s.loudness}
    for key in ("finish", "register"):            # version 1's scenes stay as they were
        if getattr(s, key) is not None:
            d[key] = getattr(s, key)
    return d


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

    Version 2 then draws, after everything version 1 draws, each visible instrument's finish
    (light / dark, even odds) and every instrument's register: the low register with chance
    REGISTER_AGREEMENT for a dark finish, 1 - REGISTER_AGREEMENT for a light one, and even odds
    off-screen. So the audio predicts a finish imperfectly.
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
    if cfg.version >= 2:
        sources = [_sample_attributes(rng, s) for s in sources]
    return Scene(
        sources=tuple(sources),
        jitter=tuple((int(a), int(b)) for a, b in jitter),
        brightness=tuple(float(b) for b in np.round(brightness, 4)),
        background=int(rng.integers(0, 2 ** 31 - 1)),
        video_noise=VIDEO_NOISE,
        audio_noise=float(cfg.audio_noise),
    )


def _sample_attributes(rng: np.random.Generator, src: Source) -> Source:
    """Version 2's finish and register of one instrument."""
    if not src.visible:
        return dataclasses.replace(src, register=REGISTERS[int(rng.random() < 0.5)])
    dark = bool(rng.random() < 0.5)
    agree = bool(rng.random() < REGISTER_AGREEMENT)
    low = dark == agree
    return dataclasses.replace(src, finish=FINISHES[int(dark)], register=REGISTERS[int(low)])


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
