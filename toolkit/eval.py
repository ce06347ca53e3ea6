"""`avqa-edge eval RUN_DIR`: the test split under every scenario and method.

Every method and every compared run sees exactly the same inputs: the same questions, the
same absent segments (fixed seed per clip) and the same noise draws.
"""
import collections
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from avqa_edge.errors import AvqaError
from avqa_edge.runtime.atomic import write_text
from avqa_edge.runtime.text import Vocabulary

from .checkpoint import load_model, read_json, write_json
from .data.loader import SplitData
from .data.specs import load_split, same_data
from .scoring import (MISSING_SCENARIOS, NOISE_SCENARIOS, UNCERTAIN, answerable_accuracy, answerable_sets, feature_std,
                       gap_closed, gap_interval, is_correct, markdown_table, predict, score)
from .model.avqa import FILL_METHODS

SWEEP_RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)
SWEEP_QUESTIONS = 800


def _load_finished(run_dir: Path):
    state = read_json(Path(run_dir) / "state.json")
    if not state.get("finished"):
        raise AvqaError(f"{run_dir}: training has not finished (step {state.get('step')}); "
                        f"continue it with `avqa-edge train --out {run_dir} --resume`")
    return load_model(run_dir)


def question_only_prior(train_split, test_data: SplitData, answers: List[str]) -> Dict[str, float]:
    """The best a model that sees only the question can do: the most frequent training answer
    for each exact question text (per-type majority for unseen questions)."""
    by_q, by_t = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    for qa in train_split.qa:
        by_q[qa.question][qa.answer] += 1
        by_t[qa.qtype][qa.answer] += 1
    index = {a: i for i, a in enumerate(answers)}
    preds = []
    for qa in test_data.split.qa:
        table = by_q.get(qa.question) or by_t.get(qa.qtype)
        preds.append(index.get(table.most_common(1)[0][0], -2) if table else -2)
    qs = np.arange(len(test_data))
    return score(test_data, qs, np.array(preds))


def run_eval(run_dir: Path, json_path: Optional[Path], compare: List[Path], sweep: bool = True,
             limit: int = 0, seed: int = 0, log=print, prompt: Optional[Path] = None, test_clips: int = 0,
             noise: bool = True) -> Dict:
    """Score `run_dir` (and the `compare` runs on the same inputs) under every scenario; with a
    prompt run trained on it, also prompt_all / prompt_oracle everywhere and prompt_detect
    under `uncertain`. `test_clips` (built-in benchmark only) generates a test split of that
    many clips instead of the run's: the same generator and seed, disjoint from training.
    `noise` False scores the missing-sensor scenarios only (no noisy or uncertain sensors).
    Writes the JSON (default RUN_DIR/eval.json) and, beside it and named after it, the
    Markdown report (eval.md) and the sweep plot (eval_sweep.png)."""
    from avqa_edge.console import make_console
    console = make_console()
    t0 = time.time()
    json_path = Path(json_path) if json_path else Path(run_dir) / "eval.json"
    model, config = _load_finished(run_dir)
    others = _load_compared(run_dir, config, compare)
    bank = None
    if prompt is not None:
        from .prompt_train import load_prompts
        bank, _ = load_prompts(prompt, run_dir)
    spec = config["data"]
    test_spec = _test_spec(spec, test_clips)
    log(f"loading test data ({spec['kind']}) ...")
    test, val = _load_eval_data(model, config, spec, test_spec)
    n = min(limit, len(test)) if limit else len(test)
    jobs = _plan_jobs(model, others, config["train"]["method"], bank, noise)
    results, answered, std = _score_jobs(jobs, model, test, val, n, limit, seed, bank, console, log)
    out = {"scenarios": results, "n": n, "run": str(run_dir), "model_hash": config.get("model_hash"),
           "data": test_spec, "generator_version": spec.get("generator_version"), "seed": seed,
           "feature_std_val": {"audio": std[0], "visual": std[1]},
           "prompt_run": str(prompt) if prompt is not None else None,
           "uncertain": {"conditions": ["complete", "audio_missing", "visual_missing", "audio_noisy", "visual_noisy"],
                         "drawn": "per clip, uniformly, seed [seed, 5]",
                         "observed": "absent = all-black frames / digital silence in a segment's raw input"}}
    out["question_only"] = question_only_prior(load_split(spec, "train"), test, config["model"]["answers"]) if not limit else None
    version = spec["synth"].get("version", 1) if spec["kind"] == "builtin" else None
    out["answerable"] = answerable_sets(version) if version else None
    if version and version >= 2:
        out["partly_answerable"] = answerable_sets(version, "partly")
    fill = _fullest(model)
    if version and config["train"]["method"] in ("rmm_avr", "retrofit") and fill:
        out["gap_closed"], out["gap_method"] = _gaps(results, answered, fill, others, test, seed, version), fill
    if model.rmm is not None:
        batch = test.batch(test.ordered_batches(256, 256)[0])
        with torch.no_grad():
            f, _, _ = model.encode(batch)
            out["addressing_entropy"] = {"variant": model.cfg.addressing, **model.rmm.stats(f.a, f.v, f.q)}
    if sweep:
        out["sweep"] = run_sweep(model, others, test, seed, console)
        plot_sweep(out["sweep"], _beside(json_path, "_sweep.png"))
    text = eval_markdown(out, run_dir, bank is not None)
    md_path = _beside(json_path, ".md")
    write_text(md_path, text)
    write_json(json_path, out)
    console.print(text)
    log(f"eval done in {time.time() - t0:.0f}s; wrote {json_path} and {md_path}")
    return out


