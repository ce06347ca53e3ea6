"""`avqa-edge train`'s options -> what to run: the model config, train config and data spec of a
new run, of a resumed one, or a prompt run's config. Every option given is either used or
refused by name (ConfigError / RunError), never ignored; nothing is written here.

With --resume a run keeps the settings it was started with. It may be given its saved values
again, and these changes: --steps and --refit-steps (a longer or shorter stage, where the run
has not passed it yet) and --device. Nothing else can change in a run in progress.

With --from RUN (and any method but prompt) the new run takes RUN's stage 1: its data, model
size and encoders; only stage 2 trains, with the method's loss. retrofit needs it, and keeps
RUN's backbone as well, frozen.
"""
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, Optional

from avqa_edge.errors import ConfigError, RunError

from . import rundir
from .config import METHODS, ModelConfig, TrainConfig, preset as make_preset

HONOURED_ON_RESUME = ("steps", "refit_steps", "device")
PROMPT_OPTIONS = frozenset({"out", "method", "from_run", "steps", "batch_size", "lr", "seed", "eval_every",
                            "measure_steps", "prompt_len", "attn_prompt_len"})
PROMPT_ONLY = ("measure_steps", "prompt_len", "attn_prompt_len")
# what a run on another run's stage 1 (--from) takes from that run, not from its options
FROM_BASE = ("preset", "steps", "data_seed", "train_clips", "benchmark_version", "manifest_dir", "music_avqa", "features",
             "tag_weight")
BUILTIN_ONLY = ("data_seed", "train_clips", "benchmark_version")
FLAGS = {"from_run": "--from", "video_expert": "--video-expert/--no-video-expert"}
PROMPT_DEFAULT_STEPS = 3000


@dataclass
class TrainRequest:
    """The options of `avqa-edge train` (the CLI's names and defaults); `given`: the ones the
    user gave (default: those that differ from the defaults)."""
    out: Path = Path("runs/default")
    method: str = "rmm_avr"
    preset: str = "edge"
    steps: int = 0                        # 0: TrainConfig's (prompt: PROMPT_DEFAULT_STEPS)
    refit_steps: int = 1500
    batch_size: int = 64
    lr: float = 0.0
    seed: int = 0
    device: str = "auto"
    no_rmm: bool = False
    no_avr: bool = False
    slots: int = 75
    diffusion_steps: int = 10
    avr_start: float = 0.75
    addressing: str = "logspace"
    audio_heads: int = 4
    video_expert: Optional[bool] = None   # None: the preset's
    data_seed: int = 0
    train_clips: int = 0                  # 0: the built-in benchmark's
    benchmark_version: int = 1
    manifest_dir: Optional[Path] = None
    music_avqa: Optional[Path] = None
    features: Optional[Path] = None
    eval_every: int = 250
    avr_finetune_frac: float = 0.2
    tag_weight: float = 1.0
    dropout_weight: float = 0.0
    resume: bool = False
    from_run: Optional[Path] = None
    measure_steps: int = 20
    prompt_len: int = 4
    attn_prompt_len: int = 4
    given: Optional[FrozenSet[str]] = None

    def __post_init__(self):
        self.out = Path(self.out)
        if self.given is None:
            defaults = TrainRequest.__dataclass_fields__
            self.given = frozenset(f for f in _option_names() if getattr(self, f) != defaults[f].default)
        self.given = frozenset(self.given)


@dataclass
class RunPlan:
    out: Path
    resume: bool = False
    model: Optional[ModelConfig] = None
    train: Optional[TrainConfig] = None
    data: Optional[Dict] = None
    prompt: Optional[object] = None       # --method prompt: a PromptTrainConfig
    base_run: Optional[Path] = None
    changes: Dict[str, list] = field(default_factory=dict)   # resume: {train field: [saved, new]}


def plan_run(req: TrainRequest) -> RunPlan:
    if req.method not in METHODS + ("prompt",):
        raise ConfigError(f"--method must be one of {', '.join(METHODS + ('prompt',))}, got {req.method!r}")
    if req.method == "prompt":
        return _plan_prompt(req)
    _refuse([n for n in PROMPT_ONLY if n in req.given], "only for --method prompt")
    if req.resume:
        return _plan_resume(req)
    if req.from_run is not None or req.method == "retrofit":
        return _plan_on_base(req)
    return _plan_new(req)


def run_plan(plan: RunPlan):
    """Train what plan_run planned. -> the run's summary."""
    if plan.prompt is not None:
        from . import prompt_train
        return prompt_train.train_prompts(plan.out, plan.base_run, plan.prompt)
    from . import train
    return train.train(plan.out, plan.model, plan.train, plan.data, resume=plan.resume)


