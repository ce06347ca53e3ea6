"""Where a run's data comes from. The spec is stored in the run's config.json so `eval`
rebuilds exactly the same test split.

- builtin:     {"kind": "builtin", "synth": SynthConfig fields} (no "version" field: version 1)
- manifest:    {"kind": "manifest", "dir": DIR}  with DIR/{train,val,test}.jsonl (custom data)
- music-avqa:  {"kind": "music-avqa", "questions": DIR, "features": DIR} with
               DIR/avqa-{train,val,test}.json and the official feature folders
"""
import os
from pathlib import Path
from typing import Dict, Union

from avqa_edge.errors import AvqaError

from .types import FeatureSplit, RawSplit

SPLITS = ("train", "val", "test")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "avqa-edge"


def same_data(a: Dict, b: Dict) -> bool:
    """Whether two runs' data specs name the same data. The built-in benchmark's cache folder
    says where its clips are kept, not what they are, so it is left out."""
    def what(spec: Dict) -> Dict:
        return {k: v for k, v in spec.items() if k != "cache_dir"}
    return what(a) == what(b)


def load_split(spec: Dict, split: str) -> Union[RawSplit, FeatureSplit]:
    if split not in SPLITS:
        raise AvqaError(f"unknown split {split!r}")
    kind = spec.get("kind")
    if kind == "builtin":
        from .synth import SynthConfig, generate
        return generate(SynthConfig(**spec["synth"]), split, cache_dir=spec.get("cache_dir"))
    if kind == "manifest":
        from .files import read_manifest
        path = Path(spec["dir"]) / f"{split}.jsonl"
        if not path.exists():
            raise AvqaError(f"{path} not found: a manifest folder needs train.jsonl, val.jsonl and test.jsonl")
        return read_manifest(path)
    if kind == "music-avqa":
        from .music_avqa import load_feature_split
        path = Path(spec["questions"]) / f"avqa-{split}.json"
        return load_feature_split(path, spec["features"], limit=spec.get("limit"))
    raise AvqaError(f"unknown data kind {kind!r}")


def builtin_spec(seed: int = 0, train_clips: int = 0, test_clips: int = 0, cache: bool = True,
                 version: int = 1) -> Dict:
    """The built-in benchmark's spec; `version` 1 (the default, what every earlier run used) or 2."""
    from .synth import SynthConfig, generator_version
    cfg = SynthConfig(seed=seed, version=version)
    over = {}
    if train_clips:
        over["train_clips"] = train_clips
    if test_clips:
        over["test_clips"] = test_clips
    d = {**cfg.to_dict(), **over}
    spec = {"kind": "builtin", "generator_version": generator_version(cfg), "synth": d}
    if cache:
        spec["cache_dir"] = str(default_cache_dir())
    return spec
