"""Scoring under sensor scenarios, shared by training's validation and `avqa-edge eval`.

Scenarios (METHOD.md section 3): `complete`; `audio_missing` / `visual_missing` - the sensor
is absent: its encoder is not run and nothing of it reaches the model; the released code's
noise protocol `audio_noisy` / `visual_noisy` / `both_noisy` - Gaussian noise of 0.3 / 0.7 /
0.5 (both) times the feature's standard deviation measured on the validation split (the
released code adds it to roughly unit-scale features), reported separately, never as
"missing"; `uncertain` (issue 5) - each test clip draws one condition (complete, audio
missing, visual missing, audio noisy, visual noisy) at random with a fixed seed, and no
method is told which. Absence is observable: methods see the masks `observed_masks` reads
off the raw input (black frames, digital silence), as a health monitor would. Noise is not.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .data.loader import SplitData
from .data.types import BENCHMARK_V2_TYPES, QUESTION_TYPES

MISSING_SCENARIOS = ("complete", "audio_missing", "visual_missing")
NOISE_SCENARIOS = {"audio_noisy": (0.3, 0.0), "visual_noisy": (0.0, 0.7), "both_noisy": (0.5, 0.5)}
UNCERTAIN = "uncertain"
UNCERTAIN_CONDITIONS = ("complete", "audio_missing", "visual_missing", "audio_noisy", "visual_noisy")
SCENARIOS = MISSING_SCENARIOS + tuple(NOISE_SCENARIOS) + (UNCERTAIN,)
PROMPT_METHODS = ("prompt_all", "prompt_oracle", "prompt_detect")

# The question types the remaining sensor can in principle answer on the built-in benchmark
# (version 1; `answerable_sets(version)` for either version). Every eval and result on version 1
# reads these sets: CLASSIFICATION below says the same and more, and leaves them as they are.
ANSWERABLE = {
    "audio_missing": {  # video remains: counts, places, and motion (a sounding instrument moves)
        "Visual/Counting": "visible instruments are seen",
        "Visual/Location": "positions are seen",
        "Audio-Visual/Existential": "a playing instrument moves",
        "Audio-Visual/Location": "the sounding instrument moves (loudest: only via the size cue)",
        "Audio-Visual/Counting": "visible playing instruments move",
        "Audio-Visual/Temporal": "motion starts when the sound starts",
    },
    "visual_missing": {  # audio remains: timbre, loudness, timing; mono, so no location
        "Audio/Counting": "distinct timbres are heard",
        "Audio/Comparative": "loudness and duration are heard",
        "Audio-Visual/Existential": "the instrument's timbre is heard",
    },
}
# Not answerable without the other sensor, and why: audio_missing: Audio/* (loudness, off-screen
# sounds), AV/Comparative (loudness); visual_missing: Visual/* and AV/Location (mono audio
# carries no position), AV/Counting (off-screen sounds and silent visible instruments),
# AV/Comparative (needs positions), AV/Temporal (half its questions ask "where").

LEVELS = ("answerable", "partly", "not")
_PARTLY_V1 = {
    "audio_missing": {
        "Audio/Counting": "the moving instruments are the visible sounding ones; off-screen ones are not seen",
        "Audio/Comparative": "durations of visible instruments are seen as motion; loudness only via size (r = 0.5)",
        "Audio-Visual/Comparative": "loudness only via the size cue (r = 0.5)",
    },
    "visual_missing": {
        "Visual/Counting": "visible instruments mostly sound (0.75), off-screen ones rarely (0.15)",
        "Audio-Visual/Counting": "the sounding instruments are mostly the visible ones",
        "Audio-Visual/Temporal": "'which plays first' is heard; 'where' is not",
    },
}
_NOT_V1 = {
    "audio_missing": {},
    "visual_missing": {
        "Visual/Location": "mono audio carries no position",
        "Audio-Visual/Location": "mono audio carries no position",
        "Audio-Visual/Comparative": "the instruments are named by position",
    },
}
_V2_EXTRA = {   # version 2's own types (data/synth/questions.py)
    "audio_missing": {
        "Visual/Identity": ("answerable", "the instruments and their sizes are seen"),
        "Visual/Attribute": ("answerable", "the finish is seen"),
    },
    "visual_missing": {
        "Visual/Identity": ("partly", "the visible instrument usually sounds; the largest tends to be the loudest"),
        "Visual/Attribute": ("partly", "the register follows the finish with chance 0.8, when the instrument plays"),
    },
}


def _classify(version: int) -> Dict[str, Dict[str, Tuple[str, str]]]:
    out: Dict[str, Dict[str, Tuple[str, str]]] = {}
    for scen in ANSWERABLE:
        row = {t: ("answerable", why) for t, why in ANSWERABLE[scen].items()}
        row.update({t: ("partly", why) for t, why in _PARTLY_V1[scen].items()})
        row.update({t: ("not", why) for t, why in _NOT_V1[scen].items()})
        if version >= 2:
            row.update(_V2_EXTRA[scen])
        out[scen] = {t: row[t] for t in QUESTION_TYPES + BENCHMARK_V2_TYPES if t in row}
    return out


CLASSIFICATION: Dict[int, Dict[str, Dict[str, Tuple[str, str]]]] = {1: _classify(1), 2: _classify(2)}
"""What the remaining sensor can answer, per built-in benchmark version, missing scenario and
question type: (level, why), level one of LEVELS.

