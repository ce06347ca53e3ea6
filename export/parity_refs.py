"""Torch-free parity: a backend's outputs against the PyTorch references stored in the bundle.

At export, the parity gate (export/parity.py) runs PyTorch on the calibration set; what it
compares against is stored in the bundle, so the same comparison runs later where torch is
absent (the device that builds and runs the TensorRT engines):

    references/components.npz   per component, per calibration sample i: the feed
                                "<component>/<i>/in/<input>" and PyTorch's outputs
                                "<component>/<i>/out/<output>" (the gate's component cases)
    references/answers.npz      per scenario: PyTorch's answer logits "logits/<scenario>"
                                (Q, n_answers) float32 on the calibration questions, and the
                                sensor masks the scenario used, "mask_a/<scenario>",
                                "mask_v/<scenario>" (N_clips, T) float32, 1 = present

Both are plain .npz (`np.load(path, allow_pickle=False)`), hashed in the manifest like every
file; manifest["references"] lists them. The comparison code (thresholds, result objects,
statistics, the report) lives here and is shared with the PyTorch-live gate, so both reach
their verdict the same way. With TensorRT, the engines are also compared with ONNX Runtime
on the same feeds (Polygraphy-style max / mean / median absolute and relative error per
output), reported beside the verdict and not gated.

Imports: numpy, the runtime and calibration/ only (never torch or toolkit), Python 3.8+.
Reports are written under new names (parity/<label>.<sha8>.md / .json) and the manifest is
rewritten last and atomically, so an interrupted run leaves a bundle that still verifies.
"""
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from avqa_edge.calibration.calibset import CalibrationSet
from avqa_edge.errors import BundleError, ConfigError, ParityError
from avqa_edge.runtime import atomic
from avqa_edge.runtime import bundle as B
from avqa_edge.runtime.pipeline import Pipeline
from avqa_edge.runtime.runners import OrtRunner, Runner

# name -> (which sensor is missing, fraction of its segments missing). The three
# scenarios, plus half of the segments missing, which exercises the per-segment blanking.
SCENARIOS: Dict[str, Tuple[str, float]] = {
    "complete": ("complete", 0.0), "audio_missing": ("audio_missing", 1.0), "visual_missing": ("visual_missing", 1.0),
    "audio_half_missing": ("audio_missing", 0.5), "visual_half_missing": ("visual_missing", 0.5),
}
PROVIDER = "CPUExecutionProvider"
REF_DIR = "references"
COMPONENTS_NPZ = f"{REF_DIR}/components.npz"
ANSWERS_NPZ = f"{REF_DIR}/answers.npz"
REPORT_DIR = "parity"
BACKEND_NAMES = {"torch": "PyTorch", "ort": "ONNX Runtime", "trt": "TensorRT"}
VERIFY_TRT = "avqa-edge parity BUNDLE --backend trt"

Case = Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]     # (feed, PyTorch's outputs)
Log = Callable[[str], None]


# ---- thresholds and results --------------------------------------------------------------------

@dataclass
class Thresholds:
    """Scale-free defaults (all configurable)."""
    fp32_max_abs_rms: float = 1e-4         # max |torch - ort| <= this x RMS(torch output)
    fp32_cosine: float = 0.99999
    fp32_agreement: float = 1.0            # answers; a disagreement is excused only at a near tie:
    tie_margin: float = 1e-4               # PyTorch's top-two probabilities within this
    fp16_agreement: float = 0.99
    fp16_tie_margin: float = 1e-3          # FP16 flips closer calls: excused (and listed) within this
    fp16_cosine: float = 0.999             # a sanity floor for the FP16 graphs (catches a broken graph)
    fp16_max_abs_rms: Optional[float] = None   # reported; not gated unless set

    def to_dict(self) -> Dict:
        return asdict(self)

    def margin(self, precision: str) -> float:
        """The near-tie margin for answer agreement at this precision."""
        return self.tie_margin if precision == "fp32" else self.fp16_tie_margin