def resume_changes(saved: TrainConfig, new: TrainConfig, step: int) -> Dict[str, list]:
    """What resuming at `step` with `new` changes of the run's `saved` train config ->
    {field: [saved, new]}. Raises ConfigError for a change that does not fit a run in progress."""
    old, want = saved.to_dict(), new.to_dict()
    changed = {k: [old.get(k), v] for k, v in want.items() if old.get(k) != v}
    fixed = sorted(set(changed) - set(HONOURED_ON_RESUME) - {"threads"})
    if fixed:
        raise ConfigError(f"a run in progress keeps its {', '.join(fixed)}; only the steps and the device can change")
    if (saved.refit_steps == 0) != (new.refit_steps == 0):
        raise ConfigError("--refit-steps cannot turn stage 2 on or off in a run in progress")
    if new.refit_steps and step > saved.steps:
        if new.steps != saved.steps:
            raise ConfigError(f"--steps: stage 1 ended at step {saved.steps} and the run is at step {step}, in "
                              f"stage 2: its length cannot change now")
        if saved.steps + new.refit_steps < step:
            raise ConfigError(f"--refit-steps {new.refit_steps}: the run is already at step {step} "
                              f"({step - saved.steps} steps into stage 2)")
    elif new.steps < step:
        raise ConfigError(f"--steps {new.steps}: the run is already at step {step}")
    return changed


def _plan_new(req: TrainRequest) -> RunPlan:
    from .data.specs import builtin_spec
    if req.manifest_dir and req.music_avqa:
        raise ConfigError("give either --manifest-dir or --music-avqa, not both")
    if req.music_avqa and not req.features:
        raise ConfigError("--music-avqa needs --features (the folder holding vggish/ and res18_14x14/)")
    if req.features and not req.music_avqa:
        raise ConfigError("--features goes with --music-avqa")
    if req.preset == "paper" and not req.music_avqa:
        raise ConfigError("the paper preset runs on MUSIC-AVQA features: give --music-avqa and --features")
    if req.music_avqa and req.preset != "paper":
        raise ConfigError("MUSIC-AVQA features need --preset paper")
    if req.manifest_dir or req.music_avqa:
        _refuse([n for n in BUILTIN_ONLY if n in req.given], "only for the built-in benchmark")
    rundir.check_new(req.out)
    if req.manifest_dir:
        spec = {"kind": "manifest", "dir": str(req.manifest_dir.resolve())}
    elif req.music_avqa:
        spec = {"kind": "music-avqa", "questions": str(req.music_avqa.resolve()), "features": str(req.features.resolve())}
    else:
        spec = builtin_spec(seed=req.data_seed, train_clips=req.train_clips, version=req.benchmark_version)
    model_cfg = make_preset(req.preset, use_rmm=not req.no_rmm, use_avr=not req.no_avr, n_slots=req.slots,
                            diffusion_steps=req.diffusion_steps, avr_start=req.avr_start, addressing=req.addressing,
                            audio_heads=req.audio_heads,
                            **({} if req.video_expert is None else {"video_expert": req.video_expert}))
    cfg = TrainConfig(method=req.method, steps=req.steps or TrainConfig.steps, refit_steps=req.refit_steps,
                      batch_size=req.batch_size, lr=req.lr, seed=req.seed, device=req.device, eval_every=req.eval_every,
                      avr_finetune_frac=req.avr_finetune_frac, tag_weight=req.tag_weight,
                      dropout_weight=req.dropout_weight)
    return RunPlan(req.out, model=model_cfg, train=cfg, data=spec)


def _plan_on_base(req: TrainRequest) -> RunPlan:
    """A run on the stage 1 of the finished run --from: its data, model size and encoders."""
    if req.from_run is None:
        raise ConfigError("--method retrofit trains RMM and AVR on a finished run's frozen backbone: "
                          "give that run with --from RUN_DIR")
    _refuse([n for n in FROM_BASE if n in req.given], f"a run on --from's stage 1 takes it from {req.from_run}")
    if req.method == "retrofit" and "video_expert" in req.given:
        _refuse(["video_expert"], "retrofit keeps the base run's backbones as they are")
    config = _finished_config(req.from_run)
    base_model, base_train = ModelConfig.from_dict(config["model"]), TrainConfig.from_dict(config["train"])
    expert = req.video_expert if req.video_expert is not None else make_preset(base_model.preset).video_expert
    model_cfg = dataclasses.replace(
        base_model, use_rmm=not req.no_rmm, use_avr=not req.no_avr, n_slots=req.slots,
        diffusion_steps=req.diffusion_steps, avr_start=req.avr_start, addressing=req.addressing,
        audio_heads=req.audio_heads, video_expert=base_model.video_expert if req.method == "retrofit" else expert)
    rundir.check_new(req.out)
    cfg = TrainConfig(method=req.method, steps=base_train.steps, refit_steps=req.refit_steps, batch_size=req.batch_size,
                      lr=req.lr, seed=req.seed, device=req.device, eval_every=req.eval_every,
                      avr_finetune_frac=req.avr_finetune_frac, tag_weight=base_train.tag_weight,
                      dropout_weight=req.dropout_weight, base_run=str(req.from_run.resolve()))
    return RunPlan(req.out, model=model_cfg, train=cfg, data=config["data"])


