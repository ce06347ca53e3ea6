"""`avqa-edge train --method prompt --from RUN_DIR`: prompt learning on a frozen trained run
(METHOD.md section 5), and its cost against full fine-tuning, measured in the same run.

Everything of the base run is frozen: encoders, RMM, AVR, backbone, with the whole model in
eval mode, so BatchNorm running statistics do not move. Only the PromptBank trains. Each
batch draws a condition per clip (PROMPT_CONDITIONS: complete, audio / visual missing,
audio / visual / both noisy; its questions share it) on the same data pipeline as `train`
(same sampler, the same cached log-mel front end, the encoders run on every step: no
feature caching). A missing sensor is zero-filled (no RMM / AVR: the prompts are the
method under test, and RMM / AVR stay a separate method); missing draws follow the base
training's per-segment masks (all T segments absent half the time, else a random subset).
Noise is the eval protocol's (0.3 / 0.7 / 0.5 x the feature std on validation). The loss is
CE of the backbone's answer with the case's prompt set.

Cost comparison (written to state.json's summary): before training, K steps of each of
- `finetune`: the same forward and loss, every parameter (model + prompts) trainable, the
  model in train mode (what full fine-tuning does), Adam over all of them;
- `prompt`: the prompt training itself;
run in a fresh subprocess each, after the same setup (model, data, log-mel cache loaded),
with the same batches. Memory: the process's peak RSS during the K steps minus its RSS just
before them (the kernel's high-water mark is reset through /proc/self/clear_refs), plus the
absolute peak. Time: seconds per step over the steps after the first two, and per epoch =
one pass over the training questions (ceil(questions / batch) steps).
"""
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from avqa_edge import __version__
from avqa_edge.errors import AvqaError, ConfigError, RunError
from avqa_edge.runtime.text import Vocabulary

from . import rundir
from .checkpoint import load_model, read_json, save_tensors
from .data.loader import SplitData
from .data.specs import load_split
from .scoring import NOISE_SCENARIOS, feature_std, predict, score
from .model.prompts import CONDITION_CASE, PromptBank, PromptConfig, n_parameters, prompted_logits
from .train import PER_CLIP, lr_at, random_masks

PROMPT_CONDITIONS = ("complete", "audio_missing", "visual_missing", "audio_noisy", "visual_noisy", "both_noisy")
PROMPT_LR = 1e-2
P_FULL_MISSING = 0.5


@dataclass
class PromptTrainConfig:
    steps: int = 300
    batch_size: int = 64
    lr: float = 0.0                 # 0 -> PROMPT_LR
    seed: int = 0
    eval_every: int = 100
    val_samples: int = 512
    measure_steps: int = 20         # K steps of fine-tuning and of prompt training timed in subprocesses (0: skip)
    n_input: int = 4
    n_attn: int = 4
    threads: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ConfigError("steps, batch size and --eval-every must be positive")
        if self.measure_steps < 0 or 0 < self.measure_steps < 3:
            raise ConfigError("--measure-steps must be 0 (skip) or at least 3")


# ---- runs -------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_base(run_dir: Path):
    """The finished base run to adapt -> (model, config)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"--from {run_dir}: run directory not found")
    if (read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}).get("kind") == "prompt":
        raise RunError(f"--from {run_dir} is a prompt run; give the trained run it came from")
    state = read_json(run_dir / "state.json")
    if not state.get("finished"):
        raise RunError(f"--from {run_dir}: training has not finished (step {state.get('step')})")
    return load_model(run_dir)


def load_prompts(prompt_run: Path, base_run: Optional[Path] = None) -> Tuple[PromptBank, Dict]:
    """A prompt run's PromptBank (eval mode) and config; with base_run, check that the prompts
    were trained on exactly that run's weights."""
    from safetensors.torch import load_file
    prompt_run = Path(prompt_run)
    if not prompt_run.is_dir():
        raise RunError(f"prompt run {prompt_run} not found")
    config = read_json(prompt_run / "config.json")
    if config.get("kind") != "prompt":
        raise RunError(f"{prompt_run} is not a prompt run (`avqa-edge train --method prompt --from RUN`)")
    path = prompt_run / "prompts.safetensors"
    if not path.exists():
        raise RunError(f"{path} not found: has the prompt training reached its first validation?")
    if base_run is not None:
        want = config["base"]["weights_sha256"]
        if _sha256(Path(base_run) / "model.safetensors") != want:
            raise RunError(f"{prompt_run} was trained on {config['base']['dir']}, whose weights differ from "
                            f"{base_run}'s: prompts only fit the weights they were trained with")
    bank = PromptBank(PromptConfig(**config["prompt"]))
    tensors = load_file(str(path))
    try:
        bank.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise RunError(f"{path} does not match its config ({str(e).splitlines()[-1].strip()})") from None
    return bank.eval(), config