def _beside(json_path: Path, suffix: str) -> Path:
    """A file written with the JSON, named after it: eval.json -> eval.md, eval_sweep.png."""
    return json_path.with_name(json_path.stem + suffix)


def _load_compared(run_dir: Path, config: Dict, compare: List[Path]) -> List:
    """[(label, model)] of the runs scored beside `run_dir`: same data, vocabulary and answers."""
    others = []
    for other in compare:
        m, c = _load_finished(other)
        if not same_data(c["data"], config["data"]):
            raise AvqaError(f"{other} was trained on other data than {run_dir}: they cannot be compared")
        if c["model"]["vocab"] != config["model"]["vocab"] or c["model"]["answers"] != config["model"]["answers"]:
            raise AvqaError(f"{other} has another vocabulary or answer list than {run_dir}")
        label = _label(c["train"])
        others.append((label + (f"#{len(others)}" if any(o[0] == label for o in others) else ""), m))
    return others


def _label(train: Dict) -> str:
    """A compared run's row label: its method, and its dropout terms where it has them."""
    return train["method"] + ("+dropout" if train.get("dropout_weight") else "")


def _test_spec(spec: Dict, test_clips: int) -> Dict:
    if not test_clips:
        return spec
    if spec["kind"] != "builtin":
        raise AvqaError("--test-clips applies to the built-in benchmark only")
    if test_clips < 1:
        raise AvqaError(f"--test-clips must be positive, got {test_clips}")
    return {**spec, "synth": {**spec["synth"], "test_clips": test_clips}}


def _load_eval_data(model, config: Dict, spec: Dict, test_spec: Dict):
    """(test, val) SplitData; val only measures the feature scale of the noise scenarios."""
    vocab = Vocabulary(config["model"]["vocab"])
    answers = config["model"]["answers"]
    test = SplitData(load_split(test_spec, "test"), vocab, answers, strict_answers=False, name="test")
    val = SplitData(load_split(spec, "val"), vocab, answers, strict_answers=False, name="validation")
    if model.cfg.inputs == "raw":
        for d in (test, val):
            d.cache_mel(model.audio_encoder.frontend)
    return test, val


def _plan_jobs(model, others, main_name: str, bank, noise: bool = True) -> List:
    """[(scenario, row label, model, fill method)]: every row of the results table. A compared
    run is scored with its fullest fill (retrofit: rmm+avr), and zero-filled under its label
    + "/zero_fill" where that differs."""
    jobs = []
    for scen in MISSING_SCENARIOS:
        if scen == "complete":
            jobs.append((scen, "zero_fill", model, "zero_fill"))
            jobs += [(scen, name, m, "zero_fill") for name, m in others]
            continue
        jobs += [(scen, m, model, m) for m in FILL_METHODS if _applies(model, m)]
        for name, m in others:
            fill = _fullest(m) or "zero_fill"
            jobs.append((scen, name, m, fill))
            if fill != "zero_fill":
                jobs.append((scen, name + "/zero_fill", m, "zero_fill"))
    if noise:
        jobs += _noise_jobs(model, others)
    if bank is not None:
        scens = list(MISSING_SCENARIOS) + ((list(NOISE_SCENARIOS) + [UNCERTAIN]) if noise else [])
        jobs += [(scen, meth, model, meth) for scen in scens for meth in ("prompt_all", "prompt_oracle")]
        if noise:
            jobs.append((UNCERTAIN, "prompt_detect", model, "prompt_detect"))
        order = {scen: i for i, scen in enumerate(scens)}
        jobs.sort(key=lambda j: order[j[0]])          # stable: each scenario's rows stay together
    return _name_main(jobs, model, main_name)


