"""`avqa-edge write-split`: the built-in benchmark as ordinary files."""
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ..errors import AvqaError


def write_split(
    out: Annotated[Path, typer.Option(help="Folder to write (videos/, audio/, questions.jsonl).")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    data_seed: Annotated[int, typer.Option(help="Built-in benchmark seed.")] = 0,
    clips: Annotated[int, typer.Option(help="Write only the first N clips (0: all).")] = 0,
    benchmark_version: Annotated[int, typer.Option(help="Built-in benchmark version: 1 or 2.")] = 1,
):
    """Write a built-in benchmark split as ordinary files.

    Lossless video + WAV + questions JSONL: replay them through a camera/mic source, or train
    on them with --manifest-dir."""
    from ..toolkit.data.files import write_split as write
    from ..toolkit.data.specs import builtin_spec, load_split
    from ..toolkit.data.types import RawSplit
    data = load_split(builtin_spec(seed=data_seed, version=benchmark_version), split)
    if clips:
        qa = [q for q in data.qa if q.clip < clips]
        data = RawSplit(data.frames[:clips], data.audio[:clips], qa, data.meta)
    path = write(data, out)
    typer.echo(f"wrote {len({q.clip for q in data.qa})} clips and {len(data.qa)} questions: {path}")

