"""Weights in safetensors, everything else in JSON (no pickle); the layout of a run directory
and its crash safety are toolkit/rundir.py's.
"""
from pathlib import Path
from typing import Dict, Tuple

import torch

from avqa_edge.errors import RunError
from avqa_edge.runtime import atomic

from .config import ARCH_VERSION, ModelConfig
from .model.avqa import AVQAModel
from .rundir import read_json  # noqa: F401  (re-exported: eval and tests read runs through here)


def write_json(path: Path, obj) -> None:
    atomic.write_json(path, obj)


def save_tensors(path: Path, tensors: Dict[str, torch.Tensor], meta: Dict[str, str]) -> None:
    """Atomically (fsynced temp file, rename) replace `path` with `tensors`."""
    from safetensors.torch import save_file
    tmp = Path(str(path) + atomic.TMP_SUFFIX)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    atomic.commit_file(tmp, path)


def optimizer_tensors(opt: torch.optim.Optimizer) -> Dict[str, torch.Tensor]:
    """Adam state flattened to named tensors."""
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"opt.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def restore_optimizer(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, i, k = name.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def load_model(run_dir, weights: str = "model.safetensors") -> Tuple[AVQAModel, Dict]:
    """Rebuild the model from config.json and load its weights. -> (model in eval mode, config)."""
    from safetensors.torch import load_file
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} not found")
    config = read_json(run_dir / "config.json")
    if config.get("kind") == "prompt":
        raise RunError(f"{run_dir} is a prompt run: it holds prompts, not a model; use its base run "
                        f"{(config.get('base') or {}).get('dir')} with --prompt {run_dir}")
    path = run_dir / weights
    if not path.exists():
        raise RunError(f"{path} not found: has `avqa-edge train --out {run_dir}` run to its first validation?")
    cfg = ModelConfig.from_dict(config["model"])
    if cfg.arch != ARCH_VERSION:
        raise RunError(f"{run_dir} was trained with model version {cfg.arch}; this avqa-edge builds version "
                        f"{ARCH_VERSION}: train it again (or use the avqa-edge release that made it)")
    model = AVQAModel(cfg)
    tensors = load_file(str(path))
    try:
        missing, unexpected = model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(("opt.", "tagger."))}, strict=False)
    except RuntimeError as e:
        raise RunError(f"{path} does not match its config ({str(e).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise RunError(f"{path} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval(), config
