"""`avqa-edge doctor`: a Markdown report of this device, a bundle and its sensors (runtime/doctor.py)."""
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ._common import err as _err


def doctor(
    bundle: Annotated[Optional[Path], typer.Argument(help="An exported bundle to verify, check for engines and bench.")] = None,
    camera: Annotated[Optional[str], typer.Option(help="Probe this camera for 3 s (device index, video file, stream URL).")] = None,
    mic: Annotated[Optional[str], typer.Option(help="Probe this microphone for 3 s (default, index, name, sound file).")] = None,
    backend: Annotated[str, typer.Option(help="The backend `serve` will use: auto, ort or trt (trt: TensorRT, a GPU and matching, parity-verified engines are required).")] = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Also write the report to this Markdown file.")] = None,
    probe_seconds: Annotated[float, typer.Option(help="How long each sensor is probed.")] = 3.0,
    bench_calls: Annotated[int, typer.Option(help="Timed pipeline calls per case in the bench (0: no bench).")] = 3,
):
    """Check this device, a bundle and its sensors; print one Markdown report for a bug report.

    Exits 1 when something required fails: the bundle does not verify, a given sensor fails,
    or the backend asked for cannot run. Torch-free."""
    from ..errors import AvqaError
    from ..runtime.atomic import write_text
    from ..runtime.doctor import run_doctor

    if not 0.5 <= probe_seconds <= 60:
        raise AvqaError("--probe-seconds must lie in [0.5, 60]")
    if not 0 <= bench_calls <= 100:
        raise AvqaError("--bench-calls must lie in [0, 100]")
    report = run_doctor(bundle, camera=camera, mic=mic, backend=backend, bench_calls=bench_calls,
                        probe_s=probe_seconds, log=_err)
    text = report.to_markdown()
    typer.echo(text)
    if out is not None:
        write_text(out, text)
        _err(f"wrote {out}")
    if report.failed:
        raise typer.Exit(1)
