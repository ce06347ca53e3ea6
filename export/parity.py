"""The parity gate: PyTorch vs ONNX Runtime on the FP32 and the FP16 graphs (issue 3, section 2).

Two levels, both on the bundle's calibration set:
- per component and output: max / mean absolute error, the max error relative to the RMS of
  the reference output, the mean relative error and the cosine similarity, with the graph
  fed exactly the inputs the PyTorch part saw (the AVR reference is `model.enhance`, the
  model's own path, which skips fully known segments; the graph runs every segment);
- end to end: answer agreement between `runtime.pipeline.Pipeline` (numpy + the graphs) and
  `model(batch, mask_a, mask_v, method="rmm+avr")`, in each scenario.

FP16 is measured by running the FP16 ONNX graphs in ONNX Runtime's CPU provider, never by
casting the PyTorch model to half. (ORT's CPU provider runs the ops it has no float16
kernel for in float32 between float16 tensors, so the error measured is float16 storage and
rounding with float32 accumulation, as TensorRT's FP16 kernels accumulate.)

Results are objects that are truthy when they pass (Polygraphy's CompareFunc habit); a
failing gate raises AvqaError with a report naming the component and output that failed.
"""
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from avqa_edge.calibration.calibset import CalibrationSet
from avqa_edge.errors import AvqaError
from avqa_edge.runtime import signal as sig
from avqa_edge.runtime.bundle import Bundle
from avqa_edge.runtime.pipeline import Pipeline
from avqa_edge.runtime.runners import OrtRunner, Runner

from ..toolkit.scoring import scenario_masks
from .components import components_of

# name -> (which sensor is missing, fraction of its segments missing). The three
# scenarios, plus half of the segments missing, which exercises the per-segment blanking.
SCENARIOS: Dict[str, Tuple[str, float]] = {
    "complete": ("complete", 0.0), "audio_missing": ("audio_missing", 1.0), "visual_missing": ("visual_missing", 1.0),
    "audio_half_missing": ("audio_missing", 0.5), "visual_half_missing": ("visual_missing", 0.5),
}
PROVIDER = "CPUExecutionProvider"


@dataclass
class Thresholds:
    """Scale-free defaults of issue 3, section 2 (all configurable)."""
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
class ParityReport:
    outputs: List[OutputComparison]
    agreement: List[Agreement]
    thresholds: Thresholds
    info: Dict = field(default_factory=dict)

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

    def to_dict(self) -> Dict:
        return {"passed": self.passed, "thresholds": self.thresholds.to_dict(), "info": self.info,
                "outputs": [o.to_dict() for o in self.outputs], "agreement": [a.to_dict() for a in self.agreement],
                "failures": self.failures()}

    def summary(self) -> Dict:
        """The short form recorded in manifest.json."""
        worst = {}
        for prec in sorted({o.precision for o in self.outputs}):
            outs = [o for o in self.outputs if o.precision == prec]
            worst[prec] = {"max_abs_rms": max(o.max_abs_rms for o in outs), "min_cosine": min(o.cosine for o in outs)}
        return {"passed": self.passed, "provider": self.info.get("provider"), "thresholds": self.thresholds.to_dict(),
                "worst_component_error": worst,
                "agreement": {f"{a.precision}/{a.scenario}": round(a.rate, 6) for a in self.agreement},
                "failures": self.failures(), "report": ["parity.md", "parity.json"]}

    def to_markdown(self) -> str:
        th = self.thresholds
        lines = [f"# Parity: PyTorch vs ONNX Runtime ({self.info.get('provider', PROVIDER)})", "",
                 f"**{'PASSED' if self.passed else 'FAILED'}**. Thresholds: FP32 max abs error <= {th.fp32_max_abs_rms:g} x RMS "
                 f"of the reference output, cosine >= {th.fp32_cosine}, answer agreement >= {th.fp32_agreement:.0%} "
                 f"(near ties within {th.tie_margin:g} excused and listed); FP16 agreement >= {th.fp16_agreement:.0%} "
                 f"(near ties within {th.fp16_tie_margin:g} excused), "
                 f"cosine >= {th.fp16_cosine}.", ""]
        info = self.info
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
        return "\n".join(lines) + "\n"


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


