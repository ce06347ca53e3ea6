"""`avqa-edge train`: Eq. 8 training with periodic validation under sensor scenarios.

Methods: rmm_avr (the paper's model), baseline (backbone on complete data only, what users
have today), dropout (the same backbone with random per-segment modality dropout and no
RMM/AVR: the fair baseline), retrofit (RMM and AVR learnt on top of a finished run whose
backbone stays frozen: the case of a deployed model that gains missing-sensor recovery
without retraining). Every method gets the same data, steps and batches.

Two stages: `steps` that learn the encoders (and a backbone) end to end from the complete
answer and the event-tagging loss, the same for every method; then `refit_steps` with the
encoders frozen and their features cached, the backbone re-initialized and trained with the
method's loss (Eq. 8 with RMM and AVR for rmm_avr; toolkit/refit.py says why). refit_steps = 0
is the single-stage training of earlier runs: the method's loss from the first step. A run
given a base run (`--from`, TrainConfig.base_run) takes that run's encoders as its stage 1 and
trains stage 2 only, so that methods compared on one seed share their encoders exactly.
"""
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch.nn import functional as F

from avqa_edge import __version__
from avqa_edge.errors import AvqaError, ConfigError, RunError
from avqa_edge.runtime import atomic
from avqa_edge.runtime.text import Vocabulary

from . import rundir
from .checkpoint import load_model, optimizer_tensors, restore_optimizer
from .config import ARCH_VERSION, PRESET_LR, ModelConfig, TrainConfig
from .data.loader import SplitData, to_device
from .data.specs import load_split
from .scoring import MISSING_SCENARIOS, predict, score
from .model.avqa import AVQAModel
from .model.tagger import EventTagger, batch_labels
from .refit import FeatureCache, freeze_encoders, frozen_in_stage2, trainable
from .train_plan import resume_changes

PER_CLIP = 4          # questions per clip in a training batch (clips are encoded once)
MAX_DENOISE_PAIRS = 128
AVR_LOSS_BATCH = 16   # questions whose pseudo terms go through the sampler in the AVR phase


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible to PyTorch")
    return torch.device(name)


def random_masks(rng: torch.Generator, b: int, t: int, p_full: float) -> torch.Tensor:
    """(B, T) 1 = present: all T segments absent with probability p_full, else a random
    non-empty subset."""
    full = torch.rand(b, 1, generator=rng) < p_full
    frac = torch.rand(b, 1, generator=rng) * 0.8 + 0.1
    part = torch.rand(b, t, generator=rng) < frac
    part[torch.arange(b), torch.randint(0, t, (b,), generator=rng)] = True   # at least one absent
    return (~(full | part)).float()


def lr_at(step: int, total: int, base: float, warmup: int = 50) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def flops_per_answer(model: AVQAModel) -> Dict[str, float]:
    """FLOPs for one answer (batch 1) on the complete path and with a sensor absent (rmm+avr),
    counted by torch.utils.flop_counter on the model's own ops."""
    from torch.utils.flop_counter import FlopCounterMode
    cfg = model.cfg
    t = cfg.t_segments
    if cfg.inputs == "raw":
        from avqa_edge.runtime.signal import FRAME_H, FRAME_W, FRAMES_PER_SEGMENT, SEGMENT_SAMPLES
        batch = {"frames": torch.zeros(1, t, FRAMES_PER_SEGMENT, FRAME_H, FRAME_W, 3, dtype=torch.uint8),
                 "audio": torch.zeros(1, t * SEGMENT_SAMPLES)}
    else:
        batch = {"audio_feat": torch.zeros(1, t, cfg.audio_in), "visual_feat": torch.zeros(1, t, cfg.visual_in, cfg.map_h, cfg.map_w)}
    batch["tokens"] = torch.ones(1, cfg.q_len, dtype=torch.int64)
    out = {}
    model.eval()
    with torch.no_grad():
        for name, kw in (("complete", {}), ("audio_missing", {"mask_a": torch.zeros(1, t)}),
                         ("visual_missing", {"mask_v": torch.zeros(1, t)})):
            with FlopCounterMode(display=False) as fc:
                model(batch, method="rmm+avr", **kw)
            out[name] = float(fc.get_total_flops())
    return out