def freeze(model: torch.nn.Module) -> None:
    """No gradient anywhere in the model, and eval mode (BatchNorm statistics stay)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()


# ---- one step -----------------------------------------------------------------------------------

def draw_conditions(gen: torch.Generator, u: int) -> List[str]:
    return [PROMPT_CONDITIONS[i] for i in torch.randint(0, len(PROMPT_CONDITIONS), (u,), generator=gen).tolist()]


def corrupted_features(model, batch: Dict[str, torch.Tensor], conds: List[str], feat_std: Tuple[float, float],
                       gen: torch.Generator):
    """Encode a batch of U clips under their conditions (U,): absent segments zero-filled,
    noise added to noisy sensors. -> Feats (question level)."""
    u, t = len(conds), model.cfg.t_segments
    ma, mv = torch.ones(u, t), torch.ones(u, t)
    masks = random_masks(gen, u, t, P_FULL_MISSING)
    for i, c in enumerate(conds):
        if c == "audio_missing":
            ma[i] = masks[i]
        elif c == "visual_missing":
            mv[i] = masks[i]
    f, _, _ = model.encode(batch, ma, mv)
    scale = torch.tensor([NOISE_SCENARIOS.get(c, (0.0, 0.0)) for c in conds])[batch["clip_index"]]   # (B, 2)
    if bool((scale > 0).any()):
        f.a = f.a + (scale[:, 0] * feat_std[0])[:, None, None] * torch.randn(f.a.shape, generator=gen)
        f.v = f.v + (scale[:, 1] * feat_std[1])[:, None, None, None, None] * torch.randn(f.v.shape, generator=gen)
    return f


def prompt_loss(model, bank: PromptBank, batch: Dict[str, torch.Tensor], conds: List[str],
                feat_std: Tuple[float, float], gen: torch.Generator, through_encoders: bool) -> torch.Tensor:
    """CE of the answers with each question's case set. Without `through_encoders` the
    frozen encoders run without autograd (nothing of theirs trains)."""
    with torch.set_grad_enabled(through_encoders):
        f = corrupted_features(model, batch, conds, feat_std, gen)
    cases = [CONDITION_CASE[conds[i]] for i in batch["clip_index"].tolist()]
    logits = prompted_logits(model.backbone, f.a, f.v, f.q, bank.select(bank.case_index(cases)))
    return F.cross_entropy(logits, batch["answers"])


# ---- cost measurement ---------------------------------------------------------------------------

def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AvqaError(f"{key} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")      # reset the RSS high-water mark to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure(base_run: Path, mode: str, steps: int, batch_size: int, seed: int, n_input: int, n_attn: int,
            lr: float) -> Dict:
    """K steps of `mode` (finetune | prompt) after the common setup; peak RSS delta and time."""
    if mode not in ("finetune", "prompt"):
        raise AvqaError(f"mode must be finetune or prompt, got {mode!r}")
    model, config = load_base(base_run)
    train_data, val_data = _data(config, model)
    feat_std = feature_std(model, val_data)
    bank = PromptBank(PromptConfig(model.cfg.dim, n_input, n_attn), model.backbone.type_av, seed)
    if mode == "prompt":
        freeze(model)
        params = list(bank.parameters())
    else:
        model.train()
        params = list(model.parameters()) + list(bank.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    rng, gen = np.random.default_rng([seed, 1]), torch.Generator().manual_seed(seed)
    batches = [train_data.batch(train_data.sample(rng, batch_size, PER_CLIP)) for _ in range(steps)]
    reset = _reset_peak()
    rss0 = _status_kib("VmRSS")
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        u = int(batch["clip_index"].max()) + 1
        loss = prompt_loss(model, bank, batch, draw_conditions(gen, u), feat_std, gen, through_encoders=(mode == "finetune"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    peak = _status_kib("VmHWM")
    sec = float(np.mean(times[2:]))
    steps_per_epoch = math.ceil(len(train_data) / batch_size)
    return {"mode": mode, "steps": steps, "batch_size": batch_size,
            "trainable_parameters": int(sum(p.numel() for p in params if p.requires_grad)),
            "rss_before_mib": round(rss0 / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
            "peak_rss_delta_mib": round((peak - rss0) / 1024, 1) if reset else None,
            "peak_reset": reset, "sec_per_step": round(sec, 4), "steps_per_epoch": steps_per_epoch,
            "sec_per_epoch": round(sec * steps_per_epoch, 1), "threads": torch.get_num_threads()}


def measure_in_subprocess(base_run: Path, mode: str, cfg: PromptTrainConfig, log: Callable[[str], None]) -> Dict:
    args = {"base_run": str(Path(base_run).resolve()), "mode": mode, "steps": cfg.measure_steps,
            "batch_size": cfg.batch_size, "seed": cfg.seed, "n_input": cfg.n_input, "n_attn": cfg.n_attn,
            "lr": cfg.lr or PROMPT_LR, "threads": cfg.threads}
    log(f"measuring {cfg.measure_steps} steps of {'full fine-tuning' if mode == 'finetune' else 'prompt training'} "
        "in a subprocess ...")
    proc = subprocess.run([sys.executable, "-m", "avqa_edge.toolkit.prompt_train", json.dumps(args)],
                          capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        raise AvqaError(f"the {mode} measurement failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_costs(ft: Dict, pr: Dict) -> Dict:
    def saving(a, b):
        return None if a in (None, 0) or b is None else round(100 * (1 - b / a), 1)
    return {"finetune": ft, "prompt": pr,
            "savings_percent": {"trainable_parameters": saving(ft["trainable_parameters"], pr["trainable_parameters"]),
                                "peak_rss_delta": saving(ft["peak_rss_delta_mib"], pr["peak_rss_delta_mib"]),
                                "peak_rss": saving(ft["peak_rss_mib"], pr["peak_rss_mib"]),
                                "time_per_epoch": saving(ft["sec_per_epoch"], pr["sec_per_epoch"])},
            "reference": {"total_memory_gib": [95.1, 17.9], "sec_per_epoch": [60.0, 2.4],
                          "source": "METHOD.md section 5 (frozen CAV-MAE, GPU)"}}


def cost_lines(c: Dict) -> List[str]:
    ft, pr, s = c["finetune"], c["prompt"], c["savings_percent"]
    return [f"trainable parameters: full fine-tuning {ft['trainable_parameters']:,} -> prompts {pr['trainable_parameters']:,} "
            f"({s['trainable_parameters']} % fewer)",
            f"peak training memory (RSS above the loaded model + data): {ft['peak_rss_delta_mib']} -> "
            f"{pr['peak_rss_delta_mib']} MiB ({s['peak_rss_delta']} % less); whole process peak {ft['peak_rss_mib']} -> "
            f"{pr['peak_rss_mib']} MiB ({s['peak_rss']} % less)",
            f"time: {ft['sec_per_step']} -> {pr['sec_per_step']} s per step; per epoch ({ft['steps_per_epoch']} steps of "
            f"{ft['batch_size']}) {ft['sec_per_epoch']} -> {pr['sec_per_epoch']} s ({s['time_per_epoch']} % less)",
            "reference (GPU, CAV-MAE): 95.1 -> 17.9 GiB total memory, 60 -> 2.4 s per epoch"]


# ---- training -----------------------------------------------------------------------------------

def _data(config: Dict, model) -> Tuple[SplitData, SplitData]:
    spec = config["data"]
    vocab = Vocabulary(model.cfg.vocab)
    train_data = SplitData(load_split(spec, "train"), vocab, model.cfg.answers)
    val_data = SplitData(load_split(spec, "val"), vocab, model.cfg.answers, strict_answers=False)
    if model.cfg.inputs == "raw":
        train_data.cache_mel(model.audio_encoder.frontend)
        val_data.cache_mel(model.audio_encoder.frontend)
    return train_data, val_data


def validate(model, bank: PromptBank, val: SplitData, feat_std, limit: int) -> Dict[str, float]:
    """prompt_oracle on validation under each training condition; score = their mean."""
    out = {}
    for cond in PROMPT_CONDITIONS:
        qs, preds = predict(model, val, cond, "prompt_oracle", limit=limit, feat_std=feat_std, prompts=bank)
        out[cond] = score(val, qs, preds)["overall"]
    out["score"] = float(np.mean([out[c] for c in PROMPT_CONDITIONS]))
    return out


def train_prompts(run_dir: Path, base_run: Path, cfg: PromptTrainConfig, log: Callable[[str], None] = print) -> Dict:
    run_dir, base_run = Path(run_dir), Path(base_run)
    rundir.start_new(run_dir, log)     # before the measurements: a folder that cannot take the run fails at once
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    model, config = load_base(base_run)
    costs = None
    if cfg.measure_steps:
        costs = compare_costs(measure_in_subprocess(base_run, "finetune", cfg, log),
                              measure_in_subprocess(base_run, "prompt", cfg, log))
        for line in cost_lines(costs):
            log(line)
    log(f"loading data ({config['data']['kind']}) ...")
    train_data, val_data = _data(config, model)
    freeze(model)
    feat_std = feature_std(model, val_data)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    bank = PromptBank(PromptConfig(model.cfg.dim, cfg.n_input, cfg.n_attn), model.backbone.type_av, cfg.seed)
    n_train = n_parameters(bank)
    n_model = sum(p.numel() for p in model.parameters())
    lr = cfg.lr or PROMPT_LR
    opt = torch.optim.Adam(bank.parameters(), lr=lr)
    rundir.write_config(run_dir, {
        "version": __version__, "torch": torch.__version__, "kind": "prompt",
        "base": {"dir": str(base_run.resolve()), "model_hash": config.get("model_hash"),
                 "weights_sha256": _sha256(base_run / "model.safetensors")},
        "prompt": bank.cfg.to_dict(), "train": asdict(cfg), "data": config["data"],
        "conditions": list(PROMPT_CONDITIONS), "condition_case": CONDITION_CASE})
    log(f"prompt training: {n_train:,} trainable parameters ({len(bank.cfg.cases)} sets of {cfg.n_input} + {cfg.n_input} "
        f"input tokens and {cfg.n_attn} key/value tokens), {n_model:,} frozen; {cfg.steps} steps x {cfg.batch_size}, lr {lr:g}")
    rng, gen = np.random.default_rng([cfg.seed, 1]), torch.Generator().manual_seed(cfg.seed)
    best, history, ema = -1.0, [], None
    t_loop = time.time()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps, lr)
        batch = train_data.batch(train_data.sample(rng, cfg.batch_size, PER_CLIP))
        u = int(batch["clip_index"].max()) + 1
        loss = prompt_loss(model, bank, batch, draw_conditions(gen, u), feat_std, gen, through_encoders=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bank.parameters(), 1.0)
        opt.step()
        ema = float(loss.detach()) if ema is None else 0.98 * ema + 0.02 * float(loss.detach())
        last = step + 1 == cfg.steps
        if (step + 1) % cfg.eval_every == 0 or last:
            train_sec = time.time() - t_loop
            val = validate(model, bank, val_data, feat_std, cfg.val_samples)
            history.append({"step": step + 1, "loss": ema, **val})
            improved = val["score"] > best
            if improved:
                best = val["score"]
                save_tensors(run_dir / "prompts.safetensors", bank.state_dict(),
                             {"base_model_hash": str(config.get("model_hash")), "step": str(step + 1)})
            rundir.write_state(run_dir, {"step": step + 1, "best_score": best, "finished": False, "history": history})
            log(f"step {step + 1}: loss {ema:.3f}; val (prompt_oracle) " +
                " ".join(f"{c} {val[c]:.3f}" for c in PROMPT_CONDITIONS) + ("  (best, saved)" if improved else ""))
            t_loop = time.time() - train_sec       # restart the clock where training stopped: validation is not training
    train_seconds = time.time() - t_loop
    after = model.state_dict()
    unchanged = all(torch.equal(buffers[k], after[k]) for k in buffers)
    if not unchanged:
        raise AvqaError("internal error: the frozen model changed during prompt training")
    summary = {"kind": "prompt", "steps": cfg.steps, "best_val_score": best, "trainable_parameters": n_train,
               "frozen_parameters": n_model, "train_seconds": round(train_seconds, 1),
               "sec_per_step": round(train_seconds / cfg.steps, 4),
               "seconds": round(time.time() - t0, 1), "base_model_unchanged": unchanged, "costs": costs}
    rundir.write_state(run_dir, {"step": cfg.steps, "best_score": best, "finished": True, "history": history,
                                 "summary": summary})
    log(f"done in {summary['seconds'] / 60:.1f} min ({train_seconds:.0f} s of prompt training); best validation score "
        f"{best:.3f}; prompts in {run_dir / 'prompts.safetensors'}")
    return summary


if __name__ == "__main__":   # the measurement subprocess: one JSON line on stdout
    a = json.loads(sys.argv[1])
    threads = a.pop("threads")
    if threads:
        torch.set_num_threads(threads)
    print(json.dumps(measure(Path(a.pop("base_run")), **a)))