=========================  =====================  =====================
type                       audio_missing          visual_missing
=========================  =====================  =====================
Audio/Counting             partly                 answerable
Audio/Comparative          partly                 answerable
Visual/Counting            answerable             partly
Visual/Location            answerable             not
Audio-Visual/Existential   answerable             answerable
Audio-Visual/Location      answerable             not
Audio-Visual/Counting      answerable             partly
Audio-Visual/Comparative   partly                 not
Audio-Visual/Temporal      answerable             partly
Visual/Identity (v2)       answerable             partly
Visual/Attribute (v2)      answerable             partly
=========================  =====================  =====================

"answerable" is ANSWERABLE (version 1's gap figures use it alone). "partly": the remaining
sensor predicts the answer better than chance but not always. With the camera missing, version
1's partly types are the counting and temporal ones, which the audio answers by statistics of
the scene; version 2 adds Visual/Identity and Visual/Attribute, whose answers the sound
predicts through the instrument's timbre, loudness and register.
"""


def answerable_sets(version: int, level: str = "answerable") -> Dict[str, Dict[str, str]]:
    """scenario -> {question type: why} of the types at `level` on a benchmark version."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if version not in CLASSIFICATION:
        raise ValueError(f"unknown benchmark version {version!r}")
    return {scen: {t: why for t, (lvl, why) in row.items() if lvl == level}
            for scen, row in CLASSIFICATION[version].items()}

SHORT = {"Audio/Counting": ("Audio", "Cnt"), "Audio/Comparative": ("Audio", "Comp"),
         "Visual/Counting": ("Visual", "Cnt"), "Visual/Location": ("Visual", "Loc"),
         "Audio-Visual/Existential": ("AV", "Ext"), "Audio-Visual/Location": ("AV", "Loc"),
         "Audio-Visual/Counting": ("AV", "Cnt"), "Audio-Visual/Comparative": ("AV", "Comp"),
         "Audio-Visual/Temporal": ("AV", "Temp")}


def scenario_conditions(scenario: str, n_clips: int, seed: int = 0) -> np.ndarray:
    """The condition of each clip (n_clips,) str: the scenario itself, or under `uncertain` one
    of UNCERTAIN_CONDITIONS drawn per clip (its questions share it) from a fixed seed."""
    if scenario == UNCERTAIN:
        rng = np.random.default_rng([seed, 5])
        return np.array(UNCERTAIN_CONDITIONS)[rng.integers(0, len(UNCERTAIN_CONDITIONS), n_clips)]
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    return np.full(n_clips, scenario)


def scenario_masks(scenario: str, n_clips: int, t: int, ratio: float = 1.0, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Per-clip masks (n_clips, T), 1 = present. `ratio` of segments absent for the missing
    sensor (the Fig. 5 sweep), chosen at random per clip with a fixed seed. `uncertain`: the
    whole sensor is absent in the clips whose condition says it is missing."""
    ma, mv = np.ones((n_clips, t), np.float32), np.ones((n_clips, t), np.float32)
    if scenario == UNCERTAIN:
        cond = scenario_conditions(scenario, n_clips, seed)
        ma[cond == "audio_missing"] = 0
        mv[cond == "visual_missing"] = 0
        return ma, mv
    if scenario in ("audio_missing", "visual_missing"):
        k = int(round(ratio * t))
        rng = np.random.default_rng(seed)
        m = np.ones((n_clips, t), np.float32)
        for i in range(n_clips):
            m[i, rng.permutation(t)[:k]] = 0
        if scenario == "audio_missing":
            ma = m
        else:
            mv = m
    return ma, mv


def observed_masks(batch: Dict[str, torch.Tensor], t: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-clip masks (U, T) read off the raw input alone, as a health monitor would: a segment
    is absent when its frames are all black / its audio is digital silence (a cached log-mel
    equal to log(LOG_EPS) everywhere) / its features are all zero. Real signals on the built-in
    benchmark are never exactly zero (background, noise floor)."""
    import math

    from avqa_edge.runtime.signal import LOG_EPS
    if "frames" in batch:
        u = batch["frames"].shape[0]
        mv = batch["frames"].reshape(u, t, -1).ne(0).any(-1)
    else:
        u = batch["visual_feat"].shape[0]
        mv = batch["visual_feat"].reshape(u, t, -1).ne(0).any(-1)
    if "mel" in batch:
        ma = batch["mel"].reshape(u, t, -1).ne(math.log(LOG_EPS)).any(-1)
    elif "audio" in batch:
        ma = batch["audio"].reshape(u, t, -1).ne(0).any(-1)
    else:
        ma = batch["audio_feat"].reshape(u, t, -1).ne(0).any(-1)
    return ma.float(), mv.float()


def detected_cases(mask_a: torch.Tensor, mask_v: torch.Tensor) -> List[str]:
    """The prompt case a health monitor would choose from observed absence, per question:
    audio / visual when that sensor has absent segments, both when both do, else complete
    (noise is not observable, so a noisy sensor gets the complete set)."""
    out = []
    for a_abs, v_abs in zip((mask_a < 1).any(1).tolist(), (mask_v < 1).any(1).tolist()):
        out.append("both" if a_abs and v_abs else "audio" if a_abs else "visual" if v_abs else "complete")
    return out


@torch.no_grad()
def predict(model, data: SplitData, scenario: str, method: str, batch_size: int = 128, limit: int = 0,
            ratio: float = 1.0, feat_std: Optional[Tuple[float, float]] = None, seed: int = 0,
            progress: Optional[Callable[[int], None]] = None, prompts=None) -> Tuple[np.ndarray, np.ndarray]:
    """-> (question indices, predicted answer ids). Methods: zero_fill, rmm, avr, rmm+avr;
    in noise scenarios `none` (the model as is) or `avr` (the whole noisy pair through AVR);
    with a PromptBank `prompts`, in every scenario: prompt_all (every set, case unknown),
    prompt_oracle (the set of the true case), prompt_detect (the set a health monitor picks
    from observed absence), all on zero-filled features.

    `uncertain`: the failing sensor's raw input is blanked and methods get the masks read off
    it (`observed_masks`), never the drawn condition (except prompt_oracle, by definition)."""
    model.eval()
    if method in PROMPT_METHODS and prompts is None:
        raise ValueError(f"{method} needs a prompt bank")
    n_clips = len(data.questions_of)
    t = model.cfg.t_segments
    ma_all, mv_all = scenario_masks(scenario, n_clips, t, ratio, seed)
    ma_all, mv_all = torch.from_numpy(ma_all), torch.from_numpy(mv_all)
    cond = scenario_conditions(scenario, n_clips, seed)
    noise = np.array([NOISE_SCENARIOS.get(c, (0.0, 0.0)) for c in cond], np.float32).reshape(n_clips, 2)
    qs, preds = [], []
    for bi, qidx in enumerate(data.ordered_batches(batch_size, limit)):
        batch = data.batch(qidx)
        clips = data.clip[batch["questions"]].unique()
        qclip = batch.get("clip_index", torch.arange(len(qidx)))
        if scenario == UNCERTAIN:
            from .model.avqa import _blank
            batch = _blank(_blank(batch, "audio", ma_all[clips]), "visual", mv_all[clips])   # the sensor fails
            f, ma, mv = model.encode(batch, *observed_masks(batch, t))
            sa, sv = (torch.from_numpy(noise[clips.numpy(), i])[qclip] for i in (0, 1))          # (B,) per question
            if bool((sa > 0).any() or (sv > 0).any()):
                gen = torch.Generator().manual_seed(seed * 100003 + bi)
                std_a, std_v = feat_std or (1.0, 1.0)
                f.a = f.a + (sa * std_a)[:, None, None] * torch.randn(f.a.shape, generator=gen)
                f.v = f.v + (sv * std_v)[:, None, None, None, None] * torch.randn(f.v.shape, generator=gen)
            a, v = (f.a, f.v) if method in PROMPT_METHODS else model.fill(f, ma, mv, method)
        else:
            f, ma, mv = model.encode(batch, ma_all[clips], mv_all[clips])
            if scenario in NOISE_SCENARIOS:
                sa, sv = NOISE_SCENARIOS[scenario]
                gen = torch.Generator().manual_seed(seed * 100003 + bi)
                std_a, std_v = feat_std or (1.0, 1.0)
                a = f.a + sa * std_a * torch.randn(f.a.shape, generator=gen)
                v = f.v + sv * std_v * torch.randn(f.v.shape, generator=gen)
                if method == "avr" and model.denoiser is not None:
                    zero = torch.zeros_like(ma)
                    a, v = model.enhance(a, v, zero, zero)
            elif method in PROMPT_METHODS:
                a, v = f.a, f.v                                    # zero_fill: absent segments are zeros
            else:
                a, v = model.fill(f, ma, mv, method)
        if method in PROMPT_METHODS:
            from .model.prompts import CONDITION_CASE, prompted_logits
            if method == "prompt_all":
                sel = prompts.concat_all(a.shape[0])
            elif method == "prompt_oracle":
                sel = prompts.select(prompts.case_index([CONDITION_CASE[c] for c in cond[clips.numpy()][qclip.numpy()]]))
            else:
                sel = prompts.select(prompts.case_index(detected_cases(ma, mv)))
            logits = prompted_logits(model.backbone, a, v, f.q, sel)
        else:
            logits = model.answer(a, v, f.q, ma, mv)
        preds.append(logits.argmax(-1).numpy())
        qs.append(batch["questions"].numpy())
        if progress:
            progress(len(qidx))
    return np.concatenate(qs), np.concatenate(preds)


def is_correct(data: SplitData, qs: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """(N,) bool: was each question answered right."""
    return preds == data.answers[torch.from_numpy(qs)].numpy()


def score(data: SplitData, qs: np.ndarray, preds: np.ndarray) -> Dict[str, float]:
    """Accuracy overall and per question type, in [0, 1]."""
    ok = is_correct(data, qs, preds)
    types = np.array(data.qtypes)[qs]
    out = {"overall": float(ok.mean()) if len(ok) else float("nan")}
    for qt in sorted(set(types.tolist())):
        out[qt] = float(ok[types == qt].mean())
    return out


def feature_std(model, data: SplitData, limit: int = 256) -> Tuple[float, float]:
    """Std of the audio and visual features on (part of) a split."""
    batch = data.batch(data.ordered_batches(limit, limit)[0])
    with torch.no_grad():
        f, _, _ = model.encode(batch)
    return float(f.a.std()), float(f.v.std())


def extra_types(results: Dict[str, Dict[str, Dict[str, float]]]) -> List[str]:
    """Question types in `results` beyond MUSIC-AVQA's nine (the built-in benchmark's version 2
    types, a custom data set's own names), version 2's first, then by name."""
    seen = {t for methods in results.values() for acc in methods.values() for t in acc}
    seen -= set(QUESTION_TYPES) | {"overall"}
    return [t for t in BENCHMARK_V2_TYPES if t in seen] + sorted(seen - set(BENCHMARK_V2_TYPES))


def markdown_table(results: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """MUSIC-AVQA layout: Audio Cnt/Comp/Avg, Visual Cnt/Loc/Avg, AV Ext/Loc/Cnt/Comp/Temp/Avg, then
    one column per other question type present (version 2's, a custom data set's), All."""
    groups = {"Audio": ["Audio/Counting", "Audio/Comparative"], "Visual": ["Visual/Counting", "Visual/Location"],
              "AV": [t for t in QUESTION_TYPES if t.startswith("Audio-Visual")]}
    extra = extra_types(results)
    head = ["Scenario", "Method"]
    for g, ts in groups.items():
        head += [f"{g} {SHORT[t][1]}" for t in ts] + [f"{g} Avg"]
    head += extra + ["All"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scen, methods in results.items():
        for meth, acc in methods.items():
            row = [scen, meth]
            for ts in groups.values():
                vals = [acc.get(t) for t in ts]
                row += [_pct(x) for x in vals]
                have = [x for x in vals if x is not None]
                row.append(_pct(sum(have) / len(have)) if have else "-")
            row += [_pct(acc.get(t)) for t in extra]
            row.append(_pct(acc.get("overall")))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def gap_closed(results: Dict, scenario: str, method: str, types: Sequence[str]) -> Dict[str, float]:
    """Fraction of the zero_fill -> complete gap that `method` closes, overall and on `types`."""
    out = {}
    comp, zero, meth = results["complete"]["zero_fill"], results[scenario]["zero_fill"], results[scenario][method]
    for key in ["overall", *types]:
        if key in comp and key in zero and key in meth:
            gap = comp[key] - zero[key]
            out[key] = (meth[key] - zero[key]) / gap if abs(gap) > 1e-9 else float("nan")
    return out


def gap_interval(qtypes: np.ndarray, clips: np.ndarray, ok_complete: np.ndarray, ok_zero: np.ndarray,
                 ok_method: np.ndarray, types: Sequence[str], n_boot: int = 2000, seed: int = 0) -> Tuple[float, float]:
    """95 % bootstrap interval of the question-weighted gap closed on `types`,
    (sum ok_method - sum ok_zero) / (sum ok_complete - sum ok_zero) over those questions.

    All arrays are per test question (N,), aligned. Test clips are resampled with replacement,
    a clip's questions together (they share a scene), and the three methods stay paired. The
    interval covers the test sample's noise only, not the spread between training runs."""
    sel = np.isin(qtypes, list(types))
    uniq, clip_of = np.unique(clips[sel], return_inverse=True)             # (n,) clip index 0..K-1
    k = len(uniq)
    if k == 0:
        return float("nan"), float("nan")
    per_clip = np.stack([np.bincount(clip_of, weights=ok[sel].astype(np.float64), minlength=k)
                         for ok in (ok_complete, ok_zero, ok_method)], 1)  # (K, 3) correct answers
    draws = np.random.default_rng(seed).integers(0, k, (n_boot, k))
    tot = np.stack([per_clip[d].sum(0) for d in draws])                   # (n_boot, 3)
    gap = tot[:, 0] - tot[:, 1]
    ratio = (tot[:, 2] - tot[:, 1])[gap != 0] / gap[gap != 0]
    if not len(ratio):
        return float("nan"), float("nan")
    lo, hi = np.percentile(ratio, [2.5, 97.5])
    return float(lo), float(hi)


def answerable_accuracy(acc: Dict[str, float], data: SplitData, types: Sequence[str]) -> float:
    """Question-weighted accuracy over the given types."""
    counts = {t: data.qtypes.count(t) for t in types}
    tot = sum(counts[t] for t in types if t in acc)
    return sum(acc[t] * counts[t] for t in types if t in acc) / tot if tot else float("nan")


def list_types(data: SplitData) -> List[str]:
    """The split's question types: MUSIC-AVQA's nine in their order, then any others (version 2's,
    a custom data set's own names), each kept as its own type."""
    have = set(data.qtypes)
    rest = have - set(QUESTION_TYPES)
    return ([t for t in QUESTION_TYPES if t in have] + [t for t in BENCHMARK_V2_TYPES if t in rest]
            + sorted(rest - set(BENCHMARK_V2_TYPES)))
