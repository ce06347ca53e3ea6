"""The gap-closed interval that `avqa-edge eval` prints: its maths, pairing and clustering."""
import numpy as np

from avqa_edge.toolkit.scoring import gap_interval

TYPES = ["Audio/Counting"]


def _clips(n_clips, per_clip):
    return np.repeat(np.arange(n_clips), per_clip)


def test_interval_is_exact_when_the_method_matches_complete_or_zero_fill():
    rng = np.random.default_rng(0)
    clips = _clips(300, 3)
    qtypes = np.array(TYPES * len(clips))
    comp = rng.random(len(clips)) < 0.9
    zero = comp & (rng.random(len(clips)) < 0.7)                   # zero_fill loses some of complete's answers
    assert gap_interval(qtypes, clips, comp, zero, comp, TYPES) == (1.0, 1.0)
    assert gap_interval(qtypes, clips, comp, zero, zero, TYPES) == (0.0, 0.0)


def test_interval_covers_the_true_ratio_and_narrows_with_more_clips():
    def interval(n_clips, seed):
        rng = np.random.default_rng(seed)
        clips = _clips(n_clips, 3)
        zero = rng.random(len(clips)) < 0.6
        comp = zero | (rng.random(len(clips)) < 0.5)               # complete recovers about 20 points
        meth = zero | (comp & (rng.random(len(clips)) < 0.5))     # the method about half of those
        qtypes = np.array(TYPES * len(clips))
        return gap_interval(qtypes, clips, comp, zero, meth, TYPES, seed=seed)
    small, large = interval(100, 1), interval(3000, 1)
    assert small[0] < 0.5 < small[1] and large[0] < 0.5 < large[1]
    assert (large[1] - large[0]) < 0.3 * (small[1] - small[0])


def test_interval_resamples_clips_not_questions_and_ignores_other_types():
    rng = np.random.default_rng(2)
    n_clips, per = 200, 5
    # outcomes shared by every question of a clip: clustered, so the interval must be wider
    # than if the same answers came from independent clips
    zero = np.repeat(rng.random(n_clips) < 0.5, per)
    comp = zero | np.repeat(rng.random(n_clips) < 0.6, per)
    meth = zero | (comp & np.repeat(rng.random(n_clips) < 0.5, per))
    qtypes = np.array(TYPES * (n_clips * per))
    lo_c, hi_c = gap_interval(qtypes, _clips(n_clips, per), comp, zero, meth, TYPES)
    lo_i, hi_i = gap_interval(qtypes, np.arange(n_clips * per), comp, zero, meth, TYPES)
    assert hi_c - lo_c > 1.5 * (hi_i - lo_i)
    # questions of other types change nothing
    other = np.array(["Visual/Location"] * 50)
    wide = gap_interval(np.concatenate([qtypes, other]), np.concatenate([_clips(n_clips, per), np.arange(50)]),
                        *(np.concatenate([x, np.ones(50, bool) ^ (i == 1)]) for i, x in enumerate((comp, zero, meth))),
                        TYPES)
    assert wide == (lo_c, hi_c)
