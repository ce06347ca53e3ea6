"""Run directories that survive `kill -9`: what a folder holds, and starting or resuming a run in it.

RUN_DIR/config.json          written first, once the data is loaded: versions, model and train
                             config, data spec (its "package" says avqa-edge wrote it)
RUN_DIR/last.safetensors     the resume checkpoint: weights, Adam state, and the run's state
                             (step, best score, history) in its metadata
RUN_DIR/model.safetensors    best-on-validation weights (prompt runs: prompts.safetensors)
RUN_DIR/state.json           the state again, written after the checkpoint it describes; with
                             "finished" and the summary once training has ended

Every file goes through runtime/atomic.py (temp file, fsync, rename, folder fsync) in that
order, so a run stopped at any point (`kill -9`, power cut) leaves a folder in one of these states:
  ABSENT / EMPTY   nothing of a run (at most temp files of ours): a new run starts there
  STARTED          config.json but no resume checkpoint yet: a new run starts it over, and
                   --resume runs it from step 0 with its saved settings
  RESUMABLE        a checkpoint: --resume continues from it; a new run is refused
  FINISHED         state.json says so: neither started over nor resumed
A folder holding anything else, or a config.json that avqa-edge did not write, is refused
(RunError) and never written to.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from avqa_edge.errors import RunError
from avqa_edge.runtime import atomic

ABSENT, EMPTY, STARTED, RESUMABLE, FINISHED = "absent", "empty", "started", "resumable", "finished"
CONFIG, STATE, CHECKPOINT, BEST = "config.json", "state.json", "last.safetensors", "model.safetensors"
# what a run of ours writes (prompt runs: prompts.safetensors), config.json last: it marks the folder as ours
RUN_FILES = (STATE, CHECKPOINT, BEST, "prompts.safetensors", "curve.png", CONFIG)


@dataclass
class RunDir:
    path: Path
    status: str
    config: Optional[Dict] = None     # config.json, where there is one

    @property
    def kind(self) -> str:
        return (self.config or {}).get("kind", "train")


def read_json(path: Path) -> Dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is not valid JSON: {e}") from None


def inspect(path: Path) -> RunDir:
    """What `path` holds (see the module doc). Raises RunError for a folder that is not ours."""
    path = Path(path)
    if not path.exists():
        return RunDir(path, ABSENT)
    if not path.is_dir():
        raise RunError(f"{path} is a file, not a run directory")
    names = sorted(p.name for p in path.iterdir())
    if CONFIG not in names:
        foreign = [n for n in names if not _leftover(n)]
        if foreign:
            shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
            raise RunError(f"{path} is not an avqa-edge run (it holds {shown}): choose a new or empty folder for --out")
        return RunDir(path, EMPTY)
    config = _own_config(path / CONFIG)
    if STATE in names and read_json(path / STATE).get("finished"):
        return RunDir(path, FINISHED, config)
    return RunDir(path, RESUMABLE if CHECKPOINT in names else STARTED, config)


def check_new(path: Path) -> RunDir:
    """Refuse to start a new run where a run that can resume or has finished lives (or a foreign folder)."""
    run = inspect(path)
    if run.status == FINISHED:
        raise RunError(f"{path} already holds a run, finished: choose another --out")
    if run.status == RESUMABLE:
        raise RunError(f"{path} already holds a run (step {checkpoint_step(path)}): pass --resume to continue it, "
                       f"or choose another --out")
    return run


def start_new(path: Path, log: Callable[[str], None]) -> None:
    """Make `path` ready for a new run: created, or cleared of a run that never reached a
    resume checkpoint (our own files only). Raises RunError where check_new refuses."""
    run = check_new(path)
    if run.status == STARTED:
        log(f"{path} holds a run that stopped before its first resume checkpoint: starting it over")
    for name in RUN_FILES:                    # config.json last: the folder stays recognizably ours
        for p in (path / (name + atomic.TMP_SUFFIX), path / name):
            if p.exists():
                p.unlink()
    path.mkdir(parents=True, exist_ok=True)


def open_resume(path: Path) -> RunDir:
    """The run to resume in `path`: RESUMABLE, or STARTED (it then runs from step 0)."""
    run = inspect(path)
    if run.status in (ABSENT, EMPTY):
        raise RunError(f"--resume: no run in {path}")
    if run.status == FINISHED:
        raise RunError(f"{path} holds a finished run: there is nothing to resume (train a new run with another --out)")
    if run.kind != "train":
        raise RunError(f"{path} is a {run.kind} run, which does not resume: start it again without --resume")
    return run


def write_config(path: Path, config: Dict) -> None:
    atomic.write_json(Path(path) / CONFIG, {"package": "avqa-edge", **config})


def write_state(path: Path, state: Dict) -> None:
    atomic.write_json(Path(path) / STATE, state)


def save_checkpoint(path: Path, tensors: Dict, meta: Dict[str, str], state: Dict, best: bool) -> None:
    """The resume checkpoint (with `state` in its metadata), then the best weights where `best`
    (the model's tensors of the same step), then state.json: each file stands for itself."""
    from .checkpoint import save_tensors
    path = Path(path)
    save_tensors(path / CHECKPOINT, tensors, {**meta, "state": json.dumps(state)})
    if best:
        save_tensors(path / BEST, _model_part(tensors), meta)
    write_state(path, state)


def load_checkpoint(path: Path) -> Tuple[Dict, Dict]:
    """-> (the checkpoint's tensors, the run's state at that step). Restores model.safetensors
    where a stop fell between the checkpoint and the best weights of the same step."""
    from safetensors.torch import load_file
    path = Path(path)
    meta = read_header(path / CHECKPOINT)
    tensors = load_file(str(path / CHECKPOINT))
    if "state" in meta:
        state = json.loads(meta["state"])
    else:                                      # written before the checkpoint held the state
        state = read_json(path / STATE)
        if str(state.get("step")) != meta.get("step"):
            raise RunError(f"{path}: state.json (step {state.get('step')}) does not match {CHECKPOINT} (step "
                           f"{meta.get('step')}), so the run cannot resume safely: train it again")
    if state.get("best_step") == state["step"] and (
            not (path / BEST).exists() or read_header(path / BEST).get("step") != str(state["step"])):
        from .checkpoint import save_tensors
        save_tensors(path / BEST, _model_part(tensors), {k: v for k, v in meta.items() if k != "state"})
    write_state(path, state)
    return tensors, state


def checkpoint_step(path: Path) -> int:
    """The step of `path`'s resume checkpoint (0: none), read from its header alone."""
    ckpt = Path(path) / CHECKPOINT
    return int(read_header(ckpt).get("step", 0)) if ckpt.exists() else 0


def read_header(path: Path) -> Dict[str, str]:
    """A safetensors file's metadata: an 8-byte little-endian length, then a JSON header."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            return json.loads(f.read(n)).get("__metadata__") or {}
    except (OSError, ValueError) as e:
        raise RunError(f"{path} is not a readable safetensors file ({e})") from None


def _model_part(tensors: Dict) -> Dict:
    return {k: v for k, v in tensors.items() if not k.startswith(("opt.", "tagger."))}


def _leftover(name: str) -> bool:
    """A temp file of ours, left by a stop in the middle of a write."""
    return name.endswith(atomic.TMP_SUFFIX) and name[:-len(atomic.TMP_SUFFIX)] in RUN_FILES


def _own_config(path: Path) -> Dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict) or config.get("package") != "avqa-edge":
        raise RunError(f"{path} was not written by avqa-edge: {path.parent} is not an avqa-edge run, "
                       f"and it is left as it is; choose a new or empty folder for --out")
    return config
