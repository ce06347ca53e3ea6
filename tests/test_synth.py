"""Property tests of the built-in benchmark generator (avqa_edge.toolkit.data.synth)."""
import dataclasses
import hashlib
import os

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from avqa_edge.runtime.signal import (
    FRAME_H, FRAME_W, FRAMES_PER_SEGMENT, SEGMENT_SAMPLES, T_SEGMENTS, log_mel, pcm16_to_float,
)
from avqa_edge.runtime.text import MAX_QUESTION_TOKENS, tokenize
from avqa_edge.toolkit.data.synth import (
    GENERATOR_VERSION, INSTRUMENTS, LOCATIONS, Scene, Source, SynthConfig,
    candidate_questions, generate, render, sample_scene, template_of,
)
from avqa_edge.toolkit.data.types import QUESTION_TYPES, RawSplit

CFG = SynthConfig(seed=0)
# more off-screen instruments, so the properties see them often
CFG_OFF = SynthConfig(seed=0, p_offscreen=0.5)
SEEDS = st.integers(min_value=0, max_value=2 ** 32 - 1)
PROPS = settings(max_examples=40, deadline=None)
T = T_SEGMENTS


def scene_of(seed, cfg=CFG_OFF) -> Scene:
    return sample_scene(np.random.default_rng(seed), cfg)


def answers(scene) -> dict:
    out = {}
    for q, a, t in candidate_questions(scene):
        assert q not in out, f"question asked twice: {q}"
        out[q] = a
    return out


def without(scene, src) -> Scene:
    return dataclasses.replace(scene, sources=tuple(s for s in scene.sources if s is not src))


def replaced(scene, src, **changes) -> Scene:
    new = dataclasses.replace(src, **changes)
    return dataclasses.replace(scene, sources=tuple(new if s is src else s for s in scene.sources))


def run(onset, length):
    return tuple(onset <= t < onset + length for t in range(T))


def still(scene) -> Scene:
    """No camera jitter, no pixel noise, constant light."""
    return dataclasses.replace(scene, jitter=((0, 0),) * (T * FRAMES_PER_SEGMENT),
                               brightness=(1.0,) * T, video_noise=0.0)


def cell_core(frames, src, t, k, margin=4):
    """Central pixels of an instrument's cell (neighbours' motion cannot reach them)."""
    y, x = src.row * 16, src.column * 16
    return frames[t, k, y + margin:y + 16 - margin, x + margin:x + 16 - margin].astype(int)


@pytest.fixture(scope="module")
def split() -> RawSplit:
    return generate(SynthConfig(seed=7, test_clips=400), "test")


# ----------------------------------------------------------------------------- API / format

def test_catalogue():
    assert len(INSTRUMENTS) == 8 == len(set(INSTRUMENTS))
    assert all(n.isalpha() and n.islower() for n in INSTRUMENTS)
    assert LOCATIONS == ("left", "middle", "right")
    assert SynthConfig().to_dict()["questions_per_clip"] == 6


def test_shapes_dtypes_meta(split):
    n = 400
    assert split.frames.shape == (n, T, FRAMES_PER_SEGMENT, FRAME_H, FRAME_W, 3)
    assert split.frames.dtype == np.uint8
    assert split.audio.shape == (n, T * SEGMENT_SAMPLES) and split.audio.dtype == np.int16
    assert split.meta["generator_version"] == GENERATOR_VERSION
    assert split.meta["seed"] == 7 and split.meta["config"]["test_clips"] == n
    assert all(0 <= q.clip < n for q in split.qa)
    # on average close to questions_per_clip, never more
    assert 4 * n <= len(split.qa) <= 6 * n
    counts = {}
    for q in split.qa:
        counts.setdefault(q.qtype, {}).setdefault(q.answer, 0)
        counts[q.qtype][q.answer] += 1
    assert split.meta["answer_counts"] == {t: dict(sorted(counts[t].items())) for t in QUESTION_TYPES}


