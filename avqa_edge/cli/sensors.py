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
    from ..calibration.thresholds import check_against, fit_from_calibset, fit_from_recording, record_device
    from ..runtime.clock import RealClock
    from ..runtime.health import HealthThresholds, dbfs
    from ..runtime.redact import redact
    from ..runtime.sources import camera_factory, mic_factory

    if camera == "none" and mic == "none":
        raise AvqaError("give --camera and/or --mic to record")
    if "demo" in (camera, mic):
        raise AvqaError("calibrate records a real device; the demo source's thresholds come from the bundle already")
    if not 2 <= seconds <= 3600:
        raise AvqaError("--seconds must lie in [2, 3600]")
    base = HealthThresholds()
    if bundle is not None:
        from ..calibration.calibset import CalibrationSet
        cs = CalibrationSet.load(bundle / "calibration")
        base = fit_from_calibset(cs.frames, cs.audio)
    clock = RealClock()
    cam_f, mic_f = camera_factory(camera, clock), mic_factory(mic, clock)
    _err(f"recording {seconds:g} s of a healthy scene (keep it ordinary: quiet moments and stillness are fine) ...")
    frames, chunks = record_device(cam_f() if cam_f else None, mic_f() if mic_f else None, seconds, clock, log=_err)
    th = fit_from_recording(frames, chunks, base, source=redact(f"camera {camera}, mic {mic}, {seconds:g} s"))
    th.save(out)
    flagged = check_against(th, frames, chunks)
    c, m = th.camera, th.mic
    typer.echo(f"wrote {out}")
    if frames:
        typer.echo(f"  camera: black below luma {c.black_luma:.1f}, saturated above {c.saturated_frac:.0%}, snow above "
                   f"roughness {c.noise_roughness:.2f}, frozen at difference <= {c.freeze_diff:.2f}"
                   + ("" if c.freeze_content else " (content check off: the recording had identical frames)")
                   + f", stall after {c.stall_s:.1f} s; {flagged['camera']} of {len(frames)} recorded frames flagged")
    if chunks:
        typer.echo(f"  mic: silence below {m.silence_level:.5f} ({dbfs(m.silence_level):.0f} dBFS), "
                   f"clipping above {m.clip_frac:.1%}, noise at level >= {m.noise_level:.3f}, stall after {m.stall_s:.1f} s; "
                   f"{flagged['mic']} of {len(chunks)} recorded chunks flagged")


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
    from rich.table import Table

    from ..calibration.calibset import CalibrationSet
    from ..runtime import faultbench as FB
    from ..runtime.health import HealthThresholds
    from ..runtime.inject import parse_faults

    if trials < 1 or fault_seconds <= 0 or healthy_seconds < 0:
        raise AvqaError("--trials must be >= 1, --fault-seconds > 0, --healthy-seconds >= 0")
    if realtime and healthy_seconds > 0:
        _err(f"note: the realtime healthy replay takes {healthy_seconds:g} s of wall time")
    kinds = None
    if kind:
        kinds = [(f.sensor, f.kind) for f in parse_faults(",".join(f"{k}@0" for k in kind))]
    cs = CalibrationSet.load(Path(bundle) / "calibration")
    th = HealthThresholds.load(thresholds) if thresholds else None
    report = FB.run(cs.frames, cs.audio, th, kinds=kinds, trials=trials, fault_s=fault_seconds,
                    healthy_s=healthy_seconds, holdout=holdout, realtime=realtime, log=_err)
    table = Table(title=f"fault injection ({report.clock} clock, {trials} trials per kind, faults of {fault_seconds:g} s)")
    for col in ("sensor", "kind", "detected", "median s", "max s", "recovered", "max s", "false alarms", "<= 1 s",
                "reason"):
        table.add_column(col, no_wrap=col == "reason", overflow="ellipsis")
    for row in FB.table_rows(report):
        table.add_row(*row)
    make_console().print(table)
    typer.echo("detected / median s / max s: time to detect (failed state) after the fault starts; "
               "recovered / max s: back to ok after it ends")
    if report.healthy is not None:
        h = report.healthy
        typer.echo(f"healthy replay of {h.seconds:g} s ({'held-out' if report.clips['holdout'] else 'fitted'} clips "
                   f"{report.clips['replayed'][:8]}{'...' if len(report.clips['replayed']) > 8 else ''}): "
                   f"{h.failed} false alarms (failed), {h.degraded} degraded episodes")
        for r in h.reasons[:10]:
            typer.echo(f"  {r}")
    if json_path is not None:
        write_json(json_path, report.to_dict())
        typer.echo(f"wrote {json_path}")
