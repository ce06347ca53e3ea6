"""`avqa-edge eval` and `avqa-edge report`: scoring runs under every sensor scenario."""
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ..errors import AvqaError


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A finished training run.")],
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the results JSON here (default RUN_DIR/eval.json).")] = None,
    compare: Annotated[Optional[List[Path]], typer.Option(help="Other runs (baseline, dropout) scored on the same inputs.")] = None,
    sweep: Annotated[bool, typer.Option(help="Also run the missing-ratio sweep (paper Fig. 5) and plot it.")] = True,
    limit: Annotated[int, typer.Option(help="Score only the first N test questions (0: all).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of masks and noise.")] = 0,
    prompt: Annotated[Optional[Path], typer.Option(help="A prompt run trained on RUN_DIR (`train --method prompt --from RUN_DIR`): adds prompt_all and prompt_oracle under every scenario.")] = None,
    test_clips: Annotated[int, typer.Option(help="Built-in benchmark only: generate a test split of N clips instead of the run's (800); 3200 pins the video-missing gap about twice as tightly, at 4x the time.")] = 0,
    noise: Annotated[bool, typer.Option(help="Also score noisy sensors and the uncertain scenario (--no-noise: the missing-sensor scenarios only, about half the time).")] = True,
):
    """Score a run on the test split under every sensor scenario and method."""
    from ..toolkit.eval import run_eval
    run_eval(run_dir, json_path, compare or [], sweep=sweep, limit=limit, seed=seed, prompt=prompt, test_clips=test_clips,
             noise=noise)



def report(
    evals: Annotated[List[Path], typer.Argument(help="One `avqa-edge eval --json` file per training seed.")],
    extra: Annotated[Optional[List[str]], typer.Option(help="LABEL=FILE,FILE,...: rows of other runs (e.g. paper=a.json,b.json,c.json).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the Markdown here too.")] = None,
    versus: Annotated[str, typer.Option(help="A row (e.g. dropout): add every method's overall accuracy minus its, paired by seed, per missing scenario.")] = "",
):
    """Mean ± std over training seeds of several eval results.

    Also tests rmm+avr against the baselines, paired by seed."""
    from ..toolkit.report import report as make_report
    groups = {}
    for item in extra or []:
        label, sep, files = item.partition("=")
        if not sep or not files:
            raise AvqaError(f"--extra takes LABEL=FILE,FILE,..., got {item!r}")
        groups[label] = [Path(f) for f in files.split(",")]
    text = make_report(evals, groups, versus)
    typer.echo(text)
    if out:
        out.write_text(text)


