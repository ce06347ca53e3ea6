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
    method: Annotated[str, typer.Option(help="rmm_avr (the paper's model), baseline (complete data only), dropout (modality dropout) or prompt (prompt learning on the frozen run given by --from).")] = "rmm_avr",
    preset: Annotated[str, typer.Option(help="edge (raw signals, CPU/Jetson sized) or paper (MUSIC-AVQA features).")] = "edge",
    steps: Annotated[int, typer.Option(help="Stage 1 steps, everything end to end (0: 1500; --method prompt: 3000).")] = 0,
    refit_steps: Annotated[int, typer.Option(help="Stage 2 steps: encoders frozen, their features cached, the backbone refit from scratch with RMM and AVR (0: no stage 2).")] = 1500,
    batch_size: Annotated[int, typer.Option(help="Questions per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate (0: the preset's).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    no_rmm: Annotated[bool, typer.Option("--no-rmm", help="Ablation: no slot generator (missing parts start from zeros).")] = False,
    no_avr: Annotated[bool, typer.Option("--no-avr", help="Ablation: no diffusion enhancement.")] = False,
    slots: Annotated[int, typer.Option(help="RMM slots L.")] = 75,
    diffusion_steps: Annotated[int, typer.Option(help="AVR reverse steps.")] = 10,
    avr_start: Annotated[float, typer.Option(help="Signal fraction alpha_bar where AVR's reverse process starts: 0.25 is the schedule's last step (the most noise); higher keeps more of the pseudo feature.")] = 0.75,
    addressing: Annotated[str, typer.Option(help="logspace (default) or paper (softmax(a^v * a^t), nearly uniform).")] = "logspace",
    audio_heads: Annotated[int, typer.Option(help="Heads of RMM's audio recall (1: Eq. 1-2 as written).")] = 4,
    video_expert: Annotated[Optional[bool], typer.Option("--video-expert/--no-video-expert", help="A second backbone that answers when the video is missing in every segment (exported as the bundle's `video_expert` graph). Default: on for the edge preset, off for paper.")] = None,
    data_seed: Annotated[int, typer.Option(help="Built-in benchmark seed.")] = 0,
    train_clips: Annotated[int, typer.Option(help="Built-in benchmark: training clips (0: default).")] = 0,
    manifest_dir: Annotated[Optional[Path], typer.Option(help="Custom data: a folder with train/val/test.jsonl manifests.")] = None,
    music_avqa: Annotated[Optional[Path], typer.Option(help="MUSIC-AVQA: folder with avqa-{train,val,test}.json.")] = None,
    features: Annotated[Optional[Path], typer.Option(help="MUSIC-AVQA: feature root (vggish/, res18_14x14/).")] = None,
    eval_every: Annotated[int, typer.Option(help="Validate every N steps.")] = 250,
    avr_finetune_frac: Annotated[float, typer.Option(help="Last fraction of the last stage's steps whose pseudo terms also go through the AVR sampler, so the backbone learns to read its output.")] = 0.2,
    tag_weight: Annotated[float, typer.Option(help="Weight of the auxiliary event-tagging loss on the encoders (built-in benchmark only; 0: off).")] = 1.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    from_run: Annotated[Optional[Path], typer.Option("--from", help="--method prompt: the finished run to adapt (it stays frozen).")] = None,
    measure_steps: Annotated[int, typer.Option(help="--method prompt: steps of full fine-tuning and of prompt training timed in subprocesses for the cost comparison (0: skip).")] = 20,
    prompt_len: Annotated[int, typer.Option(help="--method prompt: input-level prompt tokens per modality and case.")] = 4,
    attn_prompt_len: Annotated[int, typer.Option(help="--method prompt: attention-level (key/value) prompt tokens per case.")] = 4,
):
    """Train on the built-in benchmark (default), MUSIC-AVQA features or custom data; or,
    with --method prompt --from RUN, learn prompts for degraded sensors on a frozen run."""
    from .toolkit.config import TrainConfig, preset as make_preset
    from .toolkit.data.specs import builtin_spec
    from .toolkit.train import train as run_train

    if method == "prompt" or from_run is not None:
        if method != "prompt":
            raise AvqaError("--from adapts a finished run with prompts: use it with --method prompt")
        if from_run is None:
            raise AvqaError("--method prompt needs --from RUN_DIR (the finished run whose weights stay frozen)")
        if resume or manifest_dir or music_avqa:
            raise AvqaError("--method prompt trains on its base run's data and does not resume: drop --resume / data options")
        if not from_run.is_dir():
            raise AvqaError(f"--from {from_run}: run directory not found")
        if (out / "state.json").exists():
            raise AvqaError(f"{out} already holds a run: choose another --out")
        from .toolkit.prompt_train import PromptTrainConfig, train_prompts
        pcfg = PromptTrainConfig(steps=steps or 3000, batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every,
                                 measure_steps=measure_steps, n_input=prompt_len, n_attn=attn_prompt_len)
        train_prompts(out, from_run, pcfg)
        return
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
                            diffusion_steps=diffusion_steps, avr_start=avr_start, addressing=addressing,
                            audio_heads=audio_heads,
                            **({} if video_expert is None else {"video_expert": video_expert}))
    cfg = TrainConfig(method=method, steps=steps or TrainConfig.steps, refit_steps=refit_steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      eval_every=eval_every, avr_finetune_frac=avr_finetune_frac, tag_weight=tag_weight)
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
    prompt: Annotated[Optional[Path], typer.Option(help="A prompt run trained on RUN_DIR (`train --method prompt --from RUN_DIR`): adds prompt_all and prompt_oracle under every scenario.")] = None,
    test_clips: Annotated[int, typer.Option(help="Built-in benchmark only: generate a test split of N clips instead of the run's (800); 3200 pins the video-missing gap about twice as tightly, at 4x the time.")] = 0,
):
    """Score a run on the test split under every sensor scenario and method."""
    from .toolkit.eval import run_eval
    run_eval(run_dir, json_path, compare or [], sweep=sweep, limit=limit, seed=seed, prompt=prompt, test_clips=test_clips)


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
    from .toolkit.data.specs import builtin_spec, load_split
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