def test_every_type_present_and_answers_valid(split):
    assert {q.qtype for q in split.qa} == set(QUESTION_TYPES)
    vocab = {str(i) for i in range(5)} | {"yes", "no"} | set(LOCATIONS) | set(INSTRUMENTS)
    for q in split.qa:
        assert q.answer in vocab
        assert len(tokenize(q.question)) <= min(14, MAX_QUESTION_TOKENS)
        template_of(q.question)           # every question comes from a template


def test_answers_balanced(split):
    per_template, per_question = {}, {}
    for q in split.qa:
        tid = template_of(q.question)
        per_template.setdefault(tid, {}).setdefault(q.answer, 0)
        per_template[tid][q.answer] += 1
        per_question.setdefault(q.question, {}).setdefault(q.answer, 0)
        per_question[q.question][q.answer] += 1
    assert len(per_template) == 13
    for tid, c in per_template.items():
        assert len(c) >= 2, tid
        assert max(c.values()) <= 1.5 * min(c.values()), (tid, c)
    # the question text alone is no shortcut: within one text, answers differ by at most one
    for text, c in per_question.items():
        assert len(c) >= 2 and max(c.values()) - min(c.values()) <= 1, (text, c)
    # e.g. "Is the <X> playing?" is ~50/50 for every X
    for name in INSTRUMENTS:
        c = per_question[f"Is the {name} playing?"]
        assert abs(c["yes"] - c["no"]) <= 1


def test_deterministic():
    cfg = SynthConfig(seed=3, val_clips=12)
    a, b = generate(cfg, "val"), generate(cfg, "val")
    assert a.frames.tobytes() == b.frames.tobytes()
    assert a.audio.tobytes() == b.audio.tobytes()
    assert a.qa == b.qa and a.meta == b.meta
    c = generate(SynthConfig(seed=4, val_clips=12), "val")
    assert c.audio.tobytes() != a.audio.tobytes()
    s = scene_of(11)
    f1, w1 = render(s, np.random.default_rng(5))
    f2, w2 = render(s, np.random.default_rng(5))
    assert np.array_equal(f1, f2) and np.array_equal(w1, w2)


def test_splits_disjoint():
    cfg = SynthConfig(seed=1, train_clips=40, val_clips=20, test_clips=20)
    seen = {}
    for name in ("train", "val", "test"):
        d = generate(cfg, name)
        for i in range(len(d.audio)):
            for key in (hashlib.sha1(d.audio[i].tobytes()).hexdigest(),
                        hashlib.sha1(d.frames[i].tobytes()).hexdigest()):
                assert key not in seen, f"{name} clip {i} duplicates {seen[key]}"
                seen[key] = (name, i)
    with pytest.raises(ValueError):
        generate(cfg, "dev")


def test_cache_roundtrip(tmp_path):
    cfg = SynthConfig(seed=2, test_clips=6)
    a = generate(cfg, "test", cache_dir=str(tmp_path))
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".npz")
    with np.load(tmp_path / files[0], allow_pickle=False) as z:      # no pickle inside
        assert z["frames"].shape == a.frames.shape
    b = generate(cfg, "test", cache_dir=str(tmp_path))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert a.qa == b.qa and a.meta == b.meta
    generate(dataclasses.replace(cfg, audio_noise=0.02), "test", cache_dir=str(tmp_path))
    assert len(os.listdir(tmp_path)) == 2                              # keyed by the config


# ----------------------------------------------------------------------------- scenes

def test_scene_sampling_statistics():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, CFG) for _ in range(2000)]
    vis = [s for sc in scenes for s in sc.visible]
    n_vis = np.bincount([len(sc.visible) for sc in scenes], minlength=5)
    assert len(n_vis) == 5 and n_vis.min() > 320                  # 0..4 visible, ~uniform
    assert 0.70 < np.mean([s.sounds for s in vis]) < 0.80          # p_visible_sounds
    with_off = np.mean([len(sc.offscreen) > 0 for sc in scenes])
    assert 0.08 < with_off < 0.15
    corr = np.corrcoef([s.size for s in vis], [np.log(s.loudness) for s in vis])[0, 1]
    assert 0.35 < corr < 0.65                                      # nearer is louder, loosely
    for sc in scenes:
        cells = [(s.column, s.row) for s in sc.visible]
        assert len(set(cells)) == len(cells)
        assert len({s.name for s in sc.sources}) == len(sc.sources)
        assert all(not s.sounds or s.duration >= 2 for s in sc.sources)
        assert all(s.sounds for s in sc.offscreen)
        assert len(sc.sounding) <= 4