def validate(model: AVQAModel, data: SplitData, method: str, limit: int) -> Dict[str, float]:
    out = {}
    for scen in MISSING_SCENARIOS:
        qs, preds = predict(model, data, scen, "zero_fill" if scen == "complete" else method, limit=limit)
        out[scen] = score(data, qs, preds)["overall"]
    out["score"] = float(np.mean([out[s] for s in MISSING_SCENARIOS]))
    return out


def train(run_dir: Path, model_cfg: Optional[ModelConfig], cfg: Optional[TrainConfig], data_spec: Optional[Dict],
          resume: bool = False, log: Callable[[str], None] = print) -> Dict:
    """Train a new run in `run_dir`, or resume the one there from its last checkpoint (toolkit/rundir.py
    says what a folder may hold). With `resume`, None stands for the run's saved settings, and
    `cfg` may change only its steps and device (train_plan.resume_changes). -> the run's summary."""
    run_dir = Path(run_dir)
    if resume:
        model_cfg, cfg, data_spec, resume = _resume_settings(run_dir, model_cfg, cfg, data_spec, log)
    else:
        rundir.start_new(run_dir, log)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    job = _setup(run_dir, model_cfg, cfg, data_spec, resume, pick_device(cfg.device), log)
    _train_loop(job)
    return _finish(job, t0, log)


@dataclass
class _Job:
    """A run being trained: its settings, data, model and state."""
    run_dir: Path
    model_cfg: ModelConfig
    cfg: TrainConfig
    device: torch.device
    train_data: SplitData
    val_data: SplitData
    model: AVQAModel
    tagger: Optional[EventTagger]
    start: int = 0                        # the step training starts from (the checkpoint's)
    best: float = -1.0
    best_step: Optional[int] = None
    history: List[Dict] = field(default_factory=list)
    checkpoint: Optional[Dict[str, torch.Tensor]] = None   # the tensors resumed from (Adam state included)
    n_params: int = 0
    flops: Dict[str, float] = field(default_factory=dict)

    @property
    def retrofit(self) -> bool:
        return self.cfg.method == "retrofit"

    @property
    def lr(self) -> float:
        return self.cfg.lr or PRESET_LR[self.model_cfg.preset]

    @property
    def total_steps(self) -> int:
        return self.cfg.steps + self.cfg.refit_steps

    @property
    def last_from(self) -> int:
        """The first step of the last stage, where the method's loss trains (stage 2, or the only stage)."""
        return self.cfg.steps if self.cfg.refit_steps else 0

    @property
    def avr_from(self) -> int:
        """The first step of the AVR phase, the last avr_finetune_frac of the last stage."""
        last_len = self.cfg.refit_steps or self.cfg.steps
        return self.last_from + int(last_len * (1 - self.cfg.avr_finetune_frac))


def _resume_settings(run_dir: Path, model_cfg: Optional[ModelConfig], cfg: Optional[TrainConfig],
                     data_spec: Optional[Dict], log: Callable[[str], None]):
    """The saved settings of the run to resume, with the changes `cfg` asks for recorded in its
    config.json. -> (model config, train config, data spec, whether there is a checkpoint to resume)."""
    run = rundir.open_resume(run_dir)
    saved = run.config
    saved_model = ModelConfig.from_dict(saved["model"])
    if saved_model.arch != ARCH_VERSION:
        raise RunError(f"{run_dir} was started with model version {saved_model.arch}; this avqa-edge builds "
                       f"version {ARCH_VERSION}, so it cannot resume it: train again")
    if model_cfg is not None and model_cfg.hash() != saved_model.hash():
        raise RunError(f"--resume: the model config given is not the one {run_dir} was started with")
    if data_spec is not None and data_spec != saved["data"]:
        raise RunError(f"--resume: the data given is not the data {run_dir} was started with")
    step = rundir.checkpoint_step(run_dir)
    changes = resume_changes(TrainConfig.from_dict(saved["train"]), cfg, step) if cfg is not None else {}
    if changes:
        log(f"resuming with {', '.join(f'{k} {a} -> {b}' for k, a, b in ((k, *v) for k, v in changes.items()))}")
        rundir.write_config(run_dir, {**saved, "train": cfg.to_dict(),
                                      "resumed": saved.get("resumed", []) + [{"step": step, "changed": changes}]})
    cfg = cfg if cfg is not None else TrainConfig.from_dict(saved["train"])
    if run.status == rundir.STARTED:
        log(f"{run_dir} stopped before its first resume checkpoint: training it from step 0 with its saved settings")
        rundir.start_new(run_dir, lambda _: None)
        return saved_model, cfg, saved["data"], False
    return saved_model, cfg, saved["data"], True


