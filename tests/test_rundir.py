"""Run directories (toolkit/rundir.py): a training process killed at any point leaves a folder
that --resume continues or a new run starts over; foreign folders and finished runs are never
written; options given with --resume are used or refused by name."""
import json
import random
import shutil
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from avqa_edge.cli import app
from avqa_edge.errors import ConfigError, RunError
from avqa_edge.toolkit import rundir
from avqa_edge.toolkit.checkpoint import load_model, read_json
from avqa_edge.toolkit.train_plan import TrainRequest, plan_run

TINY = dict(steps=2, refit_steps=2, batch_size=8, eval_every=2, val_samples=8, threads=1)
TOTAL = TINY["steps"] + TINY["refit_steps"]

# A training subprocess on the tiny benchmark. With a positive KILL it sends itself SIGKILL just
# before its KILL-th file rename (runtime/atomic.py), so every gap between two writes is reached.
TRAIN_SCRIPT = """
import json, os, signal, sys
from avqa_edge.runtime import atomic
from avqa_edge.toolkit.config import TrainConfig, preset
from avqa_edge.toolkit.train import train
run, spec, kill, tiny = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
renames = [0]

class KillingOs:
    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, src, dst):
        renames[0] += 1
        if renames[0] == kill:
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(src, dst)

atomic.os = KillingOs()
train(run, preset("edge"), TrainConfig(**tiny), spec, log=lambda *_: None)
"""


@pytest.fixture()
def cached_spec(tiny_spec):
    """The tiny benchmark, generated once here so that the subprocesses only read it."""
    from avqa_edge.toolkit.data.specs import load_split
    load_split(tiny_spec, "train"), load_split(tiny_spec, "val")
    return tiny_spec


def _spawn(run, spec, tmp_path, kill=0):
    # cwd outside the source tree: the installed package is what runs
    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(run), json.dumps(spec), str(kill), json.dumps(TINY)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _train_new(run, spec, log=lambda *_: None):
    from avqa_edge.toolkit.config import TrainConfig, preset
    from avqa_edge.toolkit.train import train
    return train(run, preset("edge"), TrainConfig(**TINY), spec, log=log)


def _snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _recover(run, spec, prefer_resume: bool) -> str:
    """Continue or restart the run left by a kill; check that it then finishes. -> the state it was left in."""
    left = rundir.inspect(run)
    if left.status == rundir.RESUMABLE and (run / "state.json").exists():
        assert read_json(run / "state.json")["step"] <= rundir.checkpoint_step(run), "state.json never runs ahead"
    if left.status == rundir.FINISHED:
        res = CliRunner().invoke(app, ["train", "--out", str(run), "--resume"])
        assert res.exit_code == 1 and "finished" in res.output
    elif left.status == rundir.RESUMABLE or (left.status == rundir.STARTED and prefer_resume):
        res = CliRunner().invoke(app, ["train", "--out", str(run), "--resume"])
        assert res.exit_code == 0, res.output
        assert left.status == rundir.RESUMABLE or "from step 0" in res.output
    else:
        said = []
        _train_new(run, spec, log=said.append)
        assert (left.status == rundir.STARTED) == any("starting it over" in s for s in said)
    state = read_json(run / "state.json")
    assert state["finished"] and state["step"] == TOTAL and state["summary"]["steps"] == TOTAL
    load_model(run)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")], "no temp file is left"
    return left.status


@pytest.mark.slow
def test_kill_9_before_each_write_leaves_a_run_that_resumes_or_starts_over(cached_spec, tmp_path):
    """SIGKILL before every rename of a tiny run, in turn, until a run gets through untouched."""
    seen = []
    for kill in range(1, 40):
        run = tmp_path / f"k{kill}"
        proc = _spawn(run, cached_spec, tmp_path, kill)
        _, err = proc.communicate()
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, err[-2000:]
        seen.append(_recover(run, cached_spec, prefer_resume=kill % 2 == 0))
    else:
        pytest.fail("the run never got through")
    assert kill > 6 and rundir.inspect(run).status == rundir.FINISHED
    assert {rundir.EMPTY, rundir.STARTED, rundir.RESUMABLE} <= set(seen), seen