# ----------------------------------------------------------------------------- question types

@PROPS
@given(SEEDS)
def test_audio_and_av_counting_drop_when_a_sounding_instrument_is_removed(seed):
    scene = scene_of(seed)
    assume(scene.sounding)
    before = answers(scene)
    for src in scene.sounding:
        after = answers(without(scene, src))
        a_q, av_q = "How many instruments are sounding?", "How many instruments in the video are playing?"
        assert int(after[a_q]) == int(before[a_q]) - 1
        assert int(after[av_q]) == int(before[av_q]) - (1 if src.visible else 0)


@PROPS
@given(SEEDS)
def test_silence_answers_no(seed):
    scene = scene_of(seed)
    quiet = dataclasses.replace(scene, sources=tuple(
        dataclasses.replace(s, sounding=(False,) * T) for s in scene.sources))
    ans = answers(quiet)
    assert ans["How many instruments are sounding?"] == "0"
    assert ans["How many instruments in the video are playing?"] == "0"
    for s in scene.visible:
        assert ans[f"Is the {s.name} playing?"] == "no"
    assert not any(t in ("Audio/Comparative", "Audio-Visual/Comparative", "Audio-Visual/Temporal")
                   for _, _, t in candidate_questions(quiet))
    _, audio = render(quiet, np.random.default_rng(0))
    assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) < 2 * quiet.audio_noise


@PROPS
@given(SEEDS)
def test_existential_follows_sounding(seed):
    scene = scene_of(seed)
    assume(scene.visible)
    src = scene.visible[0]
    ans = answers(scene)
    assert ans[f"Is the {src.name} playing?"] == ("yes" if src.sounds else "no")
    flipped = replaced(scene, src, sounding=(False,) * T if src.sounds else run(2, 4))
    assert answers(flipped)[f"Is the {src.name} playing?"] == ("no" if src.sounds else "yes")
    for s in scene.offscreen + [n for n in INSTRUMENTS if n not in {x.name for x in scene.sources}]:
        name = s if isinstance(s, str) else s.name
        assert f"Is the {name} playing?" not in ans                  # only visible ones are asked


@PROPS
@given(SEEDS)
def test_visual_counting_drops_when_a_visible_instrument_is_removed(seed):
    scene = scene_of(seed)
    assume(scene.visible)
    q = "How many instruments are in the video?"
    n = int(answers(scene)[q])
    assert n == len(scene.visible)
    assert int(answers(without(scene, scene.visible[-1]))[q]) == n - 1
    for s in scene.offscreen:                   # off-screen instruments are not in the video
        assert int(answers(without(scene, s))[q]) == n


@PROPS
@given(SEEDS)
def test_visual_location_follows_placement(seed):
    scene = scene_of(seed)
    assume(scene.visible)
    src = scene.visible[0]
    q = f"Where is the {src.name}?"
    assert answers(scene)[q] == LOCATIONS[src.column]
    free = [(c, r) for c in range(3) for r in range(2)
            if c != src.column and (c, r) not in {(s.column, s.row) for s in scene.visible}]
    assume(free)
    c, r = free[0]
    moved = replaced(scene, src, column=c, row=r)
    assert answers(moved)[q] == LOCATIONS[c] != LOCATIONS[src.column]
    # "What is the instrument on the <loc>?" names the only instrument of that column
    for ans_scene in (scene, moved):
        ans = answers(ans_scene)
        for col, loc in enumerate(LOCATIONS):
            there = [s for s in ans_scene.visible if s.column == col]
            key = f"What is the instrument on the {loc}?"
            if len(there) == 1:
                assert ans[key] == there[0].name
            else:
                assert key not in ans


