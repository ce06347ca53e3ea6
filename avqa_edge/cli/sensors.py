"""`avqa-edge calibrate` and `avqa-edge faults`: sensor health thresholds and the fault benchmark."""
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ..console import make_console
from ..errors import AvqaError
from ..runtime.atomic import write_json
from ._common import err as _err


def calibrate(
    out: Annotated[Path, typer.Option(help="Thresholds JSON to write (then: avqa-edge serve ... --thresholds FILE).")],
    camera: Annotated[str, typer.Option(help="The camera to calibrate (device index, video file, URL), or none.")] = "none",
    mic: Annotated[str, typer.Option(help="The microphone (default, index, name, sound file), or none.")] = "none",
    seconds: Annotated[float, typer.Option(help="Length of the healthy recording.")] = 30.0,
    bundle: Annotated[Optional[Path], typer.Option(help="A bundle: sensors not recorded keep thresholds fitted on its calibration set (else built-in defaults).")] = None,
):
    """Fit the sensor health thresholds on a short healthy recording from this device.

    Real noise floors, light levels and frame rates differ from the built-in clips."""
    from ..calibration.thresholds import calibrate_device
    th, lines = calibrate_device(camera, mic, seconds, bundle, log=_err)
    th.save(out)
    typer.echo(f"wrote {out}")
    for line in lines:
        typer.echo(line)


def faults(
    bundle: Annotated[Path, typer.Argument(help="A bundle: its calibration clips are the demo source.")],
    healthy_seconds: Annotated[float, typer.Option(help="Healthy replay for the false-alarm count.")] = 600.0,
    fault_seconds: Annotated[float, typer.Option(help="How long each injected fault lasts.")] = 3.0,
    trials: Annotated[int, typer.Option(help="Runs per fault kind (start shifted by 0.13 s each).")] = 4,
    kind: Annotated[Optional[List[str]], typer.Option(help="Only these, e.g. camera:off (repeatable). Default: every kind.")] = None,
    realtime: Annotated[bool, typer.Option("--realtime", help="Live threads on the wall clock (all trials at once) instead of the simulated clock.")] = False,
    holdout: Annotated[bool, typer.Option(help="Fit thresholds on the even clips, replay the odd ones.")] = True,
    thresholds: Annotated[Optional[Path], typer.Option(help="Use these thresholds instead of fitting.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the full report here.")] = None,
):
    """Fault benchmark: time to detect and to recover from every injected sensor failure.

    Injects each failure kind into the demo source; reports detection time (goal <= 1 s),
    recovery time per kind, and false alarms over a healthy replay."""
    from ..calibration.calibset import CalibrationSet
    from ..runtime import faultbench as FB
    from ..runtime.health import HealthThresholds
    from ..runtime.inject import parse_faults
    if trials < 1 or fault_seconds <= 0 or healthy_seconds < 0:
        raise AvqaError("--trials must be >= 1, --fault-seconds > 0, --healthy-seconds >= 0")
    if realtime and healthy_seconds > 0:
        _err(f"note: the realtime healthy replay takes {healthy_seconds:g} s of wall time")
    kinds = [(f.sensor, f.kind) for f in parse_faults(",".join(f"{k}@0" for k in kind))] if kind else None
    cs = CalibrationSet.load(Path(bundle) / "calibration")
    th = HealthThresholds.load(thresholds) if thresholds else None
    report = FB.run(cs.frames, cs.audio, th, kinds=kinds, trials=trials, fault_s=fault_seconds,
                    healthy_s=healthy_seconds, holdout=holdout, realtime=realtime, log=_err)
    make_console().print(FB.table(report, trials, fault_seconds))
    for line in FB.summary_lines(report):
        typer.echo(line)
    if json_path is not None:
        write_json(json_path, report.to_dict())
        typer.echo(f"wrote {json_path}")