@dataclass
class OutputComparison:
    """Error statistics of one output of one component graph against PyTorch."""
    component: str
    output: str
    precision: str
    samples: int
    max_abs: float
    mean_abs: float
    rms_ref: float
    max_abs_rms: float          # max_abs / rms_ref: the scale-free gate statistic
    mean_rel: float             # mean_abs / mean |ref|
    cosine: float
    failures: List[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.failures

    def to_dict(self) -> Dict:
        return dict(asdict(self), passed=bool(self))


@dataclass
class Agreement:
    """End-to-end answer agreement between the pipeline and PyTorch in one scenario."""
    scenario: str
    precision: str
    questions: int
    agree: int
    threshold: float
    excused: List[Dict] = field(default_factory=list)        # disagreements at a PyTorch near tie
    disagreements: List[Dict] = field(default_factory=list)  # every disagreement, excused or not
    logits_max_abs_rms: float = 0.0

    @property
    def rate(self) -> float:
        return self.agree / max(self.questions, 1)

    @property
    def counted_rate(self) -> float:
        """Agreement with excused near ties counted as agreeing."""
        return (self.agree + len(self.excused)) / max(self.questions, 1)

    def __bool__(self) -> bool:
        return self.counted_rate >= self.threshold - 1e-12

    def to_dict(self) -> Dict:
        return dict(asdict(self), rate=self.rate, counted_rate=self.counted_rate, passed=bool(self))


@dataclass
class CrossComparison:
    """One output of one component, TensorRT against ONNX Runtime on the same feeds
    (Polygraphy's statistics; reported, not gated). rel = |trt - ort| / |ort| over the
    elements where ort is not zero."""
    component: str
    output: str
    reference: str              # the ONNX graph ONNX Runtime ran (the one the engine was built from)
    samples: int
    max_abs: float
    mean_abs: float
    median_abs: float
    max_rel: float
    mean_rel: float
    median_rel: float
    finite: bool

    def to_dict(self) -> Dict:
        return asdict(self)


@dataclass
class ParityReport:
    outputs: List[OutputComparison]
    agreement: List[Agreement]
    thresholds: Thresholds
    info: Dict = field(default_factory=dict)
    cross: List[CrossComparison] = field(default_factory=list)
    references: Optional["References"] = field(default=None, repr=False, compare=False)   # what was compared against

    @property
    def passed(self) -> bool:
        return all(self.outputs) and all(self.agreement)

    def __bool__(self) -> bool:
        return self.passed

    def failures(self) -> List[str]:
        out = [f"{o.component}/{o.output} ({o.precision}): " + "; ".join(o.failures) for o in self.outputs if not o]
        for a in self.agreement:
            if not a:
                bad = [d for d in a.disagreements if d not in a.excused][:5]
                out.append(f"answers, {a.scenario} ({a.precision}): {a.counted_rate:.2%} agree, {a.threshold:.0%} needed; "
                           f"first disagreements: {bad}")
        return out

    def failed_components(self) -> List[str]:
        return sorted({o.component for o in self.outputs if not o})

    def to_dict(self) -> Dict:
        return {"passed": self.passed, "thresholds": self.thresholds.to_dict(), "info": self.info,
                "outputs": [o.to_dict() for o in self.outputs], "agreement": [a.to_dict() for a in self.agreement],
                "cross": [c.to_dict() for c in self.cross], "failures": self.failures()}

    def summary(self, report: Sequence[str] = ("parity.md", "parity.json")) -> Dict:
        """The short form recorded in manifest.json (`report`: the bundle-relative report files)."""
        worst = {}
        for prec in sorted({o.precision for o in self.outputs}):
            outs = [o for o in self.outputs if o.precision == prec]
            worst[prec] = {"max_abs_rms": max(o.max_abs_rms for o in outs), "min_cosine": min(o.cosine for o in outs)}
        return {"passed": self.passed, "provider": self.info.get("provider"), "thresholds": self.thresholds.to_dict(),
                "worst_component_error": worst,
                "agreement": {f"{a.precision}/{a.scenario}": round(a.rate, 6) for a in self.agreement},
                "failures": self.failures(), "report": list(report)}

    def to_markdown(self) -> str:
        th, info = self.thresholds, self.info
        ref = "PyTorch" + (" (stored references)" if info.get("references") == "stored" else "")
        lines = [f"# Parity: {ref} vs {info.get('backend_name', 'ONNX Runtime')} ({info.get('provider', PROVIDER)})", "",
                 f"**{'PASSED' if self.passed else 'FAILED'}**. Thresholds: FP32 max abs error <= {th.fp32_max_abs_rms:g} x RMS "
                 f"of the reference output, cosine >= {th.fp32_cosine}, answer agreement >= {th.fp32_agreement:.0%} "
                 f"(near ties within {th.tie_margin:g} excused and listed); FP16 agreement >= {th.fp16_agreement:.0%} "
                 f"(near ties within {th.fp16_tie_margin:g} excused), "
                 f"cosine >= {th.fp16_cosine}.", ""]
        lines += [f"Bundle model config {info.get('config_hash')}; calibration set: {info.get('clips')} clips, "
                  f"{info.get('questions')} questions; {info.get('component_samples')} samples per component; "
                  f"{info.get('seconds')} s.", ""]
        if not self.passed:
            lines += ["## Failures", ""] + [f"- {f}" for f in self.failures()] + [""]
        lines += ["## Per component", "",
                  "| component | output | precision | samples | max abs | mean abs | RMS ref | max abs / RMS | mean rel | cosine | pass |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for o in self.outputs:
            lines.append(f"| {o.component} | {o.output} | {o.precision} | {o.samples} | {o.max_abs:.3e} | {o.mean_abs:.3e} | "
                         f"{o.rms_ref:.3e} | {o.max_abs_rms:.3e} | {o.mean_rel:.3e} | {o.cosine:.8f} | {'yes' if o else 'NO'} |")
        lines += ["", "## End to end: answer agreement with `model(..., method=\"rmm+avr\")`", "",
                  "| scenario | precision | questions | agree | rate | excused near ties | logits max abs / RMS | pass |",
                  "|---|---|---|---|---|---|---|---|"]
        for a in self.agreement:
            lines.append(f"| {a.scenario} | {a.precision} | {a.questions} | {a.agree} | {a.rate:.2%} | {len(a.excused)} | "
                         f"{a.logits_max_abs_rms:.3e} | {'yes' if a else 'NO'} |")
        dis = [(a, d) for a in self.agreement for d in a.disagreements]
        if dis:
            lines += ["", "Disagreements (question index, PyTorch vs pipeline answer, PyTorch top-two probability gap):", ""]
            lines += [f"- {a.precision}/{a.scenario}: q{d['question']} {d['torch']} vs {d['pipeline']}, gap {d['gap']:.2e}"
                      f"{' (excused: near tie)' if d in a.excused else ''}" for a, d in dis]
        if self.cross:
            lines += ["", "## TensorRT vs ONNX Runtime on the same feeds (reported, not gated)", "",
                      "| component | output | ONNX graph | samples | max abs | mean abs | median abs | max rel | mean rel | median rel | finite |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for c in self.cross:
                lines.append(f"| {c.component} | {c.output} | {c.reference} | {c.samples} | {c.max_abs:.3e} | {c.mean_abs:.3e} | "
                             f"{c.median_abs:.3e} | {c.max_rel:.3e} | {c.mean_rel:.3e} | {c.median_rel:.3e} | "
                             f"{'yes' if c.finite else 'NO'} |")
        return "\n".join(lines) + "\n"


def gate(report: ParityReport, where: str = "") -> None:
    """Raise ParityError with a readable report unless the gate passed."""
    if report:
        return
    lines = "\n".join(f"  - {f}" for f in report.failures())
    raise ParityError(f"parity gate FAILED{' (' + where + ')' if where else ''}:\n{lines}")


# ---- statistics ---------------------------------------------------------------------------------

def compare(component: str, output: str, precision: str, refs: Sequence[np.ndarray], outs: Sequence[np.ndarray],
            th: Thresholds) -> OutputComparison:
    """Statistics of outs against refs (lists of per-sample arrays), judged by the thresholds."""
    r = np.concatenate([np.asarray(x, np.float64).ravel() for x in refs])
    o = np.concatenate([np.asarray(x, np.float64).ravel() for x in outs])
    d = np.abs(o - r)
    rms = float(np.sqrt(np.mean(r * r)))
    denom = float(np.linalg.norm(r) * np.linalg.norm(o))
    cos = float(np.dot(r, o) / denom) if denom > 0 else (1.0 if not d.any() else 0.0)
    res = OutputComparison(component, output, precision, len(refs), float(d.max()), float(d.mean()), rms,
                           float(d.max() / rms) if rms > 0 else float(d.max()), float(d.mean() / max(np.mean(np.abs(r)), 1e-30)), cos)
    if not np.all(np.isfinite(o)):
        res.failures.append("non-finite values in the graph's output")
    if precision == "fp32":
        if res.max_abs_rms > th.fp32_max_abs_rms:
            res.failures.append(f"max abs error {res.max_abs:.3e} = {res.max_abs_rms:.3e} x RMS > {th.fp32_max_abs_rms:g}")
        if cos < th.fp32_cosine:
            res.failures.append(f"cosine {cos:.8f} < {th.fp32_cosine}")
    else:
        if th.fp16_max_abs_rms is not None and res.max_abs_rms > th.fp16_max_abs_rms:
            res.failures.append(f"max abs error {res.max_abs_rms:.3e} x RMS > {th.fp16_max_abs_rms:g}")
        if cos < th.fp16_cosine:
            res.failures.append(f"cosine {cos:.8f} < {th.fp16_cosine}")
    return res


def cross_compare(component: str, output: str, reference: str, refs: Sequence[np.ndarray],
                  outs: Sequence[np.ndarray]) -> CrossComparison:
    """Polygraphy-style error statistics of outs (TensorRT) against refs (ONNX Runtime)."""
    r = np.concatenate([np.asarray(x, np.float64).ravel() for x in refs])
    o = np.concatenate([np.asarray(x, np.float64).ravel() for x in outs])
    d = np.abs(o - r)
    nz = np.abs(r) > 0
    rel = d[nz] / np.abs(r[nz]) if nz.any() else np.zeros(1)
    return CrossComparison(component, output, reference, len(refs), float(d.max()), float(d.mean()), float(np.median(d)),
                           float(rel.max()), float(rel.mean()), float(np.median(rel)), bool(np.all(np.isfinite(o))))


def agreement(scenario: str, precision: str, ref: np.ndarray, got: np.ndarray, answers: Sequence[str],
              threshold: float, tie_margin: Optional[float]) -> Agreement:
    """Argmax agreement; with tie_margin, a disagreement where PyTorch's top-two softmax
    probabilities are within it is excused (and listed)."""
    p = np.exp(ref - ref.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.concatenate([np.zeros_like(p), p], 1)
    gap = top2[:, 1] - top2[:, 0]
    r, g = ref.argmax(1), got.argmax(1)
    res = Agreement(scenario, precision, len(r), int((r == g).sum()), threshold)
    for i in np.nonzero(r != g)[0]:
        d = {"question": int(i), "torch": answers[r[i]], "pipeline": answers[g[i]], "gap": float(gap[i])}
        res.disagreements.append(d)
        if tie_margin is not None and gap[i] <= tie_margin:
            res.excused.append(d)
    rms = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2)))
    res.logits_max_abs_rms = float(np.abs(got - ref).max() / rms) if rms > 0 else 0.0
    return res


def pipeline_logits(pipe: Pipeline, calib: CalibrationSet, mask_a: np.ndarray, mask_v: np.ndarray,
                    method: str = "rmm+avr", case: Optional[str] = None) -> np.ndarray:
    """(Q, n_answers) logits of the pipeline, one question at a time, each window encoded
    once, under the per-clip masks (N_clips, T) (`case`: prompt_oracle's prompt set)."""
    out = np.zeros((calib.n_questions, len(pipe.answers)), np.float32)
    for clip, qs in enumerate(calib.questions_of_clip()):
        if not qs:
            continue
        feats = pipe.encode(calib.frames[clip], calib.audio[clip], mask_a[clip], mask_v[clip])
        for qi in qs:
            out[qi] = pipe.answer_features(feats, calib.tokens[qi], method, case=case).logits
    return out


# ---- stored references --------------------------------------------------------------------------

@dataclass
class References:
    """What the PyTorch gate compares against: component cases, answer logits and the masks
    of each scenario."""
    cases: Dict[str, List[Case]]                          # {component: [(feed, outputs)]}
    logits: Dict[str, np.ndarray]                         # {scenario: (Q, n_answers) float32}
    masks: Dict[str, Tuple[np.ndarray, np.ndarray]]       # {scenario: ((N, T), (N, T)) float32}

    @property
    def scenarios(self) -> List[str]:
        return list(self.logits)


def _save_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + atomic.TMP_SUFFIX)
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    atomic.commit_file(tmp, path)