def _setup(run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, data_spec: Dict, resume: bool,
           device: torch.device, log: Callable[[str], None]) -> _Job:
    """Data, model and tagger; then config.json for a new run, or the checkpoint's weights and
    state for a resumed one; the log-mel cache and the model's size and cost."""
    t0 = time.time()
    log(f"loading data ({data_spec['kind']}) ...")
    train_split, val_split = load_split(data_spec, "train"), load_split(data_spec, "val")
    log(f"data ready in {time.time() - t0:.1f}s: {len(train_split)} train / {len(val_split)} val questions")
    if not resume:
        _fit_to_data(model_cfg, cfg, train_split)
    vocab = Vocabulary(model_cfg.vocab)
    train_data = SplitData(train_split, vocab, model_cfg.answers)
    val_data = SplitData(val_split, vocab, model_cfg.answers, strict_answers=False, name="validation")
    model = AVQAModel(model_cfg).to(device)
    tagger = None
    if cfg.tag_weight > 0 and train_data.labels is not None and model_cfg.inputs == "raw":
        labels = train_data.labels
        tagger = EventTagger(model_cfg.dim, labels["sounding"].shape[-1], labels["cell"].shape[-2:]).to(device)
    job = _Job(run_dir, model_cfg, cfg, device, train_data, val_data, model, tagger)
    if resume:
        _restore(job, log)
    else:
        rundir.write_config(run_dir, {
            "version": __version__, "torch": torch.__version__, "model": model_cfg.to_dict(),
            "model_hash": model_cfg.hash(), "train": cfg.to_dict(), "data": data_spec,
            "data_meta": _jsonable(train_split.meta)})
        if cfg.base_run:
            _take_base(job, log)
    if model_cfg.inputs == "raw":
        t1 = time.time()
        train_data.cache_mel(model.audio_encoder.frontend)
        val_data.cache_mel(model.audio_encoder.frontend)
        log(f"log-mel cached in {time.time() - t1:.1f}s")
    job.n_params = sum(p.numel() for p in model.parameters())
    job.flops = flops_per_answer(model)
    log(f"model: {job.n_params / 1e6:.2f} M parameters; per answer {job.flops['complete'] / 1e6:.0f} MFLOPs with both "
        f"sensors, {job.flops['audio_missing'] / 1e6:.0f} / {job.flops['visual_missing'] / 1e6:.0f} MFLOPs with "
        f"audio / video absent")
    log(f"preset {model_cfg.preset}, method {cfg.method}, {cfg.steps} + {cfg.refit_steps} steps x {cfg.batch_size} "
        f"(end to end + encoders frozen), lr {job.lr:g}, device {device}"
        + (f", event tagging x {cfg.tag_weight:g}" if tagger is not None else ""))
    return job


def _fit_to_data(model_cfg: ModelConfig, cfg: TrainConfig, train_split) -> None:
    """A new run's vocabulary and answers come from its training split; methods other than
    rmm_avr and retrofit have no RMM / AVR, and the baseline no video expert."""
    vocab = Vocabulary.build([qa.question for qa in train_split.qa])
    model_cfg.vocab, model_cfg.answers = vocab.words[2:], sorted({qa.answer for qa in train_split.qa})
    if cfg.method not in ("rmm_avr", "retrofit"):
        model_cfg.use_rmm = model_cfg.use_avr = False
    if cfg.method == "baseline":
        model_cfg.video_expert = False