def _finished_config(run_dir: Path) -> Dict:
    """config.json of a finished training run (RunError otherwise)."""
    run = rundir.inspect(run_dir)
    if run.status in (rundir.ABSENT, rundir.EMPTY):
        raise RunError(f"--from {run_dir}: no training run there (config.json not found)")
    if run.kind != "train":
        raise RunError(f"--from {run_dir} is a {run.kind} run; give the run it was trained on")
    if run.status != rundir.FINISHED:
        raise RunError(f"--from {run_dir}: training has not finished; finish it with "
                       f"`avqa-edge train --out {run_dir} --resume`")
    return run.config


def _plan_resume(req: TrainRequest) -> RunPlan:
    run = rundir.open_resume(req.out)
    saved = _saved_options(run.config)
    differ = [n for n in sorted(req.given - {"out", "resume"} - set(HONOURED_ON_RESUME))
              if saved.get(n, "(not used)") != _value(req, n)]
    if differ:
        raise ConfigError(f"--resume continues {req.out} with the settings it was started with; "
                          + "; ".join(f"{_flag(n)} {_value(req, n)} differs from its {saved.get(n, '(not used)')}"
                                      for n in differ)
                          + ": drop them, or train a new run with another --out")
    saved_train = TrainConfig.from_dict(run.config["train"])
    new_train = dataclasses.replace(saved_train, **{n: _value(req, n) for n in HONOURED_ON_RESUME if n in req.given})
    changes = resume_changes(saved_train, new_train, rundir.checkpoint_step(req.out))
    return RunPlan(req.out, resume=True, model=ModelConfig.from_dict(run.config["model"]), train=new_train,
                   data=run.config["data"], changes=changes)


def _plan_prompt(req: TrainRequest) -> RunPlan:
    if req.from_run is None:
        raise ConfigError("--method prompt needs --from RUN_DIR (the finished run whose weights stay frozen)")
    _refuse(sorted(req.given - PROMPT_OPTIONS),
            "not used by --method prompt (it trains on its base run's data and model, and does not resume)")
    if not req.from_run.is_dir():
        raise RunError(f"--from {req.from_run}: run directory not found")
    rundir.check_new(req.out)
    from .prompt_train import PromptTrainConfig
    pcfg = PromptTrainConfig(steps=req.steps or PROMPT_DEFAULT_STEPS, batch_size=req.batch_size, lr=req.lr,
                             seed=req.seed, eval_every=req.eval_every, measure_steps=req.measure_steps,
                             n_input=req.prompt_len, n_attn=req.attn_prompt_len)
    return RunPlan(req.out, prompt=pcfg, base_run=req.from_run)


def _saved_options(config: Dict) -> Dict[str, object]:
    """A run's config.json as the option values that would have made it."""
    m, t, d = ModelConfig.from_dict(config["model"]), TrainConfig.from_dict(config["train"]), config["data"]
    out = {"method": t.method, "preset": m.preset, "batch_size": t.batch_size, "lr": t.lr, "seed": t.seed,
           "eval_every": t.eval_every, "avr_finetune_frac": t.avr_finetune_frac, "tag_weight": t.tag_weight,
           "no_rmm": not m.use_rmm, "no_avr": not m.use_avr, "slots": m.n_slots, "diffusion_steps": m.diffusion_steps,
           "avr_start": m.avr_start, "addressing": m.addressing, "audio_heads": m.audio_heads,
           "video_expert": m.video_expert, "dropout_weight": t.dropout_weight}
    if t.base_run:
        out["from_run"] = t.base_run
    if d.get("kind") == "builtin":
        out.update(data_seed=d["synth"]["seed"], train_clips=d["synth"]["train_clips"],
                   benchmark_version=d["synth"].get("version", 1))
    elif d.get("kind") == "manifest":
        out.update(manifest_dir=d["dir"])
    elif d.get("kind") == "music-avqa":
        out.update(music_avqa=d["questions"], features=d["features"])
    return out


def _value(req: TrainRequest, name: str):
    """An option's value as a run records it (defaults filled in, paths absolute)."""
    v = getattr(req, name)
    if name == "steps":
        return v or TrainConfig.steps
    if name == "train_clips" and not v:
        from .data.synth import SynthConfig
        return SynthConfig.train_clips
    return str(Path(v).resolve()) if isinstance(v, Path) else v


def _refuse(names, why: str) -> None:
    if names:
        raise ConfigError(f"{', '.join(_flag(n) for n in names)}: {why}; drop {'it' if len(names) == 1 else 'them'}")


def _flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def _option_names():
    return [f.name for f in dataclasses.fields(TrainRequest) if f.name != "given"]
