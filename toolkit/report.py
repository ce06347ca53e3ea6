"""`avqa-edge report`: mean ± std over training seeds of several `avqa-edge eval --json` files.

Each input is one seed's eval JSON (`{"scenarios": {SCENARIO: {METHOD: {"overall": ACC,
TYPE: ACC}}}, "answerable": ..., ...}`); a `--extra LABEL=FILE,FILE,...` group adds the
rows of other runs (e.g. the `paper` addressing variant) under their own label. For each
missing-sensor scenario the report also tests, on the question types
the remaining sensor can answer: does `rmm+avr` beat `zero_fill` and `dropout` by more
than twice the standard deviation over seeds (of the paired per-seed difference)? With
`versus`, every method's overall accuracy minus that row's, paired by seed, per missing scenario.
"""
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from avqa_edge.errors import AvqaError

from .data.types import QUESTION_TYPES
from .scoring import ANSWERABLE, SHORT, extra_types

Rows = Dict[Tuple[str, str], List[Dict[str, float]]]   # (scenario, method) -> one dict per seed


def _load(path: Path) -> Dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AvqaError(f"cannot read eval JSON {path}: {e}") from None


def collect(results: Sequence[Dict], suffix: str = "") -> Rows:
    rows: Rows = {}
    for res in results:
        for scen, methods in res["scenarios"].items():
            for method, acc in methods.items():
                rows.setdefault((scen, method + suffix), []).append(acc)
    return rows


def _ms(values: Sequence[float]) -> str:
    """Mean ± sample std in %; a single run shows its value alone (no spread to report)."""
    v = 100 * np.asarray(values, dtype=np.float64)
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}"


def _seed_gap(row: Dict) -> str:
    ci = row.get("answerable_types_ci95")
    return f"{100 * row['answerable_types']:.0f}" + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else "")


def answerable_mean(acc: Dict[str, float], scenario: str, sets: Dict = ANSWERABLE) -> float:
    """Unweighted mean accuracy over the question types the remaining sensor can answer."""
    return float(np.mean([acc[t] for t in sets[scenario] if t in acc]))


def _paired(a: Sequence[float], b: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample std of the per-seed differences a - b, in points."""
    d = 100 * (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return round(float(d.mean()), 9) + 0.0, float(d.std(ddof=1)) if len(d) > 1 else float("nan")   # + 0.0: no "-0.0"


def versus(rows: Rows, ref: str, margin: float = 1.0) -> List[str]:
    """Every method's overall accuracy minus `ref`'s, paired by seed, in each missing scenario;
    whether it is within `margin` points below or better."""
    scens = [s for s in ANSWERABLE if (s, ref) in rows]
    if not scens:
        raise AvqaError(f"--versus {ref}: no such row in the missing-sensor scenarios")
    out = [f"Overall accuracy minus {ref}'s, paired by seed (points, mean ± std); ok: at most {margin:g} point below.",
           "", "| Method | " + " | ".join(scens) + " |", "|---" * (len(scens) + 1) + "|"]
    methods = [m for s, m in rows if s in scens and m != ref]
    for method in dict.fromkeys(methods):
        cells = []
        for s in scens:
            if (s, method) not in rows or len(rows[s, method]) != len(rows[s, ref]):
                cells.append("")
                continue
            mean, std = _paired([r["overall"] for r in rows[s, method]], [r["overall"] for r in rows[s, ref]])
            cells.append(f"{mean:+.1f} ± {std:.1f} ({'ok' if mean >= -margin else 'below'})")
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return out


def criterion(rows: Rows, scenario: str, sets: Dict = ANSWERABLE) -> List[str]:
    """Paired per-seed differences rmm+avr - baseline on the answerable types, per type."""
    out = []
    main = rows.get((scenario, "rmm+avr"), [])
    for base in ("zero_fill", "dropout"):
        other = rows.get((scenario, base), [])
        if len(other) != len(main) or len(main) < 2:
            continue
        for t in list(sets[scenario]) + ["answerable"]:
            if t == "answerable":
                d = [answerable_mean(m, scenario, sets) - answerable_mean(o, scenario, sets) for m, o in zip(main, other)]
            else:
                d = [m[t] - o[t] for m, o in zip(main, other)]
            d = 100 * np.asarray(d)
            mean, std = round(float(d.mean()), 9) + 0.0, float(d.std(ddof=1))   # + 0.0: no "-0.0"
            verdict = "beats" if mean > 2 * std and mean > 0 else ("loses" if mean < -2 * std else "no clear difference")
            out.append(f"| {scenario} | {base} | {t} | {mean:+.1f} | {std:.1f} | {verdict} |")
    return out


def report(paths: Sequence[Path], extra: Dict[str, Sequence[Path]] = None, versus_row: str = "") -> str:
    if len(paths) < 1:
        raise AvqaError("give at least one eval JSON")
    results = [_load(p) for p in paths]
    rows = collect(results)
    for label, files in (extra or {}).items():
        label = f"{label}, {len(files)} seed{'s' if len(files) > 1 else ''}"
        rows.update({k: v for k, v in collect([_load(p) for p in files], f" ({label})").items()
                     if not k[1].startswith("dropout (")})
    n_seeds = len(results)
    gen = {r.get("generator_version") for r in results}
    # version 1's sets as the module states them (its stored reports keep their order); later
    # versions' as their eval recorded them
    sets = results[0]["answerable"] if results[0].get("answerable") and gen != {"1.0"} else ANSWERABLE
    lines = [f"Mean ± std over {n_seeds} training seeds (sample std), accuracy in %, "
             f"{results[0].get('n', '?')} test questions per seed, generator {', '.join(sorted(map(str, gen)))}.", ""]
    types = list(QUESTION_TYPES) + extra_types(results[0]["scenarios"])     # + version 2's / a custom set's
    cols = [SHORT[t][0] + " " + SHORT[t][1] if t in SHORT else t for t in types]
    lines.append("| Scenario | Method | " + " | ".join(cols) + " | All | Answerable |")
    lines.append("|---" * (len(cols) + 4) + "|")
    for (scen, method), accs in rows.items():
        ans = _ms([answerable_mean(a, scen, sets) for a in accs]) if scen in sets else ""
        cells = [_ms([a[t] for a in accs]) if all(t in a for a in accs) else "" for t in types]
        lines.append(f"| {scen} | {method} | " + " | ".join(cells) + f" | {_ms([a['overall'] for a in accs])} | {ans} |")
    q_only = [r["question_only"]["overall"] for r in results if "question_only" in r]
    if q_only:
        lines += ["", f"Question-only prior: {_ms(q_only)}."]
    gaps = {s: [r["gap_closed"][s] for r in results if s in r.get("gap_closed", {})] for s in ANSWERABLE}
    lines += ["", "Gap closed by rmm+avr between zero_fill and complete, on the answerable types "
              "(per seed, with its 95 % interval over test clips where eval gave one): "
              + "; ".join(f"{s} {_ms([r['answerable_types'] for r in g])} % ({', '.join(map(_seed_gap, g))})"
                          for s, g in gaps.items() if g) + "."]
    crit = [c for s in sets for c in criterion(rows, s, sets)]
    if crit:
        lines += ["", "rmm+avr minus each baseline, per answerable type (paired over seeds, points):", "",
                  "| Scenario | Baseline | Type | Mean diff | Std | > 2 std? |", "|---|---|---|---|---|---|", *crit]
    if versus_row:
        lines += ["", *versus(rows, versus_row)]
    return "\n".join(lines) + "\n"