def save_references(bundle_dir, refs: References) -> List[str]:
    """references/components.npz + references/answers.npz. -> their bundle-relative paths."""
    root = Path(bundle_dir)
    (root / REF_DIR).mkdir(parents=True, exist_ok=True)
    comp: Dict[str, np.ndarray] = {}
    for name, cases in refs.cases.items():
        for i, (feed, outs) in enumerate(cases):
            comp.update({f"{name}/{i:03d}/in/{k}": np.asarray(v) for k, v in feed.items()})
            comp.update({f"{name}/{i:03d}/out/{k}": np.asarray(v) for k, v in outs.items()})
    ans: Dict[str, np.ndarray] = {}
    for s in refs.logits:
        ans[f"logits/{s}"] = np.asarray(refs.logits[s], np.float32)
        ans[f"mask_a/{s}"], ans[f"mask_v/{s}"] = (np.asarray(m, np.float32) for m in refs.masks[s])
    _save_npz(root / COMPONENTS_NPZ, comp)
    _save_npz(root / ANSWERS_NPZ, ans)
    return [COMPONENTS_NPZ, ANSWERS_NPZ]


def references_record(refs: References) -> Dict:
    """manifest["references"]: the files and what they hold."""
    return {"components": COMPONENTS_NPZ, "answers": ANSWERS_NPZ, "scenarios": refs.scenarios, "method": "rmm+avr",
            "samples": {c: len(v) for c, v in refs.cases.items()},
            "format": "npz: <component>/<i>/in|out/<tensor>; logits|mask_a|mask_v/<scenario>"}


