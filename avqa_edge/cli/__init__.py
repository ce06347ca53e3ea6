"""The `avqa-edge` command line: this root builds the app and registers each command module's
functions; no command module imports it back. Heavy imports (torch, onnxruntime, ...) happen
inside the commands, so `avqa-edge --help` is instant and the serving commands stay torch-free."""
import sys

import typer

from . import bench, data, doctor, evaluation, export, sensors, serve, train
from ._common import clean_errors

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Audio-visual question answering that keeps answering when a camera or microphone fails.")

COMMANDS = (
    ("train", train.train),
    ("eval", evaluation.evaluate),
    ("report", evaluation.report),
    ("write-split", data.write_split),
    ("export", export.export),
    ("parity", export.parity),
    ("bench", bench.bench),
    ("serve", serve.serve),
    ("calibrate", sensors.calibrate),
    ("faults", sensors.faults),
    ("doctor", doctor.doctor),
)
for _name, _fn in COMMANDS:
    app.command(_name)(clean_errors(_fn))


def main() -> None:  # pragma: no cover
    sys.exit(app())
