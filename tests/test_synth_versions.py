"""Versions of the built-in benchmark: version 1 stays bit-for-bit what it was."""
import dataclasses
import hashlib
import json

import pytest

from avqa_edge.toolkit.data.synth import SynthConfig, cache_key, generate

# sha256 of (frames, audio, questions, meta) of a small v1 split and its cache key, computed
# with the generator before version 2 existed: every run and result on version 1 depends on them
V1_SPLITS = {
    "train": ("cfd063b6e4a1cc0995ad", "2246a325221763533069f0ee159c0620", 72),
    "val": ("13be3f70870658967393", "f0d9c7e6fc2c5e0a5ccdae55182be91d", 24),
    "test": ("bb02854a32bccb8ff666", "e23c0a60d187017f2131b0bd73b4e065", 24),
}
V1_CFG = SynthConfig(seed=5, train_clips=12, val_clips=4, test_clips=4, questions_per_clip=6)


def split_digest(data) -> str:
    h = hashlib.sha256()
    h.update(data.frames.tobytes())
    h.update(data.audio.tobytes())
    h.update(json.dumps([dataclasses.asdict(q) for q in data.qa]).encode())
    h.update(json.dumps(data.meta, sort_keys=True).encode())
    return h.hexdigest()[:32]


@pytest.mark.parametrize("split", sorted(V1_SPLITS))
def test_version_1_output_is_unchanged(split):
    key, digest, n_questions = V1_SPLITS[split]
    data = generate(V1_CFG, split)
    assert cache_key(V1_CFG, split) == key
    assert len(data.qa) == n_questions
    assert split_digest(data) == digest
