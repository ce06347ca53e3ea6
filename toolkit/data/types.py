"""Data shared by the built-in benchmark, MUSIC-AVQA and custom manifests.

A split is a list of question records (QA) over a set of clips. Raw splits hold video
frames and audio waveforms (built-in benchmark, custom data); feature splits hold
pre-extracted MUSIC-AVQA features.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

# MUSIC-AVQA's nine question types, "Modality/Kind".
QUESTION_TYPES: Tuple[str, ...] = (
    "Audio/Counting", "Audio/Comparative",
    "Visual/Counting", "Visual/Location",
    "Audio-Visual/Existential", "Audio-Visual/Location", "Audio-Visual/Counting",
    "Audio-Visual/Comparative", "Audio-Visual/Temporal",
)
# The question types version 2 of the built-in benchmark adds (not MUSIC-AVQA's): questions that
# need the video but whose answer the audio predicts imperfectly (toolkit/data/synth/questions.py)
BENCHMARK_V2_TYPES: Tuple[str, ...] = ("Visual/Identity", "Visual/Attribute")


def benchmark_types(version: int) -> Tuple[str, ...]:
    """The question types of a built-in benchmark version, in table order."""
    return QUESTION_TYPES if version == 1 else QUESTION_TYPES + BENCHMARK_V2_TYPES


@dataclass
class QA:
    clip: int        # index of the clip in its split
    question: str    # plain text, placeholders filled in
    answer: str
    qtype: str       # one of QUESTION_TYPES, a BENCHMARK_V2_TYPES type, or a custom data set's own name


@dataclass
class RawSplit:
    """Clips as raw signals, at the constants of avqa_edge.runtime.signal."""
    frames: np.ndarray           # (N, T, F, H, W, 3) uint8 RGB, F frames per one-second segment
    audio: np.ndarray            # (N, T * SEGMENT_SAMPLES) int16 mono PCM at SAMPLE_RATE
    qa: List[QA]
    meta: Dict = field(default_factory=dict)   # generator version, seed, sizes, source

    def __len__(self) -> int:
        return len(self.qa)


@dataclass
class FeatureSplit:
    """Pre-extracted features (MUSIC-AVQA: VGGish audio, ResNet-18 visual maps)."""
    audio: np.ndarray            # (N, T, 128) float32
    visual: np.ndarray           # (N, T, 512, 14, 14) float16 or float32 (may be a memmap)
    qa: List[QA]
    meta: Dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.qa)
