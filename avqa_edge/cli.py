"""The `avqa-edge` command line. Heavy imports (torch, ...) happen inside the commands so
`avqa-edge --help` is instant; AvqaError becomes a one-line message and exit code 1."""
import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from .errors import AvqaError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Audio-visual question answering that keeps answering when a camera or microphone fails.")


def _clean_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AvqaError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(1)
        except ImportError as e:
            typer.secho(f"error: {e}. Install the matching extra, e.g. pip install 'avqa-edge[train]'.", fg="red", err=True)
            raise typer.Exit(1)
    return wrapper


@app.command()
@_clean_errors
def train(
    out: Annotated[Path, typer.Option(help="Run directory to write (config.json, model.safetensors, curve.png).")] = Path("runs/default"),
    method: Annotated[str, typer.Option(help="rmm_avr (the paper's model), baseline (complete data only) or dropout (modality dropout).")] = "rmm_avr",
    preset: Annotated[str, typer.Option(help="edge (raw signals, CPU/Jetson sized) or paper (MUSIC-AVQA features).")] = "edge",
    steps: Annotated[int, typer.Option(help="Training steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Questions per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate (0: the preset's).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    no_rmm: Annotated[bool, typer.Option("--no-rmm", help="Ablation: no slot generator (missing parts start from zeros).")] = False,
    no_avr: Annotated[bool, typer.Option("--no-avr", help="Ablation: no diffusion enhancement.")] = False,
    slots: Annotated[int, typer.Option(help="RMM slots L.")] = 75,
    diffusion_steps: Annotated[int, typer.Option(help="AVR reverse steps.")] = 10,
    addressing: Annotated[str, typer.Option(help="logspace (default) or paper (softmax(a^v * a^t), nearly uniform).")] = "logspace",
    data_seed: Annotated[int, typer.Option(help="Built-in benchmark seed.")] = 0,
    train_clips: Annotated[int, typer.Option(help="Built-in benchmark: training clips (0: default).")] = 0,
    manifest_dir: Annotated[Optional[Path], typer.Option(help="Custom data: a folder with train/val/test.jsonl manifests.")] = None,
    music_avqa: Annotated[Optional[Path], typer.Option(help="MUSIC-AVQA: folder with avqa-{train,val,test}.json.")] = None,
    features: Annotated[Optional[Path], typer.Option(help="MUSIC-AVQA: feature root (vggish/, res18_14x14/).")] = None,
    eval_every: Annotated[int, typer.Option(help="Validate every N steps.")] = 250,
    avr_finetune_frac: Annotated[float, typer.Option(help="Last fraction of steps whose pseudo terms go through the AVR sampler (costly on CPU).")] = 0.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
):
    """Train on the built-in benchmark (default), MUSIC-AVQA features or custom data."""
    from .toolkit.config import TrainConfig, preset as make_preset
    from .toolkit.data.sources import builtin_spec
    from .toolkit.train import train as run_train

    if manifest_dir and music_avqa:
        raise AvqaError("give either --manifest-dir or --music-avqa, not both")
    if music_avqa and not features:
        raise AvqaError("--music-avqa needs --features (the folder holding vggish/ and res18_14x14/)")
    if preset == "paper" and not music_avqa:
        raise AvqaError("the paper preset runs on MUSIC-AVQA features: give --music-avqa and --features")
    if music_avqa and preset != "paper":
        raise AvqaError("MUSIC-AVQA features need --preset paper")
    if resume and not (out / "config.json").exists():
        raise AvqaError(f"--resume: no run in {out}")
    if not resume and (out / "state.json").exists():
        raise AvqaError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if manifest_dir:
        spec = {"kind": "manifest", "dir": str(manifest_dir.resolve())}
    elif music_avqa:
        spec = {"kind": "music-avqa", "questions": str(music_avqa.resolve()), "features": str(features.resolve())}
    else:
        spec = builtin_spec(seed=data_seed, train_clips=train_clips)
    model_cfg = make_preset(preset, use_rmm=not no_rmm, use_avr=not no_avr, n_slots=slots,
                            diffusion_steps=diffusion_steps, addressing=addressing)
    cfg = TrainConfig(method=method, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      eval_every=eval_every, avr_finetune_frac=avr_finetune_frac)
    run_train(out, model_cfg, cfg, spec, resume=resume)


@app.command("eval")
@_clean_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A finished training run.")],
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the results JSON here (default RUN_DIR/eval.json).")] = None,
    compare: Annotated[Optional[List[Path]], typer.Option(help="Other runs (baseline, dropout) scored on the same inputs.")] = None,
    sweep: Annotated[bool, typer.Option(help="Also run the missing-ratio sweep (paper Fig. 5) and plot it.")] = True,
    limit: Annotated[int, typer.Option(help="Score only the first N test questions (0: all).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of masks and noise.")] = 0,
):
    """Score a run on the test split under every sensor scenario and method."""
    from .toolkit.eval import run_eval
    run_eval(run_dir, json_path, compare or [], sweep=sweep, limit=limit, seed=seed)


@app.command("write-split")
@_clean_errors
def write_split(
    out: Annotated[Path, typer.Option(help="Folder to write (videos/, audio/, questions.jsonl).")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    data_seed: Annotated[int, typer.Option(help="Built-in benchmark seed.")] = 0,
    clips: Annotated[int, typer.Option(help="Write only the first N clips (0: all).")] = 0,
):
    """Write a built-in benchmark split as ordinary files (lossless video + WAV + questions
    JSONL), to replay through a camera/mic source or to train on with --manifest-dir."""
    from .toolkit.data.files import write_split as write
    from .toolkit.data.sources import builtin_spec, load_split
    from .toolkit.data.types import RawSplit
    data = load_split(builtin_spec(seed=data_seed), split)
    if clips:
        qa = [q for q in data.qa if q.clip < clips]
        data = RawSplit(data.frames[:clips], data.audio[:clips], qa, data.meta)
    path = write(data, out)
    typer.echo(f"wrote {len({q.clip for q in data.qa})} clips and {len(data.qa)} questions: {path}")


def _planned(name: str, issue: int, what: str):
    def cmd():
        typer.secho(f"`avqa-edge {name}` is not available yet: {what} (tracked in issue {issue}).", fg="yellow", err=True)
        raise typer.Exit(2)
    cmd.__doc__ = f"(planned, issue {issue}) {what}."
    app.command(name)(cmd)


_planned("export", 3, "ONNX bundle with a parity gate and FP16 TensorRT engines")
_planned("parity", 3, "compare PyTorch, ONNX Runtime and TensorRT on the calibration set")
_planned("bench", 3, "latency and memory per component against PyTorch")
_planned("serve", 4, "torch-free live serving with per-sensor health and fallback")


def main() -> None:  # pragma: no cover
    sys.exit(app())
