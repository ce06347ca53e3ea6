"""`--benchmark-version` of `avqa-edge train` and `avqa-edge write-split`."""
import json

import pytest
from typer.testing import CliRunner

from avqa_edge.cli import app

pytest.importorskip("cv2")
pytest.importorskip("soundfile")


def test_write_split_writes_version_2(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    res = CliRunner().invoke(app, ["write-split", "--out", str(tmp_path / "v2"), "--benchmark-version", "2",
                                   "--clips", "20"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "v2" / "split.json").read_text())
    assert info["meta"]["generator_version"] == "2.0" and info["meta"]["config"]["version"] == 2
    types = {json.loads(line)["type"] for line in (tmp_path / "v2" / "questions.jsonl").read_text().splitlines()}
    assert "Visual/Attribute" in types and types <= set(info["meta"]["answer_counts"])


@pytest.mark.parametrize("args, message", [
    (["--benchmark-version", "3"], "benchmark version must be one of (1, 2), got 3"),
    (["--benchmark-version", "2", "--manifest-dir", "nowhere"], "--benchmark-version: only for the built-in benchmark"),
])
def test_train_refuses_a_bad_benchmark_version(tmp_path, args, message):
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), *args])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()
