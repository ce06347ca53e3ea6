"""Crash-safe file writes: write a temp file beside the target, fsync it, rename it over the
target and fsync the folder, so a reader (or a process restarted after `kill -9` or a power
cut) sees either the old file or the new one, never half of either. numpy-only, torch-free."""
import json
import os
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, Path]
TMP_SUFFIX = ".tmp"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:                      # e.g. Windows cannot open a folder: the rename stands
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: PathLike, data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(str(tmp), str(path))
    _fsync_dir(path.parent)


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def commit_file(tmp: PathLike, path: PathLike) -> None:
    """Atomically move a finished temp file (written by a library that wants a file name,
    e.g. safetensors or numpy) over `path`, with the fsyncs above."""
    tmp, path = Path(tmp), Path(path)
    fd = os.open(str(tmp), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(str(tmp), str(path))
    _fsync_dir(path.parent)
