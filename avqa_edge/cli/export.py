"""`avqa-edge export` and `avqa-edge parity`: ONNX bundle, parity gate, TensorRT engines."""
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ..errors import AvqaError


def export(
    run_dir: Annotated[Optional[Path], typer.Argument(help="A finished training run (not needed with --from-bundle).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Bundle directory to write.")] = None,
    trt: Annotated[bool, typer.Option("--trt", help="Then build FP16 TensorRT engines (on the target device: NVIDIA GPU + TensorRT).")] = False,
    from_bundle: Annotated[Optional[Path], typer.Option(help="With --trt: build engines for an existing bundle, without torch.")] = None,
    workspace_mib: Annotated[int, typer.Option(help="TensorRT builder workspace limit, MiB.")] = 1024,
    timing_cache: Annotated[Optional[Path], typer.Option(help="TensorRT timing cache file (read if present, then written).")] = None,
    calib_clips: Annotated[int, typer.Option(help="Validation clips in the calibration set.")] = 64,
    exporter: Annotated[str, typer.Option(help="auto (dynamo, TorchScript where dynamo cannot write opset 17), dynamo or torchscript.")] = "auto",
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads for the parity gate (0: its default).")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing, non-empty --out directory.")] = False,
    fp32_max_abs_rms: Annotated[float, typer.Option(help="Parity: FP32 max abs error allowed, as a fraction of the reference output's RMS.")] = 1e-4,
    fp32_cosine: Annotated[float, typer.Option(help="Parity: FP32 minimum cosine similarity per output.")] = 0.99999,
    fp16_agreement: Annotated[float, typer.Option(help="Parity: FP16 minimum answer agreement (0-1).")] = 0.99,
    tie_margin: Annotated[float, typer.Option(help="Parity: an FP32 answer disagreement is excused where PyTorch's top-two probabilities are within this.")] = 1e-4,
    prompt: Annotated[Optional[Path], typer.Option(help="Also export this prompt run (trained on RUN_DIR) as two backbone graph variants, with their own parity gate.")] = None,
):
    """Export a run as a bundle of ONNX graphs and run the parity gate; --trt builds engines.

    The bundle: seven ONNX graphs (eight with a video expert) + FP16 variants, a calibration
    set and a manifest with hashes. --trt then builds TensorRT engines on this device."""
    if from_bundle is not None:
        # the device path: no torch, no training code (export.trt_build imports neither)
        if not trt:
            raise AvqaError("--from-bundle only builds TensorRT engines: add --trt")
        if run_dir is not None or out is not None:
            raise AvqaError("--from-bundle builds into the given bundle: drop RUN_DIR and --out")
        _build_engines(from_bundle, workspace_mib, timing_cache, threads)
        return
    if run_dir is None or out is None:
        raise AvqaError("give RUN_DIR and --out BUNDLE (or --trt --from-bundle BUNDLE on the device)")
    if workspace_mib < 1:
        raise AvqaError("--workspace-mib must be positive")
    if prompt is not None and not (prompt / "prompts.safetensors").is_file():
        raise AvqaError(f"--prompt {prompt}: no prompts.safetensors there (train one with `avqa-edge train --method prompt --from {run_dir}`)")
    from rich.console import Console

    from ..export.bundle_export import export_bundle, parity_table, summary_table
    from ..export.parity import gate
    console = Console()
    thresholds = _thresholds(fp32_max_abs_rms, fp32_cosine, fp16_agreement, tie_margin)
    result = export_bundle(run_dir, out, log=typer.echo, exporter=exporter, calib_clips=calib_clips,
                           overwrite=overwrite, threads=threads, thresholds=thresholds, raise_on_failure=False)
    console.print(summary_table(result))
    if result.parity is not None:
        console.print(parity_table(result.parity))
        gate(result.parity, f"the bundle in {out} is marked as failed; see {out / 'parity.md'}")
    if prompt is not None:
        from ..export.prompt_export import add_prompts_to_bundle
        typer.echo(f"prompt graphs from {prompt}:")
        report = add_prompts_to_bundle(out, prompt, threads=threads, exporter=exporter, thresholds=thresholds, log=typer.echo)
        console.print(parity_table(report))
        gate(report, f"the prompt graphs of {out}; see {out / 'parity_prompts.md'}")
        typer.echo("prompt parity PASSED")
    if trt:
        _build_engines(out, workspace_mib, timing_cache, threads)


def _thresholds(fp32_max_abs_rms: float, fp32_cosine: float, fp16_agreement: float, tie_margin: float):
    from ..export.parity_refs import Thresholds
    if not (fp32_max_abs_rms >= 0 and tie_margin >= 0 and 0 <= fp32_cosine <= 1 and 0 <= fp16_agreement <= 1):
        raise AvqaError("parity thresholds: tolerances must be >= 0, cosine and agreement within [0, 1]")
    return Thresholds(fp32_max_abs_rms=fp32_max_abs_rms, fp32_cosine=fp32_cosine, fp16_agreement=fp16_agreement,
                      tie_margin=tie_margin)