def test_kill_9_at_random_moments(cached_spec, tmp_path):
    """A real `kill -9` from outside at seeded random moments of a run's lifetime."""
    t0 = time.time()
    proc = _spawn(tmp_path / "whole", cached_spec, tmp_path)
    assert proc.wait() == 0, proc.stderr.read()[-2000:]
    duration = time.time() - t0
    rng = random.Random(0)
    for i in range(4):
        run = tmp_path / f"r{i}"
        proc = _spawn(run, cached_spec, tmp_path)
        try:
            proc.wait(timeout=rng.uniform(0.2, 1.0) * duration)
        except subprocess.TimeoutExpired:
            proc.kill()                                 # SIGKILL
            proc.wait()
        _recover(run, cached_spec, prefer_resume=i % 2 == 0)


def test_a_foreign_folder_is_refused_and_left_as_it_is(tiny_spec, tiny_run, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"learning_rate": 3}\n')
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    for folder in (theirs, other):
        before = _snapshot(folder)
        with pytest.raises(RunError, match="not an avqa-edge run"):
            _train_new(folder, tiny_spec)
        for args in (["--resume"], ["--method", "prompt", "--from", str(tiny_run[0])], []):
            res = CliRunner().invoke(app, ["train", "--out", str(folder), *args])
            assert res.exit_code == 1 and "not an avqa-edge run" in res.output and "Traceback" not in res.output
        assert _snapshot(folder) == before


def test_resume_of_a_finished_run_refuses_and_changes_nothing(tiny_run):
    run, _ = tiny_run
    before = _snapshot(run)
    for extra in ([], ["--refit-steps", "40"]):
        res = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", *extra])
        assert res.exit_code == 1 and "finished run" in res.output and "Traceback" not in res.output
    with pytest.raises(RunError, match="finished"):
        from avqa_edge.toolkit.train import train
        train(run, None, None, None, resume=True)
    assert _snapshot(run) == before


@pytest.fixture()
def stopped_run(tiny_run, tmp_path):
    """A copy of the tiny run as if stopped after its last checkpoint (step 24, in stage 2 of 12 + 12)."""
    run = tmp_path / "stopped"
    shutil.copytree(tiny_run[0], run)
    state = read_json(run / "state.json")
    (run / "state.json").write_text(json.dumps({**state, "finished": False}))
    return run