@app.command()
@_clean_errors
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
    """Export a run as a bundle (seven ONNX graphs, eight with a video expert, + FP16 variants, calibration set, manifest)
    and run the parity gate; --trt then builds TensorRT engines on this device."""
    if from_bundle is not None:
        # the device path: no torch, no training code (export.trt_build imports neither)
        if not trt:
            raise AvqaError("--from-bundle only builds TensorRT engines: add --trt")
        if run_dir is not None or out is not None:
            raise AvqaError("--from-bundle builds into the given bundle: drop RUN_DIR and --out")
        _build_engines(from_bundle, workspace_mib, timing_cache)
        return
    if run_dir is None or out is None:
        raise AvqaError("give RUN_DIR and --out BUNDLE (or --trt --from-bundle BUNDLE on the device)")
    if workspace_mib < 1:
        raise AvqaError("--workspace-mib must be positive")
    if prompt is not None and not (prompt / "prompts.safetensors").is_file():
        raise AvqaError(f"--prompt {prompt}: no prompts.safetensors there (train one with `avqa-edge train --method prompt --from {run_dir}`)")
    from rich.console import Console

    from .export.bundle_export import export_bundle, parity_table, summary_table
    from .export.parity import gate
    console = Console()
    thresholds = _thresholds(fp32_max_abs_rms, fp32_cosine, fp16_agreement, tie_margin)
    result = export_bundle(run_dir, out, log=typer.echo, exporter=exporter, calib_clips=calib_clips,
                           overwrite=overwrite, threads=threads, thresholds=thresholds, raise_on_failure=False)
    console.print(summary_table(result))
    if result.parity is not None:
        console.print(parity_table(result.parity))
        gate(result.parity, f"the bundle in {out} is marked as failed; see {out / 'parity.md'}")
    if prompt is not None:
        from .export.prompt_export import add_prompts_to_bundle
        typer.echo(f"prompt graphs from {prompt}:")
        report = add_prompts_to_bundle(out, prompt, threads=threads, exporter=exporter, thresholds=thresholds, log=typer.echo)
        console.print(parity_table(report))
        gate(report, f"the prompt graphs of {out}; see {out / 'parity_prompts.md'}")
        typer.echo("prompt parity PASSED")
    if trt:
        _build_engines(out, workspace_mib, timing_cache)