def _take_base(job: _Job, log: Callable[[str], None]) -> None:
    """Stage 1 from the base run: its encoders' weights (retrofit: its backbones' too) into the
    model; the run starts at stage 2."""
    base, config = load_model(job.cfg.base_run)
    if (config["model"]["vocab"], config["model"]["answers"]) != (job.model_cfg.vocab, job.model_cfg.answers):
        raise RunError(f"--from {job.cfg.base_run}: its vocabulary or answer list is not this data's")
    for module in frozen_in_stage2(job.model, job.retrofit):
        name = next(n for n, m in job.model.named_children() if m is module)
        if getattr(base, name, None) is None:
            raise RunError(f"--from {job.cfg.base_run}: the run has no {name} to take")
        module.load_state_dict(getattr(base, name).state_dict())
    job.start = job.cfg.steps
    log(f"stage 1 taken from {job.cfg.base_run}: its encoders" + (" and backbone, frozen" if job.retrofit else ", frozen"))


def _restore(job: _Job, log: Callable[[str], None]) -> None:
    """The checkpoint's weights into the model and tagger, its state into the job."""
    tensors, state = rundir.load_checkpoint(job.run_dir)
    job.model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(("opt.", "tagger."))})
    if job.tagger is not None:
        job.tagger.load_state_dict({k[len("tagger."):]: v for k, v in tensors.items() if k.startswith("tagger.")})
    job.checkpoint = tensors
    job.start, job.best, job.history = state["step"], state["best_score"], state["history"]
    job.best_step = state.get("best_step")
    log(f"resuming at step {job.start} (best validation score {job.best:.3f})")


def _train_loop(job: _Job) -> None:
    """Steps job.start .. total: stage 1 end to end, then stage 2 on the frozen encoders' cached
    features; a checkpoint every eval_every steps and at the end of each stage."""
    cfg = job.cfg
    stage2_start = job.start > cfg.steps
    opt = torch.optim.Adam(trainable(job.model, stage2_start, job.retrofit) + _tagger_params(job.tagger, stage2_start), lr=job.lr,
                           foreach=True)   # one kernel per op for all parameters: the same numbers, ~1.5 ms less a step
    if job.checkpoint is not None:
        restore_optimizer(opt, job.checkpoint)
        job.checkpoint = None
    cache: Optional[FeatureCache] = None
    rng = np.random.default_rng([cfg.seed, job.start])
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + job.start)
    seen, t_loop = 0, time.time()
    ema: Dict[str, float] = {}   # running means of the loss terms (what the log and plot show)
    with _progress() as bar:
        task = bar.add_task("train", total=job.total_steps, completed=job.start, info="")
        for step in range(job.start, job.total_steps):
            stage2 = step >= cfg.steps
            if stage2 and cache is None:
                if step == cfg.steps:          # entering stage 2: a fresh backbone and optimizer
                    opt = _fresh_backbone(job.model, cfg.seed, job.lr, job.retrofit)
                ema.clear()                    # the running loss means start again with the stage
                cache = _cache_features(job.model, job.train_data, job.device, step, bar.console.print)
            job.model.train()
            if stage2:
                freeze_encoders(job.model, job.retrofit)
            for g in opt.param_groups:
                g["lr"] = lr_at(step - cfg.steps, cfg.refit_steps, job.lr) if stage2 else lr_at(step, cfg.steps, job.lr)
            total, terms, b = _loss(job, step, cache if stage2 else None, rng, gen)
            _optimizer_step(job.model, opt, total)
            seen += b
            for k, v in [("loss", total), *terms.items()]:
                ema[k] = float(v.detach()) if k not in ema else 0.98 * ema[k] + 0.02 * float(v.detach())
            info = " ".join(f"{k}={v:.3f}" for k, v in ema.items()) + f" | {seen / (time.time() - t_loop):.0f} q/s"
            bar.update(task, advance=1, info=info)
            if (step + 1) % cfg.eval_every == 0 or step + 1 in (cfg.steps, job.total_steps):
                _checkpoint(job, opt, step + 1, ema, bar.console.print)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    cols = [TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}")]
    from avqa_edge.console import make_console
    return Progress(*cols, console=make_console(), transient=False, disable=None)