def _noise_jobs(model, others) -> List:
    """The noisy-sensor rows, and the uncertain scenario's: each clip draws its condition, and
    methods see only what is observably absent."""
    jobs = []
    for scen in NOISE_SCENARIOS:
        jobs.append((scen, "none", model, "none"))
        if model.denoiser is not None:
            jobs.append((scen, "avr", model, "avr"))
        jobs += [(scen, name, m, "none") for name, m in others]
    jobs.append((UNCERTAIN, "zero_fill", model, "zero_fill"))
    fill = _fullest(model)
    if fill:
        jobs.append((UNCERTAIN, fill, model, fill))
    jobs += [(UNCERTAIN, name, m, _fullest(m) or "zero_fill") for name, m in others]
    return jobs


def _name_main(jobs: List, model, main_name: str) -> List:
    """A run without RMM / AVR (baseline, dropout) evaluated on its own: its rows named after it."""
    if main_name in ("rmm_avr", "retrofit"):
        return jobs
    return [(s, main_name if mm is model and meth in ("zero_fill", "none") else lbl, mm, meth) for s, lbl, mm, meth in jobs]


def _score_jobs(jobs, model, test: SplitData, val: SplitData, n: int, limit: int, seed: int, bank, console, log):
    """-> (results[scenario][label] = score dict, answered[(scenario, label)] = (question ids,
    right or not) of the main model's missing-sensor rows, the main model's feature std)."""
    from rich.progress import Progress
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    answered = {}
    stds = {id(m): feature_std(m, val) for m in {id(j[2]): j[2] for j in jobs}.values()}   # noise scale per model
    std = stds[id(model)]
    log(f"{n} test questions; feature std on validation: audio {std[0]:.3f}, visual {std[1]:.3f}")
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("eval", total=len(jobs) * n)
        for scen, label, m, meth in jobs:
            bar.update(task, description=f"{scen} / {label}")
            qs, preds = predict(m, test, scen, meth, limit=limit, feat_std=stds[id(m)], seed=seed,
                                progress=lambda k: bar.advance(task, k), prompts=bank)
            results.setdefault(scen, {})[label] = score(test, qs, preds)
            if m is model and scen in MISSING_SCENARIOS:
                answered[scen, label] = (qs, is_correct(test, qs, preds))
    # complete: nothing is missing, so every fill method gives the same answers (a baseline or
    # dropout run has one row, already named after it)
    if "zero_fill" in results.get("complete", {}):
        for meth in FILL_METHODS:
            if _applies(model, meth):
                results["complete"].setdefault(meth, results["complete"]["zero_fill"])
    return results, answered, std


def _gaps(results, answered, fill: str, others, test: SplitData, seed: int, version: int = 1) -> Dict:
    """Per missing scenario: the share of the zero_fill -> complete gap that `fill` closes,
    overall and on the types the remaining sensor can answer (with a bootstrap interval), and
    the difference to each compared run there."""
    out = {}
    for scen, types in answerable_sets(version).items():
        types = list(types)
        row = {"overall": gap_closed(results, scen, fill, types)}
        if version >= 2:   # version 2: also the gap on the types the remaining sensor answers in part
            row["partly_types"] = _gap_answerable(results, scen, fill, list(answerable_sets(version, "partly")[scen]), test)
        row["answerable_types"] = _gap_answerable(results, scen, fill, types, test)
        row["answerable_types_ci95"] = _gap_ci(answered, scen, fill, types, test, seed)
        for base in [name for name, _ in others]:
            row[f"vs_{base}_answerable"] = (answerable_accuracy(results[scen][fill], test, types)
                                            - answerable_accuracy(results[scen][base], test, types))
        out[scen] = row
    return out


