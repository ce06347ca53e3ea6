"""`avqa-edge export` and `avqa-edge parity`: ONNX bundle, parity gate, TensorRT engines."""
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated



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
    from ..console import make_console
    from ..export import workflow as W
    W.check_export_args(run_dir, out, trt, from_bundle, workspace_mib, prompt)
    show = make_console().print
    if from_bundle is not None:          # the device path: no torch, no training code
        W.build_engines(from_bundle, workspace_mib, timing_cache, threads, log=typer.echo, show=show)
        return
    limits = W.thresholds(fp32_max_abs_rms, fp32_cosine, fp16_agreement, tie_margin)
    W.export_and_check(run_dir, out, limits, exporter=exporter, calib_clips=calib_clips, overwrite=overwrite,
                       threads=threads, prompt=prompt, log=typer.echo, show=show)
    if trt:
        W.build_engines(out, workspace_mib, timing_cache, threads, log=typer.echo, show=show)


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
    from ..console import make_console
    from ..export import workflow as W
    from ..export.parity_refs import gate
    limits = W.thresholds(fp32_max_abs_rms, fp32_cosine, fp16_agreement, tie_margin)
    report = W.check_parity(bundle, backend, precision, run, limits, scenario, threads, json_path, log=typer.echo)
    W.print_report(report, typer.echo, make_console().print)
    where = bundle / report.info["report"]
    gate(report, f"report: {where}")
    typer.echo(f"parity PASSED; report: {where}")