@PROPS
@given(SEEDS)
def test_audio_comparative_flips_when_loudness_or_length_is_swapped(seed):
    scene = scene_of(seed)
    assume(len(scene.sounding) >= 2)
    x, y = scene.sounding[:2]
    q = f"Is the {x.name} louder than the {y.name}?"
    ans = answers(scene)
    ratio = max(x.loudness, y.loudness) / min(x.loudness, y.loudness)
    if ratio < 1.5:
        assert q not in ans                        # too close to call: not asked
        x2 = replaced(scene, x, loudness=y.loudness * 2.0)
        assert answers(x2)[q] == "yes"
        return
    assert ans[q] == ("yes" if x.loudness > y.loudness else "no")
    swapped = replaced(replaced(scene, x, loudness=y.loudness), y, loudness=x.loudness)
    assert answers(swapped)[q] == ("no" if ans[q] == "yes" else "yes")
    # length: x plays 8 segments, y 2 -> yes; swapped -> no
    ql = f"Does the {x.name} play longer than the {y.name}?"
    sc = scene_of(seed)
    xs, ys = sc.sounding[:2]
    longer = replaced(replaced(sc, xs, sounding=run(1, 8)), ys, sounding=run(3, 2))
    shorter = replaced(replaced(sc, xs, sounding=run(3, 2)), ys, sounding=run(1, 8))
    assert answers(longer)[ql] == "yes" and answers(shorter)[ql] == "no"
    even = replaced(replaced(sc, xs, sounding=run(1, 4)), ys, sounding=run(5, 5))
    assert ql not in answers(even)


@PROPS
@given(SEEDS)
def test_av_location_of_the_sounding_and_the_loudest(seed):
    scene = scene_of(seed)
    assume(len(scene.visible) >= 2)
    target, other = scene.visible[0], scene.visible[1]
    # only the target sounds among the visible ones
    solo = dataclasses.replace(scene, sources=tuple(
        s if (s is target or not s.visible) else dataclasses.replace(s, sounding=(False,) * T)
        for s in scene.sources))
    solo = replaced(solo, solo.visible[0], sounding=run(0, 5))
    assert answers(solo)["Where is the sounding instrument?"] == LOCATIONS[target.column]
    # make the target far louder than everybody else -> it is the loudest
    loud = max(s.loudness for s in scene.sources) * 3
    sc = replaced(scene, target, sounding=run(0, 6), loudness=loud)
    sc = replaced(sc, sc.visible[1], sounding=run(2, 5))
    assert answers(sc)["Where is the loudest instrument?"] == LOCATIONS[target.column]
    # an off-screen instrument louder still: the loudest cannot be located
    off = Source(next(n for n in INSTRUMENTS if n not in {s.name for s in sc.sources}),
                 -1, -1, 1.0, run(0, 4), loud * 3)
    sc_off = dataclasses.replace(sc, sources=tuple(s for s in sc.sources if s.visible) + (off,))
    assert "Where is the loudest instrument?" not in answers(sc_off)
    # two visible sounding instruments: no single "sounding instrument"
    assert "Where is the sounding instrument?" not in answers(sc)


@PROPS
@given(SEEDS)
def test_av_comparative_flips_with_swapped_loudness(seed):
    scene = scene_of(seed)
    cols = {}
    for s in scene.visible:
        cols.setdefault(s.column, []).append(s)
    single = sorted(c for c, v in cols.items() if len(v) == 1)
    assume(len(single) >= 2)
    a, b = cols[single[0]][0], cols[single[1]][0]
    sc = replaced(scene, a, sounding=run(0, 5), loudness=0.2)
    sc = replaced(sc, sc.sources[scene.sources.index(b)], sounding=run(3, 5), loudness=0.05)
    q = f"Is the instrument on the {LOCATIONS[a.column]} louder than the instrument on the {LOCATIONS[b.column]}?"
    assert answers(sc)[q] == "yes"
    a2, b2 = sc.sources[scene.sources.index(a)], sc.sources[scene.sources.index(b)]
    swapped = replaced(replaced(sc, a2, loudness=0.05), b2, loudness=0.2)
    assert answers(swapped)[q] == "no"
    silent_b = replaced(sc, b2, sounding=(False,) * T)
    assert q not in answers(silent_b)