def _build_engines(bundle: Path, workspace_mib: int, timing_cache: Optional[Path], threads: int = 0) -> None:
    try:
        from ..export.trt_build import build_bundle_engines
    except ImportError as e:
        raise AvqaError(f"the TensorRT engine builder is not available ({e})") from None
    result = build_bundle_engines(bundle, workspace_mib=workspace_mib, timing_cache=timing_cache, log=typer.echo,
                                  threads=threads)
    typer.echo(f"engines recorded in {bundle / 'manifest.json'}: {', '.join(sorted(result['engines']))}")
    if result.get("parity") is not None:
        _print_report(result["parity"])


def _print_report(report) -> None:
    from rich.console import Console

    from ..export.parity_refs import cross_table, parity_table
    console = Console()
    console.print(parity_table(report))
    if report.cross:
        console.print(cross_table(report))
    for a in report.agreement:
        typer.echo(f"  answers {a.precision}/{a.scenario}: {a.rate:.2%} agree ({a.questions} questions"
                   + (f", {len(a.excused)} near ties excused" if a.excused else "") + ")")
    if report.info.get("trt_vs_ort", "compared") != "compared":
        typer.echo(f"  {report.info['trt_vs_ort']}")


def parity(
    bundle: Annotated[Path, typer.Argument(help="An exported bundle.")],
    backend: Annotated[str, typer.Option(help="torch: run PyTorch live (needs torch and the run). ort / trt: torch-free, against the PyTorch references stored in the bundle; trt also compares the engines with ONNX Runtime and records each engine's verdict in the manifest.")] = "torch",
    precision: Annotated[Optional[str], typer.Option(help="With --backend ort: fp32 or fp16 (default: both); trt: fp16 (the engines' precision).")] = None,
    run: Annotated[Optional[Path], typer.Option(help="With --backend torch: the PyTorch run (default: the run recorded in the bundle's manifest).")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the full report JSON here.")] = None,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads (0: its default).")] = 0,
    scenario: Annotated[Optional[List[str]], typer.Option(help="Only these scenarios (repeatable): complete, audio_missing, visual_missing, audio_half_missing, visual_half_missing. Default: all.")] = None,
    fp32_max_abs_rms: Annotated[float, typer.Option(help="Parity: FP32 max abs error allowed, as a fraction of the reference output's RMS.")] = 1e-4,
    fp32_cosine: Annotated[float, typer.Option(help="Parity: FP32 minimum cosine similarity per output.")] = 0.99999,
    fp16_agreement: Annotated[float, typer.Option(help="Parity: FP16 minimum answer agreement (0-1).")] = 0.99,
    tie_margin: Annotated[float, typer.Option(help="Parity: an FP32 answer disagreement is excused where PyTorch's top-two probabilities are within this.")] = 1e-4,
):
    """Compare a backend with PyTorch on the bundle's calibration set; exit 1 on failure.

    Per-component errors and answer agreement per scenario. --backend torch runs PyTorch;
    ort and trt compare with the references stored at export, without torch."""
    from ..errors import ConfigError
    from ..export.parity_refs import gate
    if backend not in ("torch", "ort", "trt"):
        raise ConfigError(f"--backend must be torch, ort or trt, got {backend!r}")
    if backend == "torch" and precision is not None:
        raise ConfigError("--precision applies to --backend ort | trt (the torch gate checks fp32 and fp16)")
    if backend != "torch" and run is not None:
        raise ConfigError("--run applies to --backend torch (ort and trt use the references stored in the bundle)")
    thresholds = _thresholds(fp32_max_abs_rms, fp32_cosine, fp16_agreement, tie_margin)
    if backend == "torch":
        from ..export.parity import parity_for_bundle
        report = parity_for_bundle(bundle, run, thresholds=thresholds, json_path=json_path, threads=threads,
                                   log=typer.echo, scenarios=scenario)
    else:
        from ..export import parity_refs as R
        from ..runtime import atomic
        report = R.stored_parity(bundle, backend, [precision] if precision else None, thresholds=thresholds,
                                 scenarios=scenario, threads=threads, log=typer.echo)
        manifest = R.record_parity(bundle, report, backend)
        rec = (manifest["engines"][next(iter(manifest["engines"]))]["parity"] if backend == "trt"
               else manifest["parity_checks"][f"ort-{'+'.join(report.info['precisions'])}"])
        report.info["report"] = rec["report"][0] if isinstance(rec["report"], list) else rec["report"]
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json(json_path, report.to_dict())
    _print_report(report)
    where = bundle / report.info["report"]
    gate(report, f"report: {where}")
    typer.echo(f"parity PASSED; report: {where}")
