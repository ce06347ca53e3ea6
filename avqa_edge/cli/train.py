"""`avqa-edge train`."""
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated


def train(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Run directory to write (config.json, model.safetensors, curve.png).")] = Path("runs/default"),
    method: Annotated[str, typer.Option(help="rmm_avr (the paper's model), baseline (complete data only), dropout (modality dropout), retrofit (RMM and AVR on the frozen backbone of the run given by --from) or prompt (prompt learning on the frozen run given by --from).")] = "rmm_avr",
    preset: Annotated[str, typer.Option(help="edge (raw signals, CPU/Jetson sized) or paper (MUSIC-AVQA features).")] = "edge",
    steps: Annotated[int, typer.Option(show_default=False, help="Stage 1 steps, everything end to end (default 1500; 3000 with --method prompt).")] = 0,
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
    benchmark_version: Annotated[int, typer.Option(help="Built-in benchmark version: 1 (the original) or 2 (adds questions the audio answers imperfectly when the camera is missing).")] = 1,
    manifest_dir: Annotated[Optional[Path], typer.Option(help="Custom data: a folder with train/val/test.jsonl manifests.")] = None,
    music_avqa: Annotated[Optional[Path], typer.Option(help="MUSIC-AVQA: folder with avqa-{train,val,test}.json.")] = None,
    features: Annotated[Optional[Path], typer.Option(help="MUSIC-AVQA: feature root (vggish/, res18_14x14/).")] = None,
    eval_every: Annotated[int, typer.Option(help="Validate every N steps.")] = 250,
    avr_finetune_frac: Annotated[float, typer.Option(help="Last fraction of the last stage's steps whose pseudo terms also go through the AVR sampler, so the backbone learns to read its output.")] = 0.2,
    tag_weight: Annotated[float, typer.Option(help="Weight of the auxiliary event-tagging loss on the encoders (built-in benchmark only; 0: off).")] = 1.0,
    dropout_weight: Annotated[float, typer.Option(help="rmm_avr: weight of modality-dropout terms (missing parts zero-filled) beside Eq. 8's pseudo terms (0: Eq. 8 alone).")] = 0.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint, with its saved settings (--steps, --refit-steps and --device may change).")] = False,
    from_run: Annotated[Optional[Path], typer.Option("--from", help="A finished run to build on. prompt and retrofit: the run whose backbone stays frozen; rmm_avr, baseline, dropout: the run whose stage 1 (data, encoders) is taken, so that only stage 2 trains.")] = None,
    measure_steps: Annotated[int, typer.Option(help="--method prompt: steps of full fine-tuning and of prompt training timed in subprocesses for the cost comparison (0: skip).")] = 20,
    prompt_len: Annotated[int, typer.Option(help="--method prompt: input-level prompt tokens per modality and case.")] = 4,
    attn_prompt_len: Annotated[int, typer.Option(help="--method prompt: attention-level (key/value) prompt tokens per case.")] = 4,
):
    """Train a model (built-in benchmark, MUSIC-AVQA features or your own data).

    With --method prompt --from RUN: learn prompts for degraded sensors on a frozen run."""
    from ..toolkit.train_plan import TrainRequest, plan_run, run_plan
    # the options given on the command line, not left at their defaults (ParameterSource by name:
    # typer may bring its own copy of click)
    given = {n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}
    run_plan(plan_run(TrainRequest(**ctx.params, given=frozenset(given))))
