"""Output into a file or a pipe is not wrapped at 80 columns: log lines, tables and the training
progress line stay whole in logs."""
import io
import sys

from avqa_edge.console import LOG_WIDTH, make_console

LINE = "step 1500: val complete 0.807 audio_missing 0.496 visual_missing 0.064 " + "x" * 60 + "  (best, saved)"


def test_a_long_line_into_a_pipe_stays_one_line(monkeypatch):
    out = io.StringIO()                                   # not a terminal
    monkeypatch.setattr(sys, "stdout", out)
    make_console().print(LINE)
    assert out.getvalue() == LINE + "\n"


def test_the_training_progress_prints_through_the_log_console(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    from avqa_edge.toolkit.train import _progress
    bar = _progress()
    assert bar.console.width == LOG_WIDTH
    bar.console.print(LINE)                               # how checkpoint lines reach the log
    assert out.getvalue() == LINE + "\n"
