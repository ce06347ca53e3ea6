"""Run directories: weights in safetensors, everything else in JSON (no pickle).

RUN_DIR/config.json        model config (vocab, answers), train config, data spec, versions
RUN_DIR/model.safetensors  best-on-validation weights (written atomically)
RUN_DIR/last.safetensors   latest weights + Adam state, for --resume
RUN_DIR/state.json         step, best score, finished flag
"""
import json
import os
from pathlib import Path
from typing import Dict, Tuple

import torch

from avqa_edge.errors import AvqaError

from .config import ARCH_VERSION, ModelConfig
from .model.avqa import AVQAModel


def write_json(path: Path, obj) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AvqaError(f"{path} not found") from None
    except json.JSONDecodeError as e:
        raise AvqaError(f"{path} is not valid JSON: {e}") from None


def save_tensors(path: Path, tensors: Dict[str, torch.Tensor], meta: Dict[str, str]) -> None:
    from safetensors.torch import save_file
    tmp = Path(str(path) + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


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
        raise AvqaError(f"run directory {run_dir} not found")
    config = read_json(run_dir / "config.json")
    if config.get("kind") == "prompt":
        raise AvqaError(f"{run_dir} is a prompt run (issue 5): it holds prompts, not a model; use its base run "
                        f"{(config.get('base') or {}).get('dir')} with --prompt {run_dir}")
    path = run_dir / weights
    if not path.exists():
        raise AvqaError(f"{path} not found: has `avqa-edge train --out {run_dir}` run to its first validation?")
    cfg = ModelConfig.from_dict(config["model"])
    if cfg.arch != ARCH_VERSION:
        raise AvqaError(f"{run_dir} was trained with model version {cfg.arch}; this avqa-edge builds version "
                        f"{ARCH_VERSION}: train it again (or use the avqa-edge release that made it)")
    model = AVQAModel(cfg)
    tensors = load_file(str(path))
    try:
        missing, unexpected = model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(("opt.", "tagger."))}, strict=False)
    except RuntimeError as e:
        raise AvqaError(f"{path} does not match its config ({str(e).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise AvqaError(f"{path} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval(), config