def test_resume_refuses_the_options_it_would_ignore_naming_them(stopped_run, tmp_path):
    before = _snapshot(stopped_run)
    res = CliRunner().invoke(app, ["train", "--out", str(stopped_run), "--resume", "--steps", "500", "--batch-size", "64",
                                   "--manifest-dir", str(tmp_path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "--batch-size 64 differs from its 16" in res.output and "--manifest-dir" in res.output
    res = CliRunner().invoke(app, ["train", "--out", str(stopped_run), "--resume", "--steps", "500"])
    assert res.exit_code == 1 and "stage 1 ended at step 12" in res.output, "stage 1 cannot grow once stage 2 began"
    res = CliRunner().invoke(app, ["train", "--out", str(stopped_run), "--resume", "--refit-steps", "5"])
    assert res.exit_code == 1 and "already at step 24" in res.output
    res = CliRunner().invoke(app, ["train", "--out", str(stopped_run), "--resume", "--prompt-len", "8"])
    assert res.exit_code == 1 and "--prompt-len: only for --method prompt" in res.output
    assert _snapshot(stopped_run) == before


def test_resume_honours_steps_device_and_the_saved_values(stopped_run):
    given = dict(out=stopped_run, resume=True, batch_size=16, seed=0, refit_steps=30, device="cpu")
    plan = plan_run(TrainRequest(**given, given=frozenset(given)))
    assert plan.resume and plan.train.refit_steps == 30 and plan.train.device == "cpu" and plan.train.batch_size == 16
    assert plan.changes == {"refit_steps": [12, 30], "device": ["auto", "cpu"]}
    assert plan.model.hash() == read_json(stopped_run / "config.json")["model_hash"]
    with pytest.raises(ConfigError, match="cannot turn stage 2 on or off"):
        plan_run(TrainRequest(out=stopped_run, resume=True, refit_steps=0, given=frozenset({"refit_steps"})))


def test_a_longer_stage_1_is_honoured_while_the_run_is_in_it(tiny_spec, tmp_path):
    from avqa_edge.toolkit.config import TrainConfig, preset
    from avqa_edge.toolkit.train import train
    run = tmp_path / "early"
    train(run, preset("edge"), TrainConfig(**{**TINY, "refit_steps": 0}), tiny_spec, log=lambda *_: None)
    state = read_json(run / "state.json")
    (run / "state.json").write_text(json.dumps({**state, "finished": False}))
    res = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--steps", "4"])
    assert res.exit_code == 0, res.output
    state = read_json(run / "state.json")
    assert state["finished"] and [h["step"] for h in state["history"]] == [2, 4]
    assert read_json(run / "config.json")["train"]["steps"] == 4


def test_a_half_started_run_is_started_over_and_old_runs_too(tiny_run, tiny_spec, tmp_path):
    """A folder with config.json and no checkpoint (this version), or with the step-0 state.json
    that older versions wrote before their first checkpoint."""
    for name, state in (("now", None), ("older", {"step": 0, "best_score": -1.0, "finished": False, "history": []})):
        run = tmp_path / name
        run.mkdir()
        shutil.copy(tiny_run[0] / "config.json", run / "config.json")
        (run / "last.safetensors.tmp").write_bytes(b"half a file")
        if state:
            (run / "state.json").write_text(json.dumps(state))
        assert rundir.inspect(run).status == rundir.STARTED
        said = []
        _train_new(run, tiny_spec, log=said.append)
        assert any("starting it over" in s for s in said)
        assert read_json(run / "state.json")["finished"] and not (run / "last.safetensors.tmp").exists()


def test_the_best_weights_are_restored_from_the_checkpoint_of_their_step(stopped_run):
    """A stop between the checkpoint and model.safetensors of the same step: resume rewrites them."""
    from safetensors.torch import load_file
    header = rundir.read_header(stopped_run / "last.safetensors")
    state = json.loads(header["state"])
    assert state["best_step"] in (12, 24)
    state["best_step"] = 24
    tensors = load_file(str(stopped_run / "last.safetensors"))
    from avqa_edge.toolkit.checkpoint import save_tensors
    save_tensors(stopped_run / "last.safetensors", tensors, {**header, "state": json.dumps(state)})
    (stopped_run / "model.safetensors").unlink()
    rundir.load_checkpoint(stopped_run)
    best = load_file(str(stopped_run / "model.safetensors"))
    assert rundir.read_header(stopped_run / "model.safetensors")["step"] == "24"
    assert set(best) == {k for k in tensors if not k.startswith(("opt.", "tagger."))}
    assert all(bool((best[k] == tensors[k]).all()) for k in best)


def test_an_unfinished_prompt_run_is_started_over(tiny_run, tmp_path):
    from avqa_edge.toolkit.prompt_train import PromptTrainConfig, train_prompts
    out = tmp_path / "p"
    cfg = PromptTrainConfig(steps=2, batch_size=8, eval_every=2, val_samples=8, measure_steps=0, n_input=1, n_attn=1)
    train_prompts(out, tiny_run[0], cfg, log=lambda *_: None)
    with pytest.raises(RunError, match="already holds a run, finished"):
        train_prompts(out, tiny_run[0], cfg, log=lambda *_: None)
    state = read_json(out / "state.json")
    (out / "state.json").write_text(json.dumps({**state, "finished": False}))       # as if killed after a validation
    res = CliRunner().invoke(app, ["train", "--out", str(out), "--resume"])
    assert res.exit_code == 1 and "prompt run, which does not resume" in res.output
    said = []
    train_prompts(out, tiny_run[0], cfg, log=said.append)
    assert any("starting it over" in s for s in said) and read_json(out / "state.json")["finished"]
