"""Questions: the templates, every askable question of a scene, and the balanced choice.

Version 2 adds three templates over two types of its own, questions that need the video but
whose answer the audio predicts imperfectly (the camera-missing case has a partly recoverable gap):

* Visual/Identity "Which instrument is in the video?" (one visible): it usually sounds, but may
  be silent while an off-screen one plays; "Which is the largest instrument in the video?"
  (largest by LARGEST_MARGIN): nearer instruments tend to be louder (correlation 0.5);
* Visual/Attribute "Is the {x} light or dark?": the finish, which the register the instrument
  plays in follows with chance REGISTER_AGREEMENT (when it plays at all).
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np

from avqa_edge.toolkit.data.types import QUESTION_TYPES, benchmark_types

from .config import COMPARE_RATIO, LARGEST_MARGIN, LOCATIONS, N_COLS
from .scene import Scene, Source

# template id -> (question type, pattern)
TEMPLATES: Dict[str, Tuple[str, str]] = {
    "a_count": ("Audio/Counting", "How many instruments are sounding?"),
    "a_louder": ("Audio/Comparative", "Is the {x} louder than the {y}?"),
    "a_longer": ("Audio/Comparative", "Does the {x} play longer than the {y}?"),
    "v_count": ("Visual/Counting", "How many instruments are in the video?"),
    "v_where": ("Visual/Location", "Where is the {x}?"),
    "v_what": ("Visual/Location", "What is the instrument on the {l}?"),
    "av_playing": ("Audio-Visual/Existential", "Is the {x} playing?"),
    "av_where_sounding": ("Audio-Visual/Location", "Where is the sounding instrument?"),
    "av_where_loudest": ("Audio-Visual/Location", "Where is the loudest instrument?"),
    "av_count": ("Audio-Visual/Counting", "How many instruments in the video are playing?"),
    "av_louder": ("Audio-Visual/Comparative",
                  "Is the instrument on the {l} louder than the instrument on the {m}?"),
    "av_first_which": ("Audio-Visual/Temporal", "Which instrument plays first?"),
    "av_first_where": ("Audio-Visual/Temporal", "Where is the first sounding instrument?"),
}
assert {q for q, _ in TEMPLATES.values()} == set(QUESTION_TYPES)
# version 2's additions
V2_TEMPLATES: Dict[str, Tuple[str, str]] = {
    "v_which": ("Visual/Identity", "Which instrument is in the video?"),
    "v_largest": ("Visual/Identity", "Which is the largest instrument in the video?"),
    "v_finish": ("Visual/Attribute", "Is the {x} light or dark?"),
}
assert {q for q, _ in V2_TEMPLATES.values()} == set(benchmark_types(2)) - set(QUESTION_TYPES)
_ALL_TEMPLATES = {**TEMPLATES, **V2_TEMPLATES}


def templates(version: int) -> Dict[str, Tuple[str, str]]:
    """Template id -> (question type, pattern) of a benchmark version."""
    return TEMPLATES if version == 1 else _ALL_TEMPLATES


def _template_regex():
    import re
    out = []
    for tid, (_, pat) in _ALL_TEMPLATES.items():
        rx = re.escape(pat)
        for ph in ("x", "y", "l", "m"):
            rx = rx.replace(re.escape("{" + ph + "}"), "[a-z]+")
        out.append((tid, re.compile("^" + rx + "$")))
    return out


_TEMPLATE_RX = _template_regex()


def template_of(question: str) -> str:
    """Template id of a generated question."""
    for tid, rx in _TEMPLATE_RX:
        if rx.match(question):
            return tid
    raise KeyError(question)


def _ask(tid: str, answer, **slots) -> Tuple[str, str, str, str]:
    qtype, pat = _ALL_TEMPLATES[tid]
    return tid, pat.format(**slots), str(answer), qtype


def _candidates(scene: Scene, version: int = 1) -> List[Tuple[str, str, str, str]]:
    """(template id, question, answer, qtype) for every askable question of the scene."""
    out = []
    vis = scene.visible
    snd = scene.sounding
    vis_snd = [s for s in vis if s.sounds]
    by_col = [[s for s in vis if s.column == c] for c in range(N_COLS)]

    def ratio_ok(a: Source, b: Source) -> bool:
        hi, lo = max(a.loudness, b.loudness), min(a.loudness, b.loudness)
        return hi >= COMPARE_RATIO * lo

    # Audio/Counting
    out.append(_ask("a_count", len(snd)))
    # Audio/Comparative (both orders; answers complement)
    for a in snd:
        for b in snd:
            if a is b:
                continue
            if ratio_ok(a, b):
                out.append(_ask("a_louder", "yes" if a.loudness > b.loudness else "no",
                                x=a.name, y=b.name))
            if abs(a.duration - b.duration) >= 2:
                out.append(_ask("a_longer", "yes" if a.duration > b.duration else "no",
                                x=a.name, y=b.name))
    # Visual/Counting
    out.append(_ask("v_count", len(vis)))
    # Visual/Location
    for s in vis:
        out.append(_ask("v_where", s.location, x=s.name))
    for c in range(N_COLS):
        if len(by_col[c]) == 1:
            out.append(_ask("v_what", by_col[c][0].name, l=LOCATIONS[c]))
    # Audio-Visual/Existential
    for s in vis:
        out.append(_ask("av_playing", "yes" if s.sounds else "no", x=s.name))
    # Audio-Visual/Location
    if len(vis_snd) == 1:
        out.append(_ask("av_where_sounding", vis_snd[0].location))
    if len(snd) >= 2:
        ranked = sorted(snd, key=lambda s: -s.loudness)
        top, nxt = ranked[0], ranked[1]
        if top.visible and top.loudness >= COMPARE_RATIO * nxt.loudness:
            out.append(_ask("av_where_loudest", top.location))
    # Audio-Visual/Counting
    out.append(_ask("av_count", len(vis_snd)))
    # Audio-Visual/Comparative
    for c1 in range(N_COLS):
        for c2 in range(N_COLS):
            if c1 == c2 or len(by_col[c1]) != 1 or len(by_col[c2]) != 1:
                continue
            a, b = by_col[c1][0], by_col[c2][0]
            if a.sounds and b.sounds and ratio_ok(a, b):
                out.append(_ask("av_louder", "yes" if a.loudness > b.loudness else "no",
                                l=LOCATIONS[c1], m=LOCATIONS[c2]))
    # Audio-Visual/Temporal
    if len(snd) >= 2:
        onsets = sorted(s.onset for s in snd)
        first = min(snd, key=lambda s: s.onset)
        if onsets[0] < onsets[1] and first.visible:
            out.append(_ask("av_first_which", first.name))
            out.append(_ask("av_first_where", first.location))
    if version >= 2:
        out += _v2_candidates(scene)
    return out


def _v2_candidates(scene: Scene) -> List[Tuple[str, str, str, str]]:
    out = []
    vis = scene.visible
    if len(vis) == 1:
        out.append(_ask("v_which", vis[0].name))
    if len(vis) >= 2:
        big, nxt = sorted(vis, key=lambda s: -s.size)[:2]
        if big.size - nxt.size >= LARGEST_MARGIN:
            out.append(_ask("v_largest", big.name))
    for s in vis:
        out.append(_ask("v_finish", s.finish, x=s.name))
    return out


def candidate_questions(scene: Scene, version: int = 1) -> List[Tuple[str, str, str]]:
    """Every askable (question, answer, qtype) of the scene, answers from its ground truth."""
    return [(q, a, t) for _, q, a, t in _candidates(scene, version)]


def _waterfill(caps: Sequence[int], total: int) -> List[int]:
    """Split ``total`` as evenly as possible under per-item capacities."""
    alloc = [0] * len(caps)
    order = sorted(range(len(caps)), key=lambda i: caps[i])
    left = total
    for k, i in enumerate(order):
        rest = len(caps) - k
        share = -(-left // rest)                       # ceil
        alloc[i] = int(min(caps[i], share, left))
        left -= alloc[i]
    return alloc


def _select(cands: List[Tuple[int, str, str, str, str]], budget: int,
            rng: np.random.Generator, version: int = 1) -> List[int]:
    """Indices of the chosen candidates (clip, tid, question, answer, qtype).

    Within each question text, every observed answer keeps the same number of candidates
    (texts with a single observed answer are dropped: they would be shortcuts). Candidates are
    then taken round-robin over the (question, answer) cells, with the budget shared evenly
    over question types and, within a type, over templates.
    """
    tmpl, types = templates(version), benchmark_types(version)
    cells: Dict[str, Dict[str, Dict[str, List[int]]]] = {tid: {} for tid in tmpl}
    for i, (_, tid, q, a, _) in enumerate(cands):
        cells[tid].setdefault(q, {}).setdefault(a, []).append(i)
    pools: Dict[str, List[int]] = {}
    for tid in tmpl:
        ranked = []
        for q, by_ans in cells[tid].items():
            if len(by_ans) < 2:
                continue
            m = min(len(v) for v in by_ans.values())
            for a, idx in by_ans.items():
                pick = rng.permutation(len(idx))[:m]
                ranked.extend((r, int(idx[j])) for r, j in enumerate(pick))
        tie = rng.random(len(ranked))
        order = sorted(range(len(ranked)), key=lambda k: (ranked[k][0], tie[k]))
        pools[tid] = [ranked[k][1] for k in order]
    by_type = {t: [tid for tid, (qt, _) in tmpl.items() if qt == t] for t in types}
    type_alloc = _waterfill([sum(len(pools[tid]) for tid in by_type[t]) for t in types], budget)
    chosen: List[int] = []
    for t, n_t in zip(types, type_alloc):
        tids = by_type[t]
        for tid, n in zip(tids, _waterfill([len(pools[tid]) for tid in tids], n_t)):
            chosen.extend(pools[tid][:n])
    return sorted(chosen)