def load_references(bundle: B.Bundle) -> References:
    """The stored references of a (verified) bundle; BundleError when it has none."""
    rec = bundle.manifest.get("references") or {}
    if not rec:
        raise BundleError(f"bundle {bundle.path} holds no PyTorch references (exported before they were stored): "
                          "re-export it with `avqa-edge export RUN_DIR --out BUNDLE`, or run the live gate "
                          "where torch and the run are: `avqa-edge parity BUNDLE --backend torch`")
    cases: Dict[str, Dict[int, Case]] = {}
    with np.load(bundle.path / rec["components"], allow_pickle=False) as z:
        for key in z.files:
            name, i, side, tensor = key.split("/")
            feed, outs = cases.setdefault(name, {}).setdefault(int(i), ({}, {}))
            (feed if side == "in" else outs)[tensor] = z[key]
    logits, masks = {}, {}
    with np.load(bundle.path / rec["answers"], allow_pickle=False) as z:
        for s in rec["scenarios"]:
            logits[s] = z[f"logits/{s}"]
            masks[s] = (z[f"mask_a/{s}"], z[f"mask_v/{s}"])
    ordered = {c: [cases[c][i] for i in sorted(cases[c])] for c in bundle.graphs if c in cases}
    missing = [c for c in bundle.graphs if c not in ordered]
    if missing:
        raise BundleError(f"bundle {bundle.path}: the stored references lack components {missing}; re-export it")
    return References(ordered, logits, masks)