def eval_markdown(out: Dict, run_dir: Path, prompts: bool) -> str:
    """The eval report as Markdown: the table and one line per headline figure."""
    md = [f"# avqa-edge eval of {run_dir}", "", f"{out['n']} test questions, generator {out['generator_version']}, "
          f"model {out['model_hash']}, seed {out['seed']}. Accuracy in %.", "", markdown_table(out["scenarios"]), ""]
    if out["question_only"]:
        md.append(f"Question-only prior (most frequent training answer per question): "
                  f"{100 * out['question_only']['overall']:.1f} %")
    for scen, row in (out.get("gap_closed") or {}).items():
        md.append(f"- {scen}: gap zero_fill -> complete closed by {out['gap_method']}: overall "
                  f"{100 * row['overall']['overall']:.0f} %, on answerable types {100 * row['answerable_types']:.0f} % "
                  f"(95 % interval over test clips {100 * row['answerable_types_ci95'][0]:.0f} to "
                  f"{100 * row['answerable_types_ci95'][1]:.0f} %; training runs vary more: compare seeds with `avqa-edge report`)")
    if UNCERTAIN in out["scenarios"]:
        md.append(f"- {UNCERTAIN}: each clip draws complete / audio missing / visual missing / audio noisy / visual noisy "
                  "(seed fixed); no method is told which, methods that fill see only observable absence (black frames, "
                  "silence)" + ("; prompt_detect picks the prompt set from that, prompt_oracle is told the case, "
                                "prompt_all uses every set" if prompts else ""))
    if out.get("addressing_entropy"):
        e = out["addressing_entropy"]
        md.append(f"- RMM addressing ({e['variant']}) entropy: audio recall {e['entropy_audio_recall']:.2f}, "
                  f"visual recall {e['entropy_visual_recall']:.2f} nats (uniform {e['entropy_uniform']:.2f})")
    return "\n".join(md) + "\n"


def _applies(model, method: str) -> bool:
    if "rmm" in method and model.rmm is None:
        return False
    if "avr" in method and model.denoiser is None:
        return False
    return True


def _gap_answerable(results, scen, meth, types, data) -> float:
    comp = answerable_accuracy(results["complete"]["zero_fill"], data, types)
    zero = answerable_accuracy(results[scen]["zero_fill"], data, types)
    got = answerable_accuracy(results[scen][meth], data, types)
    return (got - zero) / (comp - zero) if abs(comp - zero) > 1e-9 else float("nan")


def _gap_ci(answered, scen, meth, types, data, seed) -> List[float]:
    """95 % bootstrap interval of `_gap_answerable` over test clips (the three rows are paired)."""
    (qs, ok_c), (qz, ok_z), (qm, ok_m) = (answered[k] for k in (("complete", "zero_fill"), (scen, "zero_fill"), (scen, meth)))
    assert np.array_equal(qs, qz) and np.array_equal(qs, qm), "rows scored on different questions"
    return list(gap_interval(np.array(data.qtypes)[qs], data.clip[torch.from_numpy(qs)].numpy(), ok_c, ok_z, ok_m,
                             types, seed=seed))


def _fullest(model) -> Optional[str]:
    """The model's fullest fill method: rmm+avr, or what an ablation (--no-rmm / --no-avr) leaves."""
    return next((m for m in ("rmm+avr", "rmm", "avr") if _applies(model, m)), None)


def run_sweep(model, others, test: SplitData, seed: int, console) -> Dict:
    """Accuracy against the fraction of absent segments (paper Fig. 5) on a fixed subset."""
    rows = {}
    lines = [("zero_fill", model, "zero_fill")]
    fill = _fullest(model)
    if fill:
        lines.append((fill, model, fill))
    lines += [(name, m, "zero_fill") for name, m in others]
    for scen in ("audio_missing", "visual_missing"):
        for label, m, meth in lines:
            accs = []
            for r in SWEEP_RATIOS:
                qs, preds = predict(m, test, scen, meth, limit=SWEEP_QUESTIONS, ratio=r, seed=seed)
                accs.append(score(test, qs, preds)["overall"])
            rows.setdefault(scen, {})[label] = accs
            console.print(f"sweep {scen} {label}: " + " ".join(f"{a:.3f}" for a in accs))
    return {"ratios": list(SWEEP_RATIOS), "questions": min(SWEEP_QUESTIONS, len(test)), "accuracy": rows}


def plot_sweep(sweep: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, scen in zip(axes, ("audio_missing", "visual_missing")):
        for label, accs in sweep["accuracy"][scen].items():
            ax.plot([100 * r for r in sweep["ratios"]], accs, marker="o", label=label)
        ax.set_title(scen), ax.set_xlabel("segments missing (%)"), ax.legend()
    axes[0].set_ylabel("accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
