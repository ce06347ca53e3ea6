"""Constants and configuration of the built-in benchmark generator."""
import dataclasses
from dataclasses import dataclass
from typing import Tuple

from avqa_edge.errors import ConfigError
from avqa_edge.runtime.signal import FRAME_H, FRAME_W, FRAMES_PER_SEGMENT, SEGMENT_SAMPLES, T_SEGMENTS

GENERATOR_VERSION = "1.0"        # version 1's generator, recorded in every run and result made on it
# Benchmark versions (SynthConfig.version): 1 is the original; 2 adds the Visual/Identity and
# Visual/Attribute questions, whose answers the audio predicts imperfectly (see questions.py)
BENCHMARK_VERSIONS: Tuple[int, ...] = (1, 2)

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
# version 2: each visible instrument has a light or dark finish (dark: colour x DARK_FINISH) and
# plays in its low or high register; the register follows the finish (dark: low) with this chance
DARK_FINISH = 0.55
REGISTER_AGREEMENT = 0.8
LARGEST_MARGIN = 0.15                       # "the largest instrument" only asked at this size margin

_F = FRAMES_PER_SEGMENT
_N_FRAMES = T_SEGMENTS * FRAMES_PER_SEGMENT
_N_SAMPLES = T_SEGMENTS * SEGMENT_SAMPLES


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
    version: int = 1                # benchmark version (BENCHMARK_VERSIONS)

    def __post_init__(self):
        if self.version not in BENCHMARK_VERSIONS:
            raise ConfigError(f"benchmark version must be one of {BENCHMARK_VERSIONS}, got {self.version!r}")

    def to_dict(self) -> dict:
        """Fields as a dict; version 1 leaves `version` out, so that its cache keys, metas and
        run configs are what they were before the field existed."""
        d = dataclasses.asdict(self)
        if self.version == 1:
            del d["version"]
        return d

    def clips(self, split: str) -> int:
        _check_split(split)
        return {"train": self.train_clips, "val": self.val_clips, "test": self.test_clips}[split]


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def generator_version(cfg: SynthConfig) -> str:
    """The generator version recorded in a split's meta and a run's data spec."""
    return GENERATOR_VERSION if cfg.version == 1 else f"{cfg.version}.0"