# ---- reference data --------------------------------------------------------------------------

def _masks(scenario: str, n_clips: int, t: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    base, ratio = SCENARIOS[scenario]
    return scenario_masks(base, n_clips, t, ratio=ratio or 1.0, seed=seed)


@torch.no_grad()
def component_cases(model, calib: CalibrationSet, n_samples: int = 8) -> Dict[str, List[Tuple[Dict, Dict]]]:
    """{component: [(feed, reference outputs)]} from PyTorch on calibration clips.

    Encoders and RMM see real features; AVR sees RMM-filled pairs with audio or video
    missing (whole or half of the segments, alternating), its reference being
    `model.enhance`; the backbone sees both the complete and the enhanced features; a video
    expert sees the audio with the recalled video, raw and enhanced (its own case)."""
    cases: Dict[str, List[Tuple[Dict, Dict]]] = {c: [] for c in components_of(model)}
    t = model.cfg.t_segments
    first_q = {}
    for i, c in enumerate(calib.clip.tolist()):
        first_q.setdefault(c, i)
    clips = sorted(first_q)[:n_samples]
    missing = ["audio_missing", "visual_missing", "audio_half_missing", "visual_half_missing"]

    def np_(x):
        return x.detach().cpu().numpy()

    for k, clip in enumerate(clips):
        frames = torch.from_numpy(calib.frames[clip:clip + 1])
        audio = torch.from_numpy(sig.pcm16_to_float(calib.audio[clip:clip + 1]))
        tokens = torch.from_numpy(calib.tokens[first_q[clip]:first_q[clip] + 1])
        v = model.visual_encoder(frames)
        a = model.audio_encoder(audio)
        q = model.question_encoder(tokens)
        cases["visual"].append(({"frames": np_(frames)}, {"v": np_(v)}))
        cases["audio"].append(({"audio": np_(audio)}, {"a": np_(a)}))
        cases["question"].append(({"tokens": np_(tokens)}, {"q": np_(q)}))
        pa, pv = model.rmm.pseudo_audio(v, q), model.rmm.pseudo_visual(a, q)
        cases["rmm_audio"].append(({"v": np_(v), "q": np_(q)}, {"pseudo_a": np_(pa)}))
        cases["rmm_visual"].append(({"a": np_(a), "q": np_(q)}, {"pseudo_v": np_(pv)}))
        ma, mv = (torch.from_numpy(m[k:k + 1]) for m in _masks(missing[k % len(missing)], len(clips), t, seed=k))
        a_hat = ma[..., None] * a + (1 - ma[..., None]) * pa
        v_hat = mv[..., None, None, None] * v + (1 - mv[..., None, None, None]) * pv
        ea, ev = model.enhance(a_hat, v_hat, ma, mv)
        cases["avr"].append(({"a": np_(a_hat), "v": np_(v_hat), "known_a": np_(ma), "known_v": np_(mv)},
                             {"a_out": np_(ea), "v_out": np_(ev)}))
        cases["backbone"].append(({"a": np_(a), "v": np_(v), "q": np_(q)}, {"logits": np_(model.backbone(a, v, q))}))
        cases["backbone"].append(({"a": np_(ea), "v": np_(ev), "q": np_(q)}, {"logits": np_(model.backbone(ea, ev, q))}))
        if model.video_expert is not None:
            none = torch.zeros_like(mv)
            xa, xv = model.enhance(a, pv, torch.ones_like(ma), none)                      # the video missing throughout
            for fa, fv in ((a, pv), (xa, xv)):
                cases["video_expert"].append(({"a": np_(fa), "v": np_(fv), "q": np_(q)},
                                              {"logits": np_(model.video_expert(fa, fv, q))}))
    return cases


@torch.no_grad()
def torch_logits(model, calib: CalibrationSet, scenario: str, batch_size: int = 64, method: str = "rmm+avr") -> np.ndarray:
    """(Q, n_answers) logits of `model(batch, mask_a, mask_v, method)` on the calibration set."""
    ma_all, mv_all = _masks(scenario, calib.n_clips, model.cfg.t_segments)
    out = []
    for s in range(0, calib.n_questions, batch_size):
        qs = np.arange(s, min(s + batch_size, calib.n_questions))
        clips, inverse = np.unique(calib.clip[qs], return_inverse=True)
        batch = {"frames": torch.from_numpy(calib.frames[clips]),
                 "audio": torch.from_numpy(sig.pcm16_to_float(calib.audio[clips])),
                 "tokens": torch.from_numpy(calib.tokens[qs]),
                 "clip_index": torch.from_numpy(inverse.reshape(-1).astype(np.int64))}
        logits = model(batch, torch.from_numpy(ma_all[clips]), torch.from_numpy(mv_all[clips]), method=method)
        out.append(logits.numpy())
    return np.concatenate(out)


def pipeline_logits(pipe: Pipeline, calib: CalibrationSet, scenario: str, method: str = "rmm+avr",
                    case: Optional[str] = None) -> np.ndarray:
    """(Q, n_answers) logits of the pipeline, one question at a time, each window encoded once
    (`case`: prompt_oracle's prompt set)."""
    ma_all, mv_all = _masks(scenario, calib.n_clips, pipe.t)
    out = np.zeros((calib.n_questions, len(pipe.answers)), np.float32)
    for clip, qs in enumerate(calib.questions_of_clip()):
        if not qs:
            continue
        feats = pipe.encode(calib.frames[clip], calib.audio[clip], ma_all[clip], mv_all[clip])
        for qi in qs:
            out[qi] = pipe.answer_features(feats, calib.tokens[qi], method, case=case).logits
    return out


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


# ---- the gate ----------------------------------------------------------------------------------

def run_parity(model, graphs: Dict[str, Dict[str, Path]], calib: CalibrationSet, vocabulary: Sequence[str],
               answers: Sequence[str], thresholds: Optional[Thresholds] = None, scenarios: Iterable[str] = tuple(SCENARIOS),
               component_samples: int = 8, threads: int = 0, log: Callable[[str], None] = lambda *_: None,
               runner_sets: Optional[Dict[str, Dict[str, Runner]]] = None) -> ParityReport:
    """Compare the PyTorch model with the ONNX graphs {precision: {component: path}} (run by
    ONNX Runtime's CPU provider) and with other backends' runners {label: {component:
    runner}} (e.g. "trt": TensorRT engines, judged with the FP16 thresholds) on `calib`."""
    th = thresholds or Thresholds()
    t0 = time.perf_counter()
    model.eval()
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise AvqaError(f"unknown parity scenarios {unknown}; known: {list(SCENARIOS)}")
    cases = component_cases(model, calib, component_samples)
    ref_logits = {s: torch_logits(model, calib, s) for s in scenarios}
    outputs: List[OutputComparison] = []
    agree: List[Agreement] = []
    sets = {prec: {c: OrtRunner(path, threads=threads, providers=[PROVIDER], name=f"{c} ({prec})")
                   for c, path in paths.items()} for prec, paths in graphs.items()}
    sets.update(runner_sets or {})
    for precision, runners in sets.items():
        pipe = Pipeline(runners, vocabulary, answers, model.cfg.to_dict(), name=f"ort-{precision}")
        with pipe:
            for comp in cases:
                got = [runners[comp].infer(feed) for feed, _ in cases[comp]]
                for out_name in cases[comp][0][1]:
                    outputs.append(compare(comp, out_name, precision, [ref[out_name] for _, ref in cases[comp]],
                                           [g[out_name] for g in got], th))
            for s in scenarios:
                got = pipeline_logits(pipe, calib, s)
                thr = th.fp32_agreement if precision == "fp32" else th.fp16_agreement
                agree.append(agreement(s, precision, ref_logits[s], got, answers, thr, th.margin(precision)))
                log(f"  parity {precision} {s}: {agree[-1].rate:.2%} answers agree ({agree[-1].questions} questions)")
    info = {"provider": PROVIDER, "config_hash": model.cfg.hash(), "clips": calib.n_clips, "questions": calib.n_questions,
            "component_samples": len(cases["visual"]), "scenarios": {s: {"missing": SCENARIOS[s][0], "fraction": SCENARIOS[s][1]}
                                                                    for s in scenarios},
            "method": "rmm+avr", "seconds": round(time.perf_counter() - t0, 1)}
    return ParityReport(outputs, agree, th, info)


def write_report(report: ParityReport, bundle_dir: Path, json_path: Optional[Path] = None) -> List[Path]:
    """parity.md + parity.json into the bundle (and the JSON also to json_path)."""
    md, js = Path(bundle_dir) / "parity.md", Path(bundle_dir) / "parity.json"
    md.write_text(report.to_markdown())
    blob = json.dumps(report.to_dict(), indent=2) + "\n"
    js.write_text(blob)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(blob)
    return [md, js]


def gate(report: ParityReport, where: str = "") -> None:
    """Raise AvqaError with a readable report unless the gate passed."""
    if report:
        return
    lines = "\n".join(f"  - {f}" for f in report.failures())
    raise AvqaError(f"parity gate FAILED{' (' + where + ')' if where else ''}:\n{lines}")


def bundle_graphs(bundle: Bundle, precisions: Sequence[str] = ("fp32", "fp16")) -> Dict[str, Dict[str, Path]]:
    return {p: {c: bundle.graph_path(c, p) for c in bundle.graphs} for p in precisions}


def parity_for_bundle(bundle_dir, run_dir=None, thresholds: Optional[Thresholds] = None, json_path: Optional[Path] = None,
                      threads: int = 0, log: Callable[[str], None] = print,
                      scenarios: Optional[Sequence[str]] = None) -> ParityReport:
    """`avqa-edge parity`: verify the bundle, load the PyTorch model (from `run_dir` or the
    run recorded in the manifest), run the gate, write parity.md / parity.json and the
    summary into the manifest. Returns the report (the caller decides whether to raise)."""
    from avqa_edge.runtime import bundle as B

    from ..toolkit.checkpoint import load_model

    bundle = Bundle.open(bundle_dir, verify=True)
    run = Path(run_dir) if run_dir is not None else Path((bundle.manifest.get("run") or {}).get("dir", ""))
    if not str(run) or not run.is_dir():
        raise AvqaError(f"parity needs the PyTorch run the bundle came from; {run} not found: pass --run RUN_DIR")
    model, _ = load_model(run)
    want = bundle.manifest.get("config_hash")
    if model.cfg.hash() != want:
        raise AvqaError(f"the run {run} has model config {model.cfg.hash()}, the bundle {want}: not the same model")
    calib = CalibrationSet.load(bundle.path / bundle.manifest["calibration"]["dir"])
    trt_runners, trt_note = _trt_runners(bundle)
    if trt_note:
        log(trt_note)
    report = run_parity(model, bundle_graphs(bundle), calib, bundle.vocabulary, bundle.answers, thresholds,
                        scenarios=tuple(scenarios or SCENARIOS), threads=threads, log=log, runner_sets=trt_runners)
    report.info["tensorrt"] = trt_note or "engines compared"
    paths = write_report(report, bundle.path, json_path)
    manifest = dict(bundle.manifest, parity=report.summary())
    B.update_files(bundle.path, manifest, [p.name for p in paths])
    return report


def _trt_runners(bundle: Bundle) -> Tuple[Optional[Dict[str, Dict[str, Runner]]], str]:
    """The bundle's TensorRT engines as a runner set {"trt": {component: runner}}, or why not."""
    engines = bundle.manifest.get("engines") or {}
    if not engines:
        return None, "no TensorRT engines in the bundle"
    if not set(bundle.graphs) <= set(engines):
        return None, (f"TensorRT engines for {sorted(engines)} only; the end-to-end comparison needs all of "
                      f"{list(bundle.graphs)}")
    try:
        from avqa_edge.runtime import trt
        fp = bundle.manifest.get("fingerprint") or None
        return {"trt": {c: trt.TrtRunner(bundle.engine_path(c), fingerprint=fp) for c in bundle.graphs}}, ""
    except (ImportError, AvqaError) as e:
        return None, f"TensorRT engines present but not compared here: {e}"