@PROPS
@given(SEEDS)
def test_temporal_first_onset(seed):
    scene = scene_of(seed)
    assume(len(scene.visible) >= 1 and len(scene.sounding) >= 1)
    target = scene.visible[-1]
    # everyone else starts at segment >= 2; the target starts at 0 -> it plays first
    others = [dataclasses.replace(s, sounding=run(max(s.onset, 2), max(2, min(s.duration, T - 2))))
              if s.sounds and s is not target else s for s in scene.sources]
    sc = dataclasses.replace(scene, sources=tuple(
        dataclasses.replace(target, sounding=run(0, 3)) if s is target else s for s in others))
    assume(len(sc.sounding) >= 2)
    ans = answers(sc)
    assert ans["Which instrument plays first?"] == target.name
    assert ans["Where is the first sounding instrument?"] == LOCATIONS[target.column]
    # a tie for the first onset: not asked
    rival = next(s for s in sc.sounding if s.name != target.name)
    tie = replaced(sc, rival, sounding=run(0, 4))
    assert "Which instrument plays first?" not in answers(tie)


# ----------------------------------------------------------------------------- rendering

@settings(max_examples=25, deadline=None)
@given(SEEDS)
def test_sounding_instruments_move_silent_ones_do_not(seed):
    scene = still(scene_of(seed, CFG))
    assume(scene.visible)
    frames, _ = render(scene, np.random.default_rng(seed))
    for src in scene.visible:
        for t in range(T):
            a, b = cell_core(frames, src, t, 0), cell_core(frames, src, t, 1)
            # a silent instrument is static in its centre; a sounding one moves 1-2 px
            if src.sounding[t]:
                full_a = frames[t, 0, src.row * 16:src.row * 16 + 16, src.column * 16:src.column * 16 + 16]
                full_b = frames[t, 1, src.row * 16:src.row * 16 + 16, src.column * 16:src.column * 16 + 16]
                assert np.abs(full_a.astype(int) - full_b.astype(int)).sum() > 0
            else:
                assert np.array_equal(a, b)


def test_jitter_is_a_global_shift_and_motion_survives_it():
    rng = np.random.default_rng(0)
    src_silent = Source("drum", 1, 0, 1.0, (False,) * T, 0.05)
    src_playing = Source("piano", 0, 1, 1.0, run(0, T), 0.05)
    jit = tuple((int(a), int(b)) for a, b in rng.integers(-1, 2, size=(T * FRAMES_PER_SEGMENT, 2)))
    scene = Scene((src_silent, src_playing), jit, (1.0,) * T, background=3, video_noise=0.0)
    frames, _ = render(scene, rng)
    moved = 0
    for t in range(T):
        (dy0, dx0), (dy1, dx1) = jit[2 * t], jit[2 * t + 1]
        a = frames[t, 0, 2:30, 2:46].astype(int)
        # compensate the camera: shift frame 1 back by the jitter difference
        # (the camera moves by (dy, dx), so the content moves by (-dy, -dx))
        b = frames[t, 1, 2 + dy0 - dy1:30 + dy0 - dy1, 2 + dx0 - dx1:46 + dx0 - dx1].astype(int)
        silent_cell = (slice(2, 12), slice(16, 28))      # drum, centre-top (in the cropped view)
        playing_cell = (slice(16, 28), slice(0, 12))     # piano, left-bottom
        assert np.array_equal(a[silent_cell], b[silent_cell])
        moved += int(not np.array_equal(a[playing_cell], b[playing_cell]))
    assert moved == T


def test_lighting_and_noise_are_present():
    scene = scene_of(5, CFG)
    frames, _ = render(scene, np.random.default_rng(0))
    means = frames.reshape(T, -1).mean(1)
    assert means.max() / means.min() > 1.03                     # lighting changes per segment
    quiet = dataclasses.replace(still(scene), sources=())
    f, _ = render(quiet, np.random.default_rng(0))
    assert f[0, 0].std() > 3                                    # textured background
    assert np.array_equal(f[0, 0], f[5, 1])                     # ...static without noise/jitter


