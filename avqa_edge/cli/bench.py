"""`avqa-edge bench`: latency and memory per component against PyTorch."""
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ..console import make_console


def bench(
    bundle: Annotated[Path, typer.Argument(help="An exported bundle.")],
    run: Annotated[Optional[Path], typer.Option(help="The PyTorch run (default: the run recorded in the bundle's manifest).")] = None,
    threads: Annotated[int, typer.Option(help="Threads for both backends: torch.set_num_threads and ORT intra-op (0: the usable cores).")] = 0,
    iters: Annotated[int, typer.Option(help="Timed calls per row.")] = 200,
    warmup: Annotated[int, typer.Option(help="Untimed calls before each row.")] = 20,
    clips: Annotated[int, typer.Option(help="Calibration clips to cycle through.")] = 8,
    precision: Annotated[str, typer.Option(help="ONNX Runtime graphs: fp32 or fp16 (PyTorch runs fp32).")] = "fp32",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write every number (and the machine, versions, model hash) here.")] = None,
    ort_config: Annotated[Optional[List[str]], typer.Option(help="Extra ONNX Runtime config entry KEY=VALUE for the ORT process (repeatable); keys as in onnxruntime_session_options_config_keys.h.")] = None,
):
    """Latency (p50 / p95, batch 1) and peak memory: PyTorch vs ONNX Runtime (and TensorRT).

    Each backend runs in its own process pinned to the same threads; per component, end to end
    in each mode (complete, audio pseudo, visual pseudo), and the AVR unrolled graph vs
    separate step calls."""
    from ..export.bench import parse_ort_config, run_bench, summary_lines, tables
    report = run_bench(bundle, run, threads=threads, iters=iters, warmup=warmup, precision=precision, clips=clips,
                       json_path=json_path, log=typer.echo, ort_config=parse_ort_config(ort_config))
    console = make_console()
    for table in tables(report):
        console.print(table)
    for line in summary_lines(report):
        typer.echo(line)
    if json_path is not None:
        typer.echo(f"report: {json_path}")
