"""The parity gate: PyTorch vs ONNX Runtime on the FP32 and the FP16 graphs.

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
failing gate raises ParityError with a report naming the component and output that failed.

This module needs torch (it runs PyTorch). What PyTorch produced here is stored in the
bundle at export, and the comparison code lives in export/parity_refs.py, torch-free, so
`avqa-edge parity BUNDLE --backend ort | trt` reaches its verdict the same way on a machine
without torch (docs/parity.md).
"""
import json
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from avqa_edge.calibration.calibset import CalibrationSet
from avqa_edge.errors import AvqaError, ConfigError, RunError
from avqa_edge.runtime import atomic
from avqa_edge.runtime import signal as sig
from avqa_edge.runtime.bundle import Bundle
from avqa_edge.runtime.pipeline import Pipeline
from avqa_edge.runtime.runners import OrtRunner, Runner

from ..toolkit.scoring import scenario_masks
from . import parity_refs as R
from .components import components_of
# The comparison itself is torch-free and shared with the stored-reference check.
from .parity_refs import (  # noqa: F401  (re-exported)
    PROVIDER,
    SCENARIOS,
    Agreement,
    OutputComparison,
    ParityReport,
    References,
    Thresholds,
    agreement,
    compare,
    gate,
)


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
def torch_logits(model, calib: CalibrationSet, scenario: str, batch_size: int = 64, method: str = "rmm+avr",
                 masks: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """(Q, n_answers) logits of `model(batch, mask_a, mask_v, method)` on the calibration set."""
    ma_all, mv_all = masks if masks is not None else _masks(scenario, calib.n_clips, model.cfg.t_segments)
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
    """(Q, n_answers) logits of the pipeline in a named scenario (`case`: prompt_oracle's prompt set)."""
    return R.pipeline_logits(pipe, calib, *_masks(scenario, calib.n_clips, pipe.t), method=method, case=case)


def torch_references(model, calib: CalibrationSet, scenarios: Iterable[str] = tuple(SCENARIOS),
                     component_samples: int = 8) -> References:
    """What the gate compares against, from PyTorch: the component cases, and per scenario
    its masks and `model(..., method="rmm+avr")`'s logits. Stored in the bundle at export."""
    model.eval()
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ConfigError(f"unknown parity scenarios {unknown}; known: {list(SCENARIOS)}")
    masks = {s: _masks(s, calib.n_clips, model.cfg.t_segments) for s in scenarios}
    logits = {s: torch_logits(model, calib, s, masks=masks[s]) for s in scenarios}
    return References(component_cases(model, calib, component_samples), logits, masks)


# ---- the gate ----------------------------------------------------------------------------------

def run_parity(model, graphs: Dict[str, Dict[str, Path]], calib: CalibrationSet, vocabulary: Sequence[str],
               answers: Sequence[str], thresholds: Optional[Thresholds] = None, scenarios: Iterable[str] = tuple(SCENARIOS),
               component_samples: int = 8, threads: int = 0, log: Callable[[str], None] = lambda *_: None,
               runner_sets: Optional[Dict[str, Dict[str, Runner]]] = None,
               references: Optional[References] = None) -> ParityReport:
    """Compare the PyTorch model with the ONNX graphs {precision: {component: path}} (run by
    ONNX Runtime's CPU provider) and with other backends' runners {label: {component:
    runner}} (e.g. "trt": TensorRT engines, judged with the FP16 thresholds) on `calib`.
    `references`: PyTorch's outputs computed already (torch_references); the report's
    `references` attribute holds them either way (export stores them in the bundle)."""
    th = thresholds or Thresholds()
    t0 = time.perf_counter()
    scenarios = list(scenarios)
    refs = references if references is not None else torch_references(model, calib, scenarios, component_samples)
    sets = {prec: {c: OrtRunner(path, threads=threads, providers=[PROVIDER], name=f"{c} ({prec})")
                   for c, path in paths.items()} for prec, paths in graphs.items()}
    sets.update(runner_sets or {})
    outputs, agree = R.compare_sets(refs, sets, calib, vocabulary, answers, model.cfg.to_dict(), th, scenarios, log)
    info = {"provider": PROVIDER, "config_hash": model.cfg.hash(), "clips": calib.n_clips, "questions": calib.n_questions,
            "component_samples": len(refs.cases["visual"]), "scenarios": {s: {"missing": SCENARIOS[s][0], "fraction": SCENARIOS[s][1]}
                                                                        for s in scenarios},
            "method": "rmm+avr", "precisions": list(sets), "seconds": round(time.perf_counter() - t0, 1)}
    return ParityReport(outputs, agree, th, info, references=refs)


def write_report(report: ParityReport, bundle_dir: Path, json_path: Optional[Path] = None) -> List[Path]:
    """parity.md + parity.json into a bundle being assembled (and the JSON also to json_path)."""
    md, js = Path(bundle_dir) / "parity.md", Path(bundle_dir) / "parity.json"
    atomic.write_text(md, report.to_markdown())
    blob = json.dumps(report.to_dict(), indent=2) + "\n"
    atomic.write_text(js, blob)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(json_path, blob)
    return [md, js]


def bundle_graphs(bundle: Bundle, precisions: Sequence[str] = ("fp32", "fp16")) -> Dict[str, Dict[str, Path]]:
    return {p: {c: bundle.graph_path(c, p) for c in bundle.graphs} for p in precisions}


def parity_for_bundle(bundle_dir, run_dir=None, thresholds: Optional[Thresholds] = None, json_path: Optional[Path] = None,
                      threads: int = 0, log: Callable[[str], None] = print,
                      scenarios: Optional[Sequence[str]] = None) -> ParityReport:
    """`avqa-edge parity --backend torch`: verify the bundle, load the PyTorch model (from
    `run_dir` or the run recorded in the manifest), run the live gate, write the report under
    new names (parity/torch.<sha8>.md / .json) and its summary into the manifest, last.
    Returns the report (the caller decides whether to raise)."""
    from ..toolkit.checkpoint import load_model

    bundle = Bundle.open(bundle_dir, verify=True)
    run = Path(run_dir) if run_dir is not None else Path((bundle.manifest.get("run") or {}).get("dir", ""))
    if not str(run) or not run.is_dir():
        raise RunError(f"parity needs the PyTorch run the bundle came from; {run} not found: pass --run RUN_DIR "
                       "(or compare with the stored references, torch-free: --backend ort | trt)")
    model, _ = load_model(run)
    want = bundle.manifest.get("config_hash")
    if model.cfg.hash() != want:
        raise RunError(f"the run {run} has model config {model.cfg.hash()}, the bundle {want}: not the same model")
    calib = CalibrationSet.load(bundle.path / bundle.manifest["calibration"]["dir"])
    trt_runners, trt_note = _trt_runners(bundle)
    if trt_note:
        log(trt_note)
    report = run_parity(model, bundle_graphs(bundle), calib, bundle.vocabulary, bundle.answers, thresholds,
                        scenarios=tuple(scenarios or SCENARIOS), threads=threads, log=log, runner_sets=trt_runners)
    report.info["tensorrt"] = trt_note or "engines compared"
    md, js = R.write_report_files(bundle.path, report, "torch")
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(json_path, (bundle.path / js).read_text())
    old = R._report_files(bundle.manifest.get("parity"))
    manifest = dict(bundle.manifest, parity=report.summary([md, js]))
    R.commit_manifest(bundle.path, manifest, [md, js], [f for f in old if f not in (md, js)])
    report.info["report"] = md
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
