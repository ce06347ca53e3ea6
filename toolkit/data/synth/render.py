"""Render a scene into frames and audio."""
from typing import Tuple

import numpy as np

from avqa_edge.runtime.signal import T_SEGMENTS

from .audio import SOUNDS, _render_audio
from .config import N_COLS, N_ROWS, _N_FRAMES
from .scene import Scene
from .video import _render_video


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
