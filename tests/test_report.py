"""`avqa-edge report`: mean ± std over seeds and the paired 2-std criterion."""
import json

from typer.testing import CliRunner

from avqa_edge.cli import app
from avqa_edge.toolkit.data.types import QUESTION_TYPES
from avqa_edge.toolkit.report import report


def _eval(tmp_path, name, main, zero, drop):
    acc = lambda x: {"overall": x, **{t: x for t in QUESTION_TYPES}}  # noqa: E731
    scen = {s: {"zero_fill": acc(zero), "rmm+avr": acc(main), "dropout": acc(drop)}
            for s in ("audio_missing", "visual_missing")}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"scenarios": scen, "n": 10, "generator_version": "1.0",
                                "question_only": {"overall": 0.3}}))
    return path


def test_mean_std_and_verdicts(tmp_path):
    # rmm+avr is 10 points above zero_fill in every seed (std 0 -> beats); against dropout the
    # differences are +4, -4, 0 (mean 0, std 4 -> no clear difference)
    files = [_eval(tmp_path, "s0", 0.60, 0.50, 0.56), _eval(tmp_path, "s1", 0.62, 0.52, 0.66),
             _eval(tmp_path, "s2", 0.64, 0.54, 0.64)]
    text = report(files)
    assert "| audio_missing | rmm+avr |" in text
    assert "62.0 ± 2.0" in text                          # mean and sample std of 60, 62, 64
    assert "| audio_missing | zero_fill | answerable | +10.0 | 0.0 | beats |" in text
    assert "| audio_missing | dropout | answerable | +0.0 | 4.0 | no clear difference |" in text


def test_cli_report_and_bad_extra(tmp_path):
    files = [str(_eval(tmp_path, f"s{i}", 0.6, 0.5, 0.5)) for i in range(2)]
    res = CliRunner().invoke(app, ["report", *files, "--out", str(tmp_path / "r.md")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.md").read_text().startswith("Mean ± std over 2 training seeds")
    res = CliRunner().invoke(app, ["report", *files, "--extra", "nolabel"])
    assert res.exit_code == 1 and "LABEL=FILE" in res.output


def test_gap_line_lists_each_seed_with_its_interval(tmp_path):
    files = []
    for i, (gap, ci) in enumerate([(0.53, [0.30, 0.75]), (0.19, None)]):
        path = _eval(tmp_path, f"g{i}", 0.6, 0.5, 0.5)
        d = json.loads(path.read_text())
        row = {"answerable_types": gap, **({"answerable_types_ci95": ci} if ci else {})}
        d["gap_closed"] = {"visual_missing": row}
        path.write_text(json.dumps(d))
        files.append(path)
    text = report(files)
    assert "visual_missing 36.0 ± 24.0 % (53 [30, 75], 19)" in text


def test_types_beyond_the_nine_get_their_own_columns(tmp_path):
    """Version 2's types and a custom data set's own type names are reported, not dropped."""
    files = []
    for i, x in enumerate((0.5, 0.7)):
        path = _eval(tmp_path, f"v{i}", x, x, x)
        d = json.loads(path.read_text())
        for methods in d["scenarios"].values():
            for acc in methods.values():
                acc["Visual/Identity"], acc["Kitchen/Timer"] = x, x / 2
        path.write_text(json.dumps(d))
        files.append(path)
    head, sep, first = report(files).split("\n")[2:5]
    cols = [c.strip() for c in head.strip("|").split("|")]
    assert cols.index("Visual/Identity") < cols.index("Kitchen/Timer") < cols.index("All")
    cells = [c.strip() for c in first.strip("|").split("|")]
    assert cells[cols.index("Visual/Identity")] == "60.0 ± 14.1" and cells[cols.index("Kitchen/Timer")] == "30.0 ± 7.1"


def test_versus_dropout_pairs_by_seed_and_marks_the_margin(tmp_path):
    # rmm+avr - dropout per seed: +4, -4, 0 (mean 0: ok); zero_fill - dropout: -6, -14, -10 (below)
    files = [_eval(tmp_path, "s0", 0.60, 0.50, 0.56), _eval(tmp_path, "s1", 0.62, 0.52, 0.66),
             _eval(tmp_path, "s2", 0.64, 0.54, 0.64)]
    text = report(files, versus_row="dropout")
    assert "| rmm+avr | +0.0 ± 4.0 (ok) | +0.0 ± 4.0 (ok) |" in text
    assert "| zero_fill | -10.0 ± 4.0 (below) | -10.0 ± 4.0 (below) |" in text
    res = CliRunner().invoke(app, ["report", *map(str, files), "--versus", "nothing"])
    assert res.exit_code == 1 and "--versus nothing" in res.output