# ---- comparing runner sets against references -----------------------------------------------------

def compare_sets(refs: References, sets: Dict[str, Dict[str, Runner]], calib: CalibrationSet,
                 vocabulary: Sequence[str], answers: Sequence[str], model_config: Dict, th: Thresholds,
                 scenarios: Iterable[str], log: Log = lambda *_: None) -> Tuple[List[OutputComparison], List[Agreement]]:
    """Each runner set {label: {component: runner}} against the references: every output of
    every component on its cases, and answer agreement per scenario ("fp32" is judged with
    the FP32 thresholds, any other label with the FP16 ones)."""
    outputs: List[OutputComparison] = []
    agree: List[Agreement] = []
    for precision, runners in sets.items():
        pipe = Pipeline(runners, vocabulary, answers, model_config, name=f"parity-{precision}")
        with pipe:
            for comp, cases in refs.cases.items():
                got = [runners[comp].infer(feed) for feed, _ in cases]
                for out_name in cases[0][1]:
                    outputs.append(compare(comp, out_name, precision, [ref[out_name] for _, ref in cases],
                                           [g[out_name] for g in got], th))
            for s in scenarios:
                got = pipeline_logits(pipe, calib, *refs.masks[s])
                thr = th.fp32_agreement if precision == "fp32" else th.fp16_agreement
                agree.append(agreement(s, precision, refs.logits[s], got, answers, thr, th.margin(precision)))
                log(f"  parity {precision} {s}: {agree[-1].rate:.2%} answers agree ({agree[-1].questions} questions)")
    return outputs, agree


