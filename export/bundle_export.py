"""`avqa-edge export RUN_DIR --out BUNDLE`: the seven graphs (eight with a video expert),
their FP16 variants, the calibration set, the parity gate, PyTorch's reference outputs
(references/*.npz, for the torch-free check on the device) and the manifest.

Arguments are validated before any work. The bundle is assembled in a hidden sibling
directory and renamed into place only when complete, with manifest.json written last, so
an interrupted export never leaves a directory that looks like a bundle. Each artifact is
reported as it is written (path, size, seconds) and a summary table closes the export.
If the parity gate fails, the bundle is still put in place for inspection, its manifest
records the failure (the runtime refuses to load it), and AvqaError is raised with the
report.
"""
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional

from avqa_edge import __version__
from avqa_edge.calibration import calibset
from avqa_edge.errors import AvqaError
from avqa_edge.runtime import bundle as B
from avqa_edge.runtime import signal as sig
from avqa_edge.runtime.text import PAD, UNK

from . import components as C
from . import fp16 as fp16_pass
from . import onnx_export as OX
from . import parity as P
from . import parity_refs as R

Log = Callable[[str], None]


@dataclass
class ExportResult:
    bundle: Path
    artifacts: List[OX.Artifact]
    manifest: Dict
    parity: Optional[P.ParityReport] = None
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def validate_arguments(run_dir: Path, out_dir: Path, overwrite: bool, exporter: str, calib_clips: int) -> None:
    """Reject impossible requests before any work."""
    if not run_dir.is_dir():
        raise AvqaError(f"run directory {run_dir} not found")
    for name in ("config.json", "model.safetensors"):
        if not (run_dir / name).is_file():
            raise AvqaError(f"{run_dir / name} not found: is {run_dir} a finished `avqa-edge train` run?")
    if out_dir.exists() and not out_dir.is_dir():
        raise AvqaError(f"--out {out_dir} is a file, not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise AvqaError(f"--out {out_dir} exists and is not empty: choose another directory or pass --overwrite")
    if out_dir.resolve() == run_dir.resolve() or run_dir.resolve() in out_dir.resolve().parents:
        raise AvqaError("--out must not be the run directory or inside it")
    if exporter not in OX.EXPORTERS:
        raise AvqaError(f"exporter must be one of {OX.EXPORTERS}, got {exporter!r}")
    if calib_clips < 1:
        raise AvqaError("the calibration set needs at least one clip")


def _versions() -> Dict[str, str]:
    import numpy
    import onnx
    import onnxruntime
    import torch
    out = {"avqa_edge": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__, "python": platform.python_version()}
    try:
        import onnxscript
        out["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    return out


def export_bundle(run_dir, out_dir, log: Log = print, exporter: str = "auto", calib_clips: int = calibset.MIN_CLIPS,
                  calib_seed: int = 0, thresholds: Optional[P.Thresholds] = None, run_parity: bool = True,
                  overwrite: bool = False, threads: int = 0, raise_on_failure: bool = True) -> ExportResult:
    """Write the bundle for `run_dir` into `out_dir` and run the parity gate on it (raising
    AvqaError if it fails, unless `raise_on_failure` is False: then check `result.parity`)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    validate_arguments(run_dir, out_dir, overwrite, exporter, calib_clips)
    from ..toolkit.checkpoint import load_model

    t_start = time.perf_counter()
    model, config = load_model(run_dir)
    C.check_exportable(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "onnx").mkdir(parents=True)
    try:
        result = _assemble(model, config, run_dir, tmp, log, exporter, calib_clips, calib_seed, thresholds,
                           run_parity, threads)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.bundle = out_dir
    result.seconds = round(time.perf_counter() - t_start, 1)
    log(f"bundle written: {out_dir} ({_size(sum(a.bytes for a in result.artifacts))}, {result.seconds} s)")
    if raise_on_failure and result.parity is not None and not result.parity:
        P.gate(result.parity, f"the bundle in {out_dir} is marked as failed; see {out_dir / 'parity.md'}")
    return result


def _assemble(model, config: Dict, run_dir: Path, tmp: Path, log: Log, exporter: str, calib_clips: int,
              calib_seed: int, thresholds: Optional[P.Thresholds], run_parity: bool, threads: int) -> ExportResult:
    cfg = model.cfg
    specs = C.io_specs(model)
    artifacts: List[OX.Artifact] = []
    components: Dict[str, Dict] = {}

    def report(a: OX.Artifact) -> None:
        artifacts.append(a)
        extra = f"  opset {a.opset}, {a.exporter}, {a.nodes} nodes" if a.opset else ""
        log(f"  wrote {a.path:<34} {_size(a.bytes):>10}  {a.seconds:6.2f} s{extra}")

    names = C.components_of(model)
    log(f"exporting {run_dir} (model config {cfg.hash()}): {len(names)} graphs at opset {OX.OPSET}, batch 1")
    for name in names:
        fp32_rel, fp16_rel = f"onnx/{name}.onnx", f"onnx/{name}.fp16.onnx"
        a32 = OX.EXPORT_FUNCTIONS[name](model, tmp / fp32_rel, exporter=exporter)
        a32.path = fp32_rel
        report(a32)
        a16 = OX.export_fp16(tmp / fp32_rel, tmp / fp16_rel, name, specs[name], cfg.hash())
        a16.path = fp16_rel
        report(a16)
        files = {"fp32": fp32_rel, "fp16": fp16_rel}
        a_ln = _without_layernorm(tmp, fp32_rel, name, specs[name], cfg.hash())
        if a_ln is not None:             # TensorRT 8.5 (JetPack 5) cannot parse LayerNormalization
            report(a_ln)
            files["fp32_nolayernorm"] = a_ln.path
        components[name] = {"inputs": [s.to_dict() for s in specs[name][0]],
                            "outputs": [s.to_dict() for s in specs[name][1]],
                            "files": files, "exporter": a32.exporter,
                            "opset": a32.opset, "nodes": {"fp32": a32.nodes, "fp16": a16.nodes}}
    components["avr"].update(reverse_steps=cfg.diffusion_steps,
                             noise="constant in the graph: model.avr_noise (seed 1234), (T, 2C, H', W')",
                             segments="all T segments run (the PyTorch path skips fully known ones, an exact shortcut)")

    t0 = time.perf_counter()
    calib = calibset.build_from_run(run_dir, calib_clips, calib_seed, log=log)
    paths = calib.save(tmp / "calibration")
    for p in paths:
        report(OX.Artifact(path=f"calibration/{p.name}", component="calibration", precision="data",
                           bytes=p.stat().st_size, seconds=round(time.perf_counter() - t0, 3)))

    parity_report = None
    if run_parity:
        log("parity gate: PyTorch vs ONNX Runtime (CPU), FP32 and FP16 graphs, on the calibration set")
        graphs = {p: {c: tmp / components[c]["files"][p] for c in names} for p in B.PRECISIONS}
        vocab = [PAD, UNK] + list(cfg.vocab)
        parity_report = P.run_parity(model, graphs, calib, vocab, cfg.answers, thresholds, threads=threads, log=log)
        t0 = time.perf_counter()
        for rel in R.save_references(tmp, parity_report.references):     # for the torch-free check on the device
            report(OX.Artifact(path=rel, component="references", precision="data", bytes=(tmp / rel).stat().st_size,
                               seconds=round(time.perf_counter() - t0, 3)))
        t0 = time.perf_counter()
        for p in P.write_report(parity_report, tmp):
            report(OX.Artifact(path=p.name, component="parity", precision="data", bytes=p.stat().st_size,
                               seconds=round(time.perf_counter() - t0, 3)))

    manifest = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": _versions(),
        "opset": OX.OPSET,
        "batch": 1,
        "run": {"dir": str(run_dir.resolve()), "model_hash": config.get("model_hash"),
                "data": (config.get("data") or {}).get("kind")},
        "config_hash": cfg.hash(),
        "model": cfg.to_dict(),
        "vocabulary": [PAD, UNK] + list(cfg.vocab),
        "answers": list(cfg.answers),
        "signal": {"sample_rate": sig.SAMPLE_RATE, "segment_samples": sig.SEGMENT_SAMPLES, "t_segments": cfg.t_segments,
                   "frames_per_segment": sig.FRAMES_PER_SEGMENT, "frame_h": sig.FRAME_H, "frame_w": sig.FRAME_W},
        "components": components,
        "fp16": {"converter": "avqa_edge.export.fp16", "io": "float32 (uint8 / int64 inputs unchanged)",
                 "fp32_ops": list(fp16_pass.BLOCK_OPS), "fp32_upstream_of": dict(fp16_pass.FP32_UPSTREAM_OF)},
        "calibration": {"dir": "calibration", "clips": calib.n_clips, "questions": calib.n_questions,
                        "source": calib.meta.get("source")},
        "parity": parity_report.summary() if parity_report is not None else {"passed": None, "skipped": True},
        "references": R.references_record(parity_report.references) if parity_report is not None else {},
        "engines": {},
        "fingerprint": {},
    }
    manifest = B.write_manifest(tmp, manifest)   # last: hashes every other file
    man_bytes = (tmp / B.MANIFEST).stat().st_size
    report(OX.Artifact(path=B.MANIFEST, component="manifest", precision="data", bytes=man_bytes, seconds=0.0))
    return ExportResult(bundle=tmp, artifacts=artifacts, manifest=manifest, parity=parity_report)


def _without_layernorm(tmp: Path, fp32_rel: str, name: str, spec, config_hash: str) -> Optional[OX.Artifact]:
    """The FP32 graph with LayerNormalization spelled out (ReduceMean, Sub, Pow, Sqrt, Div),
    for TensorRT 8.5's fp16_flag route; None when the graph has no LayerNormalization."""
    import onnx

    from . import onnx_compat as OC
    t0 = time.perf_counter()
    proto = onnx.load(str(tmp / fp32_rel))
    if not OC.op_counts(proto).get(OC.LAYERNORM):
        return None
    out = OC.decompose_layernorm(proto)
    OX.add_metadata(out, {"avqa_edge.rewrite": "LayerNormalization decomposed (TensorRT < 8.6)"})
    OX.check_graph(out, name, spec, OX.OPSET, config_hash)
    rel = fp32_rel.replace(".onnx", ".nolayernorm.onnx")
    onnx.save(out, str(tmp / rel))
    return OX.Artifact(path=rel, component=name, precision="fp32", bytes=(tmp / rel).stat().st_size,
                       seconds=round(time.perf_counter() - t0, 3), opset=OX.OPSET, exporter="rewrite",
                       nodes=len(out.graph.node))


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished bundle to out_dir (replacing an existing one, --overwrite)."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old"
        if old.exists():
            shutil.rmtree(old)
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def summary_table(result: ExportResult):
    """A rich Table of the artifacts (and the parity verdict in its caption)."""
    from rich.table import Table
    title = f"bundle {result.bundle}"
    table = Table(title=title, show_lines=False)
    for col, just in (("artifact", "left"), ("component", "left"), ("precision", "left"), ("size", "right"),
                      ("seconds", "right"), ("opset", "right"), ("exporter", "left"), ("nodes", "right")):
        table.add_column(col, justify=just)
    for a in result.artifacts:
        table.add_row(a.path, a.component, a.precision, _size(a.bytes), f"{a.seconds:.2f}",
                      str(a.opset or ""), a.exporter, str(a.nodes or ""))
    total = sum(a.bytes for a in result.artifacts)
    table.add_row("[b]total[/b]", "", "", f"[b]{_size(total)}[/b]", f"{result.seconds:.1f}", "", "", "")
    if result.parity is not None:
        agree = ", ".join(f"{a.precision}/{a.scenario} {a.rate:.1%}" for a in result.parity.agreement)
        table.caption = f"parity {'PASSED' if result.parity else 'FAILED'}: {agree}"
    return table


def parity_table(report: P.ParityReport):
    """A rich Table of the per-component statistics."""
    return R.parity_table(report)