def _loss(job: _Job, step: int, cache: Optional[FeatureCache], rng: np.random.Generator, gen: torch.Generator):
    """One step's loss: a batch (stage 2: from the feature cache), its terms and their weighted
    sum. -> (total, terms, questions in the batch)."""
    cfg, model = job.cfg, job.model
    last_stage = step >= job.last_from
    if cache is not None:
        batch = None
        f, answers = cache.sample(rng, cfg.batch_size, PER_CLIP)
    else:
        batch = to_device(job.train_data.batch(job.train_data.sample(rng, cfg.batch_size, PER_CLIP)), job.device)
        answers = batch["answers"]
        f, _, _ = model.encode(batch)
    b = answers.shape[0]
    if last_stage:
        terms = _terms(model, f, answers, cfg, gen, b, job.model_cfg.t_segments, step >= job.avr_from, job.device)
    else:
        # a stage 1 that a stage 2 follows learns the encoders, the same way for every method:
        # the complete answer and the event tags. The method (Eq. 8, dropout) is stage 2's, on
        # the frozen features, as the paper's is on pre-extracted ones; the pseudo terms here
        # cost 45 % of a stage-1 step (143 against 79 ms at two threads)
        terms = _complete_term(model, f, answers)
    if job.tagger is not None and batch is not None:
        terms["tag"] = job.tagger.loss(f.a, f.v, batch_labels(batch))
    if last_stage and model.video_expert is not None and cfg.method in ("rmm_avr", "dropout"):
        terms.update(_expert_terms(model, f, answers, cfg))
    total = terms["ce_complete"] + terms.get("ce_audio_pseudo", 0) + terms.get("ce_visual_pseudo", 0) \
        + terms.get("ce_no_video", 0) \
        + cfg.lambda_rmm * terms.get("rmm", 0) + cfg.lambda_ave * terms.get("ave", 0) \
        + cfg.tag_weight * terms.get("tag", 0) \
        + cfg.dropout_weight * sum(v for k, v in terms.items() if k.endswith("_drop"))
    if not torch.isfinite(total):
        raise AvqaError(f"the loss became {float(total)} at step {step}; nothing was saved past the last good checkpoint")
    return total, terms, b