@PROPS
@given(SEEDS)
def test_instrument_pixels_are_in_its_cell(seed):
    scene = still(scene_of(seed, CFG))
    assume(scene.visible)
    src = scene.visible[0]
    f_with, _ = render(scene, np.random.default_rng(1))
    f_without, _ = render(without(scene, src), np.random.default_rng(1))
    diff = np.abs(f_with.astype(int) - f_without.astype(int)).sum(axis=(0, 1, 4)) > 0   # (H, W)
    ys, xs = np.nonzero(diff)
    assert len(ys) > 0
    # only around its cell (+ up to 2 px motion), and the column is its location answer
    assert ys.min() >= src.row * 16 - 2 and ys.max() < src.row * 16 + 18
    assert xs.min() >= src.column * 16 - 2 and xs.max() < src.column * 16 + 18
    assert LOCATIONS[int(np.median(xs)) // 16] == answers(scene)[f"Where is the {src.name}?"]


def seg_rms(audio):
    return np.sqrt((audio.astype(np.float64).reshape(T, SEGMENT_SAMPLES) ** 2).mean(1))


@pytest.mark.parametrize("name", INSTRUMENTS)
def test_sounding_segments_are_louder_and_loudness_is_realised(name):
    src = Source(name, 0, 0, 1.0, run(3, 4), 0.08)
    scene = Scene((src,), ((0, 0),) * (T * FRAMES_PER_SEGMENT), (1.0,) * T, 0, audio_noise=0.01)
    _, audio = render(scene, np.random.default_rng(0))
    assert audio.dtype == np.float32 and np.abs(audio).max() <= 1.0
    rms = seg_rms(audio)
    assert rms[3:7].min() > 3 * rms[:3].max() and rms[3:7].min() > 3 * rms[7:].max()
    # RMS over the sounding segments = the scene's loudness (plus a little room noise)
    on = np.sqrt(np.mean(audio[3 * SEGMENT_SAMPLES:7 * SEGMENT_SAMPLES].astype(np.float64) ** 2))
    assert on == pytest.approx(np.sqrt(0.08 ** 2 + 0.01 ** 2), rel=0.05)
    quiet = dataclasses.replace(scene, audio_noise=0.0)
    _, clean = render(quiet, np.random.default_rng(1))
    assert seg_rms(clean)[:3].max() == 0.0
    assert np.sqrt(np.mean(clean[3 * SEGMENT_SAMPLES:7 * SEGMENT_SAMPLES] ** 2)) == pytest.approx(0.08, rel=1e-3)


def test_relative_loudness_kept_when_the_peak_is_limited():
    loud = Scene((Source("cello", 0, 0, 1.0, run(0, 3), 0.6), Source("flute", 1, 0, 1.0, run(5, 3), 0.2)),
                 ((0, 0),) * (T * FRAMES_PER_SEGMENT), (1.0,) * T, 0, audio_noise=0.0)
    _, audio = render(loud, np.random.default_rng(0))
    assert np.abs(audio).max() <= 0.95 + 1e-6
    rms = seg_rms(audio)
    ratio = np.sqrt(np.mean(rms[0:3] ** 2)) / np.sqrt(np.mean(rms[5:8] ** 2))
    assert ratio == pytest.approx(3.0, rel=1e-3)


def test_audio_is_mono_location_cannot_be_heard():
    a = Source("violin", 0, 0, 1.0, run(0, T), 0.05)
    s1 = Scene((a,), ((0, 0),) * (T * FRAMES_PER_SEGMENT), (1.0,) * T, 0)
    s2 = replaced(s1, a, column=2, row=1)
    _, w1 = render(s1, np.random.default_rng(4))
    _, w2 = render(s2, np.random.default_rng(4))
    assert w1.ndim == 1 and np.array_equal(w1, w2)


def test_timbres_are_distinguishable_in_log_mel():
    """Nearest centroid on per-clip log-mel statistics separates the eight instruments."""
    def feature(name, seed, loud):
        src = Source(name, -1, -1, 1.0, (True,) * T, loud)
        sc = Scene((src,), ((0, 0),) * (T * FRAMES_PER_SEGMENT), (1.0,) * T, 0, audio_noise=0.01)
        _, w = render(sc, np.random.default_rng(seed))
        lm = log_mel(w.reshape(T, SEGMENT_SAMPLES))               # (T, 32, 61)
        spec = lm.mean(axis=(0, 2))
        return np.concatenate([spec - spec.mean(), lm.std(axis=2).mean(0),
                               np.abs(np.diff(lm, axis=2)).mean(axis=(0, 2))])
    train = {n: np.mean([feature(n, s, l) for s, l in ((0, 0.03), (1, 0.1))], axis=0)
             for n in INSTRUMENTS}
    hits = 0
    for n in INSTRUMENTS:
        x = feature(n, 99, 0.06)
        hits += min(INSTRUMENTS, key=lambda m: np.sum((x - train[m]) ** 2)) == n
    assert hits == len(INSTRUMENTS)


def test_generated_audio_matches_scenes(split):
    """Stored scenes (meta) explain the stored audio: silent-everywhere clips are quiet."""
    scenes = [Scene.from_dict(d) for d in split.meta["scenes"]]
    for i, sc in enumerate(scenes[:60]):
        rms = seg_rms(pcm16_to_float(split.audio[i]))
        active = np.zeros(T, bool)
        for s in sc.sounding:
            active |= np.asarray(s.sounding)
        if active.any() and (~active).any():
            assert rms[active].mean() > rms[~active].mean()
        if not active.any():
            assert rms.max() < 0.03


@settings(max_examples=20, deadline=None)
@given(SEEDS)
def test_loudness_is_the_rms_of_the_instruments_own_signal(seed):
    """mix(scene) - mix(scene without X) is X's own signal: zero where X is silent, RMS over
    its sounding segments = X.loudness (the ground truth the questions use)."""
    scene = dataclasses.replace(scene_of(seed), audio_noise=0.0)
    assume(scene.sounding)
    src = scene.sounding[0]
    _, full = render(scene, np.random.default_rng(seed))
    _, rest = render(without(scene, src), np.random.default_rng(seed))
    assume(np.abs(full).max() < 0.95 and np.abs(rest).max() < 0.95)    # no peak limiting
    own = (full.astype(np.float64) - rest).reshape(T, SEGMENT_SAMPLES)
    on = np.asarray(src.sounding)
    assert (~on).sum() == 0 or np.abs(own[~on]).max() < 1e-6   # silent where it is silent (if ever)
    assert np.sqrt(np.mean(own[on] ** 2)) == pytest.approx(src.loudness, rel=1e-3)


@PROPS
@given(SEEDS)
def test_segment_labels_follow_the_scene(seed):
    from avqa_edge.toolkit.data.synth import segment_labels
    scene = scene_of(seed)
    lab = segment_labels(scene)
    assert lab["sounding"].shape == lab["level"].shape == (T, len(INSTRUMENTS))
    named = {INSTRUMENTS.index(s.name): s for s in scene.sources}
    for k in range(len(INSTRUMENTS)):
        src = named.get(k)
        playing = np.asarray(src.sounding if src else (False,) * T, np.float32)
        np.testing.assert_array_equal(lab["sounding"][:, k], playing)
        assert np.all(lab["level"][playing == 0, k] == 0)
    # a louder source gets a larger level wherever it plays
    playing = [s for s in scene.sources if s.sounds]
    for a in playing:
        for b in playing:
            if a.loudness > b.loudness:
                ka, kb = INSTRUMENTS.index(a.name), INSTRUMENTS.index(b.name)
                assert lab["level"][a.onset, ka] > lab["level"][b.onset, kb]
    # cells: visible instruments where they are drawn; they move exactly when they play
    expect = np.zeros((2, 3), np.int64)
    for s in scene.visible:
        expect[s.row, s.column] = 1 + INSTRUMENTS.index(s.name)
        np.testing.assert_array_equal(lab["moving"][:, s.row, s.column], np.asarray(s.sounding, np.float32))
    assert (lab["cell"] == expect).all()
    assert lab["moving"][:, expect == 0].sum() == 0
    # removing a playing instrument clears its labels and leaves the others alone
    if playing:
        src = playing[0]
        k = INSTRUMENTS.index(src.name)
        rest = segment_labels(without(scene, src))
        assert rest["sounding"][:, k].sum() == 0
        others = [i for i in range(len(INSTRUMENTS)) if i != k]
        np.testing.assert_array_equal(rest["sounding"][:, others], lab["sounding"][:, others])