def cross_check(refs: References, trt: Dict[str, Runner], ort: Dict[str, Runner],
                graphs: Dict[str, str]) -> List[CrossComparison]:
    """TensorRT against ONNX Runtime ({component: runner}, active) on the reference feeds."""
    out = []
    for comp, cases in refs.cases.items():
        a = [ort[comp].infer(feed) for feed, _ in cases]
        b = [trt[comp].infer(feed) for feed, _ in cases]
        for name in cases[0][1]:
            out.append(cross_compare(comp, name, graphs[comp], [x[name] for x in a], [y[name] for y in b]))
    return out


# ---- a bundle, torch-free ------------------------------------------------------------------------

def engine_graph_key(engine: Dict) -> str:
    """The bundle graph an engine was built from (its record's `onnx` key; else by route)."""
    return engine.get("onnx") or {"fp16_flag": "fp32"}.get(engine.get("route"), "fp16")


def _trt_sets(bundle: B.Bundle) -> Dict[str, Runner]:
    engines = bundle.manifest.get("engines") or {}
    missing = [c for c in bundle.graphs if c not in engines]
    if missing:
        raise BundleError(f"bundle {bundle.path} has no TensorRT engines for {missing}: build them on the device "
                          f"with `avqa-edge export --trt --from-bundle {bundle.path}`")
    from avqa_edge.runtime import trt
    fp = bundle.manifest.get("fingerprint") or None
    return {c: trt.TrtRunner(bundle.engine_path(c), fingerprint=fp, name=f"{c} (trt)") for c in bundle.graphs}


def stored_parity(bundle_dir, backend: str = "ort", precisions: Optional[Sequence[str]] = None,
                  thresholds: Optional[Thresholds] = None, scenarios: Optional[Sequence[str]] = None,
                  threads: int = 0, log: Log = print) -> ParityReport:
    """Compare `backend` ("ort": ONNX Runtime on the FP32 and/or FP16 graphs; "trt": the
    TensorRT engines, FP16) with the bundle's stored PyTorch references. With "trt", the
    engines are also compared with ONNX Runtime on the graphs they were built from."""
    if backend not in ("ort", "trt"):
        raise ConfigError(f"torch-free parity runs backend ort or trt, got {backend!r}")
    precisions = list(precisions or (("fp32", "fp16") if backend == "ort" else ("fp16",)))
    bad = [p for p in precisions if p not in B.PRECISIONS]
    if bad or (backend == "trt" and precisions != ["fp16"]):
        raise ConfigError(f"--precision: {'TensorRT engines are fp16' if backend == 'trt' else 'fp32 or fp16'}, got {precisions}")
    th = thresholds or Thresholds()
    t0 = time.perf_counter()
    bundle = B.Bundle.open(bundle_dir, verify=True)
    refs = load_references(bundle)
    scenarios = list(scenarios or refs.scenarios)
    unknown = [s for s in scenarios if s not in refs.logits]
    if unknown:
        raise ConfigError(f"no stored references for scenarios {unknown}; stored: {refs.scenarios}")
    calib = CalibrationSet.load(bundle.path / bundle.manifest["calibration"]["dir"])

    def ort_set(key: str) -> Dict[str, Runner]:
        return {c: OrtRunner(bundle.graph_path(c, key), threads=threads, providers=[PROVIDER], name=f"{c} ({key})")
                for c in bundle.graphs}

    cross: List[CrossComparison] = []
    cross_note = ""
    if backend == "ort":
        sets = {p: ort_set(p) for p in precisions}
    else:
        trt_runners = _trt_sets(bundle)
        sets = {"fp16": trt_runners}
        cross, cross_note = _cross_with_ort(bundle, refs, trt_runners, threads)
        if cross_note:
            log(f"  {cross_note}")
    log(f"parity: {BACKEND_NAMES[backend]} ({', '.join(precisions)}) vs the stored PyTorch references, "
        f"{len(scenarios)} scenarios")
    outputs, agree = compare_sets(refs, sets, calib, bundle.vocabulary, bundle.answers, bundle.model_config, th,
                                  scenarios, log)
    info = {"provider": "TensorRT" if backend == "trt" else PROVIDER, "backend": backend,
            "backend_name": BACKEND_NAMES[backend], "references": "stored", "precisions": precisions,
            "config_hash": bundle.manifest.get("config_hash"), "clips": calib.n_clips, "questions": calib.n_questions,
            "component_samples": len(refs.cases["visual"]),
            "scenarios": {s: {"missing": SCENARIOS[s][0], "fraction": SCENARIOS[s][1]} for s in scenarios if s in SCENARIOS},
            "method": "rmm+avr", "seconds": round(time.perf_counter() - t0, 1)}
    if backend == "trt":
        info["fingerprint"] = bundle.manifest.get("fingerprint") or {}
        info["trt_vs_ort"] = cross_note or "compared"
    return ParityReport(outputs, agree, th, info, cross)