def _thresholds(fp32_max_abs_rms: float, fp32_cosine: float, fp16_agreement: float, tie_margin: float):
    from .export.parity import Thresholds
    if not (fp32_max_abs_rms >= 0 and tie_margin >= 0 and 0 <= fp32_cosine <= 1 and 0 <= fp16_agreement <= 1):
        raise AvqaError("parity thresholds: tolerances must be >= 0, cosine and agreement within [0, 1]")
    return Thresholds(fp32_max_abs_rms=fp32_max_abs_rms, fp32_cosine=fp32_cosine, fp16_agreement=fp16_agreement,
                      tie_margin=tie_margin)


def _build_engines(bundle: Path, workspace_mib: int, timing_cache: Optional[Path]) -> None:
    try:
        from .export.trt_build import build_bundle_engines
    except ImportError as e:
        raise AvqaError(f"the TensorRT engine builder is not available ({e})") from None
    result = build_bundle_engines(bundle, workspace_mib=workspace_mib, timing_cache=timing_cache, log=typer.echo)
    typer.echo(f"engines recorded in {bundle / 'manifest.json'}: {', '.join(sorted(result['engines']))}")


@app.command()
@_clean_errors
def parity(
    bundle: Annotated[Path, typer.Argument(help="An exported bundle.")],
    run: Annotated[Optional[Path], typer.Option(help="The PyTorch run (default: the run recorded in the bundle's manifest).")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the full report JSON here.")] = None,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads (0: its default).")] = 0,
    scenario: Annotated[Optional[List[str]], typer.Option(help="Only these scenarios (repeatable): complete, audio_missing, visual_missing, audio_half_missing, visual_half_missing. Default: all.")] = None,
    fp32_max_abs_rms: Annotated[float, typer.Option(help="Parity: FP32 max abs error allowed, as a fraction of the reference output's RMS.")] = 1e-4,
    fp32_cosine: Annotated[float, typer.Option(help="Parity: FP32 minimum cosine similarity per output.")] = 0.99999,
    fp16_agreement: Annotated[float, typer.Option(help="Parity: FP16 minimum answer agreement (0-1).")] = 0.99,
    tie_margin: Annotated[float, typer.Option(help="Parity: an FP32 answer disagreement is excused where PyTorch's top-two probabilities are within this.")] = 1e-4,
):
    """Compare PyTorch with ONNX Runtime (FP32 and FP16 graphs) on the bundle's calibration
    set: per-component errors and answer agreement per scenario. Exit 1 if the gate fails."""
    from rich.console import Console

    from .export.bundle_export import parity_table
    from .export.parity import gate, parity_for_bundle
    thresholds = _thresholds(fp32_max_abs_rms, fp32_cosine, fp16_agreement, tie_margin)
    report = parity_for_bundle(bundle, run, thresholds=thresholds, json_path=json_path, threads=threads, log=typer.echo,
                               scenarios=scenario)
    Console().print(parity_table(report))
    for a in report.agreement:
        typer.echo(f"  answers {a.precision}/{a.scenario}: {a.rate:.2%} agree ({a.questions} questions"
                   + (f", {len(a.excused)} near ties excused" if a.excused else "") + ")")
    gate(report, f"report: {bundle / 'parity.md'}")
    typer.echo(f"parity PASSED; report: {bundle / 'parity.md'}")


@app.command()
@_clean_errors
def report(
    evals: Annotated[List[Path], typer.Argument(help="One `avqa-edge eval --json` file per training seed.")],
    extra: Annotated[Optional[List[str]], typer.Option(help="LABEL=FILE,FILE,...: rows of other runs (e.g. paper=a.json,b.json,c.json).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the Markdown here too.")] = None,
):
    """Mean ± std over training seeds of several eval results, and the rmm+avr vs baseline test."""
    from .toolkit.report import report as make_report
    groups = {}
    for item in extra or []:
        label, sep, files = item.partition("=")
        if not sep or not files:
            raise AvqaError(f"--extra takes LABEL=FILE,FILE,..., got {item!r}")
        groups[label] = [Path(f) for f in files.split(",")]
    text = make_report(evals, groups)
    typer.echo(text)
    if out:
        out.write_text(text)


# Commands that live in their own modules (each registers itself on `app`).
from . import cli_bench, cli_serve  # noqa: E402,F401


def main() -> None:  # pragma: no cover
    sys.exit(app())
