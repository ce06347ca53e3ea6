"""Shared noise and the per-part random streams of a clip."""
from typing import Optional

import numpy as np

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


def _stream(base: int, *key: int) -> np.random.Generator:
    """Independent random stream of one part of a clip (a source's notes, its motion, noise):
    removing or editing one source leaves the rendering of the others unchanged."""
    return np.random.default_rng([base, *key])
