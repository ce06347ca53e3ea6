"""Rendering video: each instrument's look, the textured background, motion and the camera."""
from typing import Dict, Optional, Tuple

import numpy as np

from avqa_edge.runtime.signal import FRAME_H, FRAME_W, T_SEGMENTS

from .config import CELL, DARK_FINISH, INSTRUMENTS, _F, _N_FRAMES
from .noise import _noise_bank, _stream
from .scene import Scene

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
_SPRITES: Dict[Tuple[str, int, Optional[str]], Tuple[np.ndarray, np.ndarray]] = {}
_GRID = np.arange(CELL, dtype=np.float64) - (CELL - 1) / 2.0   # pixel centres of a cell


def _sprite(name: str, size: float, finish: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(rgb (16,16,3) float32 of 0..255 integers, mask (16,16) bool), centred in a cell.
    A dark finish (version 2) scales the colour by DARK_FINISH; None and "light" keep it."""
    q = int(round(size * 40))                      # sizes quantised to 0.025
    key = (name, q, finish)
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
    if finish == "dark":
        shade = shade * DARK_FINISH
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
    sprites = [_sprite(s.name, s.size, s.finish) for s in vis]

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