def _optimizer_step(model: AVQAModel, opt: torch.optim.Optimizer, total: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    total.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    expert = {id(p) for p in model.video_expert.parameters()} if model.video_expert is not None else set()
    torch.nn.utils.clip_grad_norm_([p for p in params if id(p) not in expert], 1.0)
    if any(id(p) in expert for p in params):   # clipped on its own, so that it leaves the rest of the model's steps as they were
        torch.nn.utils.clip_grad_norm_([p for p in params if id(p) in expert], 1.0)
    opt.step()


def _checkpoint(job: _Job, opt: torch.optim.Optimizer, done: int, ema: Dict[str, float], say: Callable[[str], None]):
    """After `done` steps: the losses into the history, a validation where it counts, and the
    checkpoint (with the best weights where validation improved)."""
    cfg = job.cfg
    entry = {"step": done, "stage": 2 if done > cfg.steps else 1, **ema}
    job.history.append(entry)
    improved = False
    # a stage that a stage 2 follows is validated at its end only (stage 2 redraws the
    # backbone, so its scores say little of the final model; eleven validations cost
    # about 35 s of the 15-minute budget), but its losses and --resume checkpoint are kept
    if done - 1 >= job.last_from or done in (cfg.steps, job.total_steps):
        val = validate(job.model, job.val_data, "rmm+avr" if cfg.method in ("rmm_avr", "retrofit") else "zero_fill",
                       cfg.val_samples)
        entry.update(val)
        improved = val["score"] > job.best
        if improved:
            job.best, job.best_step = val["score"], done
        say(f"step {done}: val complete {val['complete']:.3f} audio_missing {val['audio_missing']:.3f} "
            f"visual_missing {val['visual_missing']:.3f}" + ("  (best, saved)" if improved else ""))
    extra = {"tagger." + k: v for k, v in job.tagger.state_dict().items()} if job.tagger is not None else {}
    rundir.save_checkpoint(job.run_dir, {**job.model.state_dict(), **extra, **optimizer_tensors(opt)},
                           {"config_hash": job.model_cfg.hash(), "step": str(done)}, _state(job, False), improved)


def _state(job: _Job, finished: bool) -> Dict:
    return {"step": job.start if not job.history else job.history[-1]["step"], "best_score": job.best,
            "best_step": job.best_step, "finished": finished, "history": job.history}


def _finish(job: _Job, t0: float, log: Callable[[str], None]) -> Dict:
    """The curves and the summary; state.json marks the run finished."""
    elapsed = time.time() - t0
    plot_curves(job.history, job.run_dir / "curve.png")
    summary = {"steps": job.total_steps, "best_val_score": job.best, "seconds": round(elapsed, 1),
               "parameters": job.n_params, "flops_per_answer": job.flops}
    rundir.write_state(job.run_dir, {**_state(job, True), "step": job.total_steps, "summary": summary})
    log(f"done in {elapsed / 60:.1f} min; best validation score {job.best:.3f}; run in {job.run_dir}")
    return summary


def _fresh_backbone(model: AVQAModel, seed: int, lr: float, retrofit: bool = False) -> torch.optim.Optimizer:
    """Stage 2 begins: the backbone redrawn (seeded; retrofit keeps its base run's). -> the
    optimizer of what stage 2 trains."""
    if not retrofit:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            model.reset_backbones()
    return torch.optim.Adam(trainable(model, True, retrofit), lr=lr, foreach=True)


def _cache_features(model: AVQAModel, data: SplitData, device, step: int, say: Callable[[str], None]) -> FeatureCache:
    t0 = time.time()
    freeze_encoders(model)
    model.eval()
    cache = FeatureCache(model, data, device)
    say(f"stage 2 from step {step}: encoders frozen; "
        + (f"features cached ({cache.nbytes / 2 ** 20:.0f} MB) in {time.time() - t0:.1f}s"
           if cache.cached else "features too large to cache: encoding each batch"))
    return cache


def _tagger_params(tagger: Optional[EventTagger], stage2: bool) -> list:
    """The tagger trains the encoders, so it learns in stage 1 only."""
    return [] if tagger is None or stage2 else list(tagger.parameters())


def _complete_term(model: AVQAModel, f, answers) -> Dict[str, torch.Tensor]:
    """CE on the real pair: baseline's whole loss, and every method's in a stage 1 that a stage 2 follows."""
    return {"ce_complete": F.cross_entropy(model.backbone(f.a, f.v, f.q), answers)}


def _expert_terms(model: AVQAModel, f, answers, cfg: TrainConfig) -> Dict[str, torch.Tensor]:
    """The video expert's CE with the video missing in all T segments: the recalled map in its
    place (rmm_avr), or zeros (dropout; rmm_avr with dropout_weight as well). The recall is read
    without gradient."""
    zeros = torch.zeros_like(f.v)
    if cfg.method != "rmm_avr":
        return {"ce_no_video": F.cross_entropy(model.video_expert(f.a, zeros, f.q), answers)}
    with torch.no_grad():
        pv = model.pseudo(f)[1]
    out = {"ce_no_video": F.cross_entropy(model.video_expert(f.a, pv, f.q), answers)}
    if cfg.dropout_weight:
        out["ce_no_video_drop"] = F.cross_entropy(model.video_expert(f.a, zeros, f.q), answers)
    return out


def _dropout_terms(model: AVQAModel, f, answers, mask_a, mask_v) -> Dict[str, torch.Tensor]:
    """Modality dropout: CE with the masked segments zero-filled, audio and video in turn."""
    ma, mv = mask_a[..., None], mask_v[..., None, None, None]
    return {"audio": F.cross_entropy(model.backbone(f.a * ma, f.v, f.q), answers),
            "visual": F.cross_entropy(model.backbone(f.a, f.v * mv, f.q), answers)}


def _terms(model: AVQAModel, f, answers, cfg: TrainConfig, gen, b: int, t: int, avr_phase: bool, device):
    """The method's loss terms: Eq. 8's for rmm_avr and retrofit (with the AVR phase's sampler when
    avr_phase; rmm_avr with dropout_weight adds the dropout terms as *_drop), the complete term
    alone for baseline, and the complete and dropped-out terms for dropout."""
    mask_a = random_masks(gen, b, t, cfg.p_full_missing).to(device)
    mask_v = random_masks(gen, b, t, cfg.p_full_missing).to(device)
    if cfg.method == "baseline":
        return _complete_term(model, f, answers)
    if cfg.method == "dropout":
        drop = _dropout_terms(model, f, answers, mask_a, mask_v)
        return {**_complete_term(model, f, answers), "ce_audio_pseudo": drop["audio"], "ce_visual_pseudo": drop["visual"]}
    out = _eq8_terms(model, f, answers, mask_a, mask_v, avr_phase)
    if cfg.dropout_weight:
        drop = _dropout_terms(model, f, answers, mask_a, mask_v)
        out.update(ce_audio_drop=drop["audio"], ce_visual_drop=drop["visual"])
    return out


def _eq8_terms(model: AVQAModel, f, answers, mask_a, mask_v, avr_phase: bool) -> Dict[str, torch.Tensor]:
    """Eq. 8's terms; in the AVR phase the pseudo terms are half through the sampler."""
    b = answers.shape[0]
    if avr_phase and model.denoiser is not None:
        # the AVR phase: the sampler's cost bounds how many questions take the pseudo terms
        n = min(b, AVR_LOSS_BATCH)
        out = model.losses(f, answers, mask_a, mask_v, False, MAX_DENOISE_PAIRS)
        sub = type(f)(f.a[:n], f.v[:n], f.q[:n])
        pa, pv = model.pseudo(sub)
        avr = model.pseudo_ce(sub, pa, pv, answers[:n], mask_a[:n], mask_v[:n], True)
        out["ce_audio_pseudo"] = 0.5 * (out["ce_audio_pseudo"] + avr["ce_audio_pseudo"])
        out["ce_visual_pseudo"] = 0.5 * (out["ce_visual_pseudo"] + avr["ce_visual_pseudo"])
        return out
    return model.losses(f, answers, mask_a, mask_v, False, MAX_DENOISE_PAIRS)


def plot_curves(history, path: Path) -> None:
    if not history:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [h["step"] for h in history]
    validated = [h for h in history if "score" in h]          # losses are logged at more steps than validation
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for k in ("ce_complete", "ce_audio_pseudo", "ce_visual_pseudo", "rmm", "ave", "tag"):
        pts = [(h["step"], h[k]) for h in history if k in h]     # stage 1 and stage 2 log different terms
        if pts:
            ax1.plot(*zip(*pts), label=k)
    ax1.set_xlabel("step"), ax1.set_title("training losses"), ax1.legend()
    for k in MISSING_SCENARIOS:
        ax2.plot([h["step"] for h in validated], [h[k] for h in validated], marker="o", label=k)
    stage1 = [h["step"] for h in history if h.get("stage", 1) == 1]
    for ax in (ax1, ax2) if stage1 and stage1[-1] < steps[-1] else ():   # where stage 2 began
        ax.axvline(stage1[-1], color="grey", linestyle=":", label=None)
    ax2.set_xlabel("step"), ax2.set_ylabel("accuracy"), ax2.set_title("validation"), ax2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue())


def _jsonable(meta: Dict) -> Dict:
    """The split's meta without per-clip records (the scenes stay in the data cache)."""
    meta = {k: v for k, v in meta.items() if k not in ("scenes", "video_ids", "question_ids")}
    try:
        json.dumps(meta)
        return meta
    except TypeError:
        return json.loads(json.dumps(meta, default=str))
