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


# ----------------------------------------------------------------------------- version 2

import numpy as np  # noqa: E402

from avqa_edge.errors import ConfigError  # noqa: E402
from avqa_edge.runtime.signal import FRAMES_PER_SEGMENT, SAMPLE_RATE, T_SEGMENTS  # noqa: E402
from avqa_edge.toolkit.data.synth import (  # noqa: E402
    GENERATOR_VERSION, Scene, Source, candidate_questions, render, sample_scene, template_of,
)
from avqa_edge.toolkit.data.types import BENCHMARK_V2_TYPES, QUESTION_TYPES, benchmark_types  # noqa: E402
from avqa_edge.toolkit.scoring import ANSWERABLE, CLASSIFICATION, LEVELS, answerable_sets  # noqa: E402

T = T_SEGMENTS
V2 = SynthConfig(seed=1, train_clips=8, val_clips=8, test_clips=300, version=2)
STILL = dict(jitter=((0, 0),) * (T * FRAMES_PER_SEGMENT), brightness=(1.0,) * T, background=0)


@pytest.fixture(scope="module")
def v2_split():
    return generate(V2, "test")


def test_version_field_round_trips_and_is_checked():
    assert "version" not in SynthConfig().to_dict(), "version 1 configs stay as they were"
    assert SynthConfig(**V2.to_dict()) == V2 and V2.to_dict()["version"] == 2
    assert cache_key(V2, "test") != cache_key(dataclasses.replace(V2, version=1), "test")
    with pytest.raises(ConfigError, match="version"):
        SynthConfig(version=3)


def test_version_1_scenes_have_no_version_2_attributes():
    scene = sample_scene(np.random.default_rng(0), SynthConfig(max_visible=4))
    assert all(s.finish is None and s.register is None for s in scene.sources)
    assert all("finish" not in d and "register" not in d for d in scene.to_dict()["sources"])


def test_version_2_split_has_its_types_balanced(v2_split):
    assert v2_split.meta["generator_version"] == "2.0" != GENERATOR_VERSION
    types = {q.qtype for q in v2_split.qa}
    assert types == set(benchmark_types(2)) == set(QUESTION_TYPES) | set(BENCHMARK_V2_TYPES)
    per_text = {}
    for q in v2_split.qa:
        if template_of(q.question) in ("v_which", "v_largest", "v_finish"):
            per_text.setdefault(q.question, {}).setdefault(q.answer, 0)
            per_text[q.question][q.answer] += 1
    assert len(per_text) > 8
    for text, counts in per_text.items():    # balanced within each question text
        assert len(counts) >= 2 and max(counts.values()) - min(counts.values()) <= 1, (text, counts)
    scenes = [Scene.from_dict(d) for d in v2_split.meta["scenes"]]
    for q in v2_split.qa:
        scene = scenes[q.clip]
        tid = template_of(q.question)
        if tid == "v_which":
            assert [s.name for s in scene.visible] == [q.answer]
        elif tid == "v_finish":
            assert scene.source(q.question.split()[2]).finish == q.answer
        elif tid == "v_largest":
            assert max(scene.visible, key=lambda s: s.size).name == q.answer


def test_version_2_attributes_follow_their_odds():
    rng = np.random.default_rng(0)
    vis = [s for _ in range(2000) for s in sample_scene(rng, V2).visible]
    assert all(s.finish in ("light", "dark") and s.register in ("low", "high") for s in vis)
    dark = np.array([s.finish == "dark" for s in vis])
    low = np.array([s.register == "low" for s in vis])
    assert abs(dark.mean() - 0.5) < 0.03
    assert abs((dark == low).mean() - 0.8) < 0.03, "the register follows the finish with chance 0.8"
    scene = Scene.from_dict(sample_scene(np.random.default_rng(3), V2).to_dict())
    assert scene == sample_scene(np.random.default_rng(3), V2)


def test_largest_is_asked_only_with_a_clear_margin():
    a = Source("piano", 0, 0, 1.2, (True,) * T, 0.05, "light", "high")
    b = Source("drum", 1, 0, 1.1, (True,) * T, 0.05, "dark", "low")
    scene = Scene((a, b), **STILL)
    assert "Which is the largest instrument in the video?" not in dict(
        (q, x) for q, x, _ in candidate_questions(scene, 2))
    scene = Scene((dataclasses.replace(a, size=1.26), b), **STILL)
    qs = {q: x for q, x, _ in candidate_questions(scene, 2)}
    assert qs["Which is the largest instrument in the video?"] == "piano"
    assert qs["Is the drum light or dark?"] == "dark" and qs["Is the piano light or dark?"] == "light"
    assert not any(template_of(q) in ("v_finish", "v_largest") for q, _, _ in candidate_questions(scene, 1))


def test_a_dark_finish_darkens_only_its_instrument():
    light = Source("trumpet", 1, 0, 1.2, (False,) * T, 0.05, "light", "high")
    other = Source("violin", 0, 1, 1.0, (False,) * T, 0.05, "light", "high")
    scene = Scene((light, other), video_noise=0.0, **STILL)
    f1, _ = render(scene, np.random.default_rng(0))
    dark = Scene((dataclasses.replace(light, finish="dark"), other), video_noise=0.0, **STILL)
    f2, _ = render(dark, np.random.default_rng(0))
    diff = np.abs(f1.astype(int) - f2.astype(int)).sum(-1)[0, 0]          # (H, W)
    ys, xs = np.nonzero(diff)
    assert len(ys) and ys.max() < 16 and 16 <= xs.min() and xs.max() < 32, "only the trumpet's cell changes"
    assert f2[0, 0, :16, 16:32].mean() < f1[0, 0, :16, 16:32].mean()


@pytest.mark.parametrize("name", ["piano", "cello", "flute"])
def test_low_register_sounds_lower(name):
    def centroid(register):
        src = Source(name, -1, -1, 1.0, (True,) * T, 0.1, None, register)
        _, w = render(Scene((src,), audio_noise=0.0, **STILL), np.random.default_rng(5))
        spec = np.abs(np.fft.rfft(w)) ** 2
        freq = np.fft.rfftfreq(len(w), 1.0 / SAMPLE_RATE)
        return (spec * freq).sum() / spec.sum()
    assert centroid("low") < 0.9 * centroid("high")


def test_classification_covers_every_type_of_each_version():
    assert answerable_sets(1) == ANSWERABLE, "version 1's gap figures keep their sets"
    for version in (1, 2):
        for scen, row in CLASSIFICATION[version].items():
            assert list(row) == list(benchmark_types(version)), (version, scen)
            assert all(level in LEVELS and why for level, why in row.values())
    assert set(answerable_sets(2, "partly")["visual_missing"]) >= set(BENCHMARK_V2_TYPES)
    assert set(answerable_sets(2)["audio_missing"]) >= set(BENCHMARK_V2_TYPES)