def _cross_with_ort(bundle: B.Bundle, refs: References, trt_runners: Dict[str, Runner],
                    threads: int) -> Tuple[List[CrossComparison], str]:
    """TensorRT vs ONNX Runtime on the graphs the engines were built from, or why not."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return [], f"TensorRT vs ONNX Runtime not compared: onnxruntime is not installed here ({e})"
    keys = {c: engine_graph_key(bundle.manifest["engines"][c]) for c in bundle.graphs}
    ort = {c: OrtRunner(bundle.graph_path(c, keys[c]), threads=threads, providers=[PROVIDER], name=f"{c} (ort)")
           for c in bundle.graphs}
    runners = list(ort.values()) + list(trt_runners.values())
    for r in runners:
        r.__enter__()
    try:
        return cross_check(refs, trt_runners, ort, {c: bundle.components[c]["files"][keys[c]] for c in bundle.graphs}), ""
    finally:
        for r in runners:
            r.__exit__(None, None, None)


# ---- tables for the terminal ---------------------------------------------------------------------

def parity_table(report: ParityReport):
    """A rich Table of the per-component statistics."""
    from rich.table import Table
    ref = "PyTorch" + (" (stored)" if report.info.get("references") == "stored" else "")
    table = Table(title=f"parity: {ref} vs {report.info.get('backend_name', 'ONNX Runtime')} ({report.info.get('provider')})")
    for col in ("component", "output", "precision", "max abs", "max abs / RMS", "mean rel", "cosine", "pass"):
        table.add_column(col)
    for o in report.outputs:
        table.add_row(o.component, o.output, o.precision, f"{o.max_abs:.2e}", f"{o.max_abs_rms:.2e}",
                      f"{o.mean_rel:.2e}", f"{o.cosine:.8f}", "yes" if o else "[red]NO[/red]")
    return table


def cross_table(report: ParityReport):
    """A rich Table of TensorRT vs ONNX Runtime (Polygraphy's statistics)."""
    from rich.table import Table
    table = Table(title="TensorRT vs ONNX Runtime, same feeds (reported, not gated)")
    for col in ("component", "output", "ONNX graph", "max abs", "mean abs", "median abs", "max rel", "mean rel", "median rel"):
        table.add_column(col)
    for c in report.cross:
        table.add_row(c.component, c.output, c.reference, f"{c.max_abs:.2e}", f"{c.mean_abs:.2e}", f"{c.median_abs:.2e}",
                      f"{c.max_rel:.2e}", f"{c.mean_rel:.2e}", f"{c.median_rel:.2e}")
    return table


# ---- writing reports and verdicts -----------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_report_files(bundle_dir, report: ParityReport, label: str) -> Tuple[str, str]:
    """parity/<label>.<sha8>.md and .json (new names, written atomically; the manifest does
    not list them yet). -> their bundle-relative paths."""
    root = Path(bundle_dir)
    blob = json.dumps(report.to_dict(), indent=2) + "\n"
    stem = f"{REPORT_DIR}/{label}.{hashlib.sha256(blob.encode()).hexdigest()[:8]}"
    (root / REPORT_DIR).mkdir(exist_ok=True)
    atomic.write_text(root / f"{stem}.json", blob)
    atomic.write_text(root / f"{stem}.md", report.to_markdown())
    return f"{stem}.md", f"{stem}.json"


def commit_manifest(bundle_dir, manifest: Dict, added: Sequence[str], dropped: Sequence[str]) -> Dict:
    """Hash `added`, drop `dropped` from the file list, write the manifest (atomically, last),
    then delete the dropped files that no record refers to any more."""
    files = {k: v for k, v in (manifest.get("files") or {}).items() if k not in set(dropped)}
    manifest = dict(manifest, files=files)
    manifest = B.update_files(bundle_dir, manifest, list(added))
    for rel in dropped:
        if rel not in manifest["files"]:
            try:
                (Path(bundle_dir) / rel).unlink()
            except FileNotFoundError:
                pass
    return manifest


def _report_files(rec: Optional[Dict]) -> List[str]:
    """The report files a manifest record refers to ("report" and "json", or a list)."""
    if not rec:
        return []
    rep = rec.get("report")
    files = list(rep) if isinstance(rep, (list, tuple)) else [rep]
    return [f for f in files + [rec.get("json")] if f]


def engine_verdicts(report: ParityReport, components: Sequence[str], report_md: str, report_json: str,
                    manifest: Dict) -> Dict[str, Dict]:
    """{component: verdict} for manifest["engines"][component]["parity"]: an engine passes
    when each of its outputs passes and the engines together pass answer agreement."""
    answers_ok = all(report.agreement)
    files = manifest.get("files") or {}
    engines = manifest.get("engines") or {}
    out = {}
    for c in components:
        outs = [o for o in report.outputs if o.component == c]
        own = bool(outs) and all(outs)
        cross = {x.output: {"max_abs": x.max_abs, "median_abs": x.median_abs, "max_rel": x.max_rel}
                 for x in report.cross if x.component == c}
        out[c] = {"passed": own and answers_ok, "precision": "fp16", "report": report_md, "json": report_json,
                  "outputs_passed": own, "answers_passed": answers_ok, "checked": _now(),
                  "engine_sha256": (files.get(engines.get(c, {}).get("file")) or {}).get("sha256"),
                  "max_abs_rms": max((o.max_abs_rms for o in outs), default=None),
                  "min_cosine": min((o.cosine for o in outs), default=None),
                  "failures": [f for f in report.failures() if f.startswith(f"{c}/") or f.startswith("answers")],
                  "vs_onnxruntime": cross}
    return out


def record_parity(bundle_dir, report: ParityReport, backend: str) -> Dict:
    """Write the report under new names, then the manifest last: with "trt", each engine's
    verdict in manifest["engines"][c]["parity"]; with "ort", manifest["parity_checks"]["ort-<precisions>"].
    Reports the manifest referred to before are deleted once nothing refers to them. -> the manifest."""
    manifest = B.verify_bundle(bundle_dir)
    label = f"{backend}-{'+'.join(report.info.get('precisions', []))}"
    md, js = write_report_files(bundle_dir, report, label)
    manifest = dict(manifest)
    if backend == "trt":
        engines = {c: dict(rec) for c, rec in (manifest.get("engines") or {}).items()}
        old = [f for rec in engines.values() for f in _report_files(rec.get("parity"))]
        for c, verdict in engine_verdicts(report, list(engines), md, js, manifest).items():
            engines[c]["parity"] = verdict
        manifest["engines"] = engines
    else:
        checks = dict(manifest.get("parity_checks") or {})
        old = _report_files(checks.get(label))
        checks[label] = dict(report.summary([md, js]), checked=_now(), references="stored")
        manifest["parity_checks"] = checks
    still = {f for rec in (manifest.get("engines") or {}).values() for f in _report_files(rec.get("parity"))}
    still |= {f for rec in (manifest.get("parity_checks") or {}).values() for f in _report_files(rec)}
    still |= set(_report_files(manifest.get("parity")))
    return commit_manifest(bundle_dir, manifest, [md, js], [f for f in old if f not in still])
