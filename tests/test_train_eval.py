"""End-to-end: a short training run, its artifacts, eval's scenarios, determinism, CLI errors."""
import json
from pathlib import Path
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from avqa_edge.cli import app
from avqa_edge.toolkit.checkpoint import load_model, read_json
from avqa_edge.toolkit.scoring import SCENARIOS


def test_run_artifacts_rebuild_the_model(tiny_run):
    run, summary = tiny_run
    for name in ("config.json", "model.safetensors", "last.safetensors", "state.json", "curve.png"):
        assert (run / name).exists(), name
    state = read_json(run / "state.json")
    assert state["finished"] and state["step"] == 24 and len(state["history"]) == 2
    first, second = state["history"]
    # stage 1 trains the encoders (with the tagging loss), stage 2 the denoiser on frozen features
    assert first["stage"] == 1 and "tag" in first and "ave" not in first and "ce_visual_pseudo" not in first
    assert second["stage"] == 2 and "ave" in second and "tag" not in second
    assert summary["flops_per_answer"]["audio_missing"] > summary["flops_per_answer"]["complete"] > 0
    model, config = load_model(run)
    assert model.cfg.answers == config["model"]["answers"] and len(model.cfg.answers) > 5
    # safetensors: an 8-byte little-endian header length, then a JSON header (no pickle)
    raw = (run / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"]["config_hash"] == config["model_hash"]


def test_eval_scenarios_and_determinism(tiny_run, tmp_path):
    from avqa_edge.toolkit.eval import run_eval
    run, _ = tiny_run
    before = {p.name: p.stat().st_mtime_ns for p in Path(run).iterdir()}
    a = run_eval(run, tmp_path / "a.json", [], sweep=False, seed=0, log=lambda *_: None)
    b = run_eval(run, tmp_path / "b.json", [], sweep=False, seed=0, log=lambda *_: None)
    assert {p.name: p.stat().st_mtime_ns for p in Path(run).iterdir()} == before, "--json elsewhere leaves the run as it was"
    assert "| audio_missing |" in (tmp_path / "a.md").read_text(), "the Markdown report lies beside its JSON"
    assert a["scenarios"] == b["scenarios"], "same seed, same numbers"
    assert json.dumps(a["gap_closed"]) == json.dumps(b["gap_closed"]), "and the same gap intervals (nan-safe)"
    for scen in ("audio_missing", "visual_missing"):
        lo, hi = a["gap_closed"][scen]["answerable_types_ci95"]
        assert lo <= hi or (lo != lo and hi != hi), "an interval, or nan when no gap can be resampled"
    assert set(a["scenarios"]) == set(SCENARIOS)
    for scen in ("audio_missing", "visual_missing"):
        assert set(a["scenarios"][scen]) == {"zero_fill", "rmm", "avr", "rmm+avr"}
    for methods in a["scenarios"].values():
        for acc in methods.values():
            assert all(0.0 <= v <= 1.0 for v in acc.values())
    assert a["n"] == 96 and 0.0 <= a["question_only"]["overall"] <= 1.0
    on_disk = json.loads((tmp_path / "a.json").read_text())
    assert on_disk["scenarios"]["complete"]["zero_fill"]["overall"] == a["scenarios"]["complete"]["zero_fill"]["overall"]
    assert "addressing_entropy" in a and a["addressing_entropy"]["entropy_uniform"] > 4.0


def test_eval_on_a_larger_test_split(tiny_run, tmp_path):
    """`eval --test-clips N` scores N fresh test clips of the same benchmark (and says so)."""
    run, _ = tiny_run
    res = CliRunner().invoke(app, ["eval", str(run), "--no-sweep", "--test-clips", "24", "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "e.json").read_text())
    assert out["n"] == 24 * 6 and out["data"]["synth"]["test_clips"] == 24
    assert read_json(run / "config.json")["data"]["synth"]["test_clips"] == 16, "the run itself is unchanged"
    res = CliRunner().invoke(app, ["eval", str(run), "--no-sweep", "--test-clips", "-3"])
    assert res.exit_code == 1 and "must be positive" in res.output


def test_eval_of_a_no_rmm_ablation_scores_its_fullest_method(tiny_spec, tmp_path):
    """`train --no-rmm` leaves zero_fill and avr: eval's gap, sweep and table use avr."""
    from avqa_edge.toolkit.config import TrainConfig, preset
    from avqa_edge.toolkit.eval import run_eval
    from avqa_edge.toolkit.train import train
    run = tmp_path / "no_rmm"
    train(run, preset("edge", use_rmm=False), TrainConfig(steps=4, refit_steps=4, batch_size=16, eval_every=4, val_samples=16),
          tiny_spec, log=lambda *_: None)
    out = run_eval(run, tmp_path / "e.json", [], sweep=True, seed=0, log=lambda *_: None)
    assert set(out["scenarios"]["audio_missing"]) == {"zero_fill", "avr"}
    assert out["gap_method"] == "avr" and set(out["gap_closed"]) == {"audio_missing", "visual_missing"}
    assert set(out["sweep"]["accuracy"]["audio_missing"]) == {"zero_fill", "avr"}
    assert "addressing_entropy" not in out


def test_eval_of_a_dropout_run_on_its_own_names_its_rows(tiny_spec, tmp_path):
    """`avqa-edge eval DROPOUT_RUN` (no --compare): every scenario has one row, "dropout"."""
    from avqa_edge.toolkit.config import TrainConfig, preset
    from avqa_edge.toolkit.eval import run_eval
    from avqa_edge.toolkit.train import train
    run = tmp_path / "drop"
    train(run, preset("edge"), TrainConfig(method="dropout", steps=4, refit_steps=4, batch_size=16, eval_every=4,
                                           val_samples=16), tiny_spec, log=lambda *_: None)
    out = run_eval(run, tmp_path / "e.json", [], sweep=False, seed=0, log=lambda *_: None)
    for scen in ("complete", "audio_missing", "visual_missing"):
        assert set(out["scenarios"][scen]) == {"dropout"}, scen
    assert json.loads((tmp_path / "e.json").read_text())["scenarios"]["complete"]["dropout"]["overall"] \
        == out["scenarios"]["complete"]["dropout"]["overall"]


def test_compare_accepts_the_same_data_cached_elsewhere_and_refuses_other_data(tiny_run, tmp_path):
    """Runs trained with another cache folder (XDG_CACHE_HOME) trained on the same clips."""
    import shutil
    run, _ = tiny_run

    def copy_with(name, edit):
        other = tmp_path / name
        shutil.copytree(run, other)
        config = read_json(other / "config.json")
        edit(config["data"])
        (other / "config.json").write_text(json.dumps(config))
        return other

    moved = copy_with("moved", lambda d: d.update(cache_dir=str(tmp_path / "elsewhere")))
    res = CliRunner().invoke(app, ["eval", str(run), "--compare", str(moved), "--no-sweep", "--limit", "8",
                                   "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert "rmm_avr" in json.loads((tmp_path / "e.json").read_text())["scenarios"]["audio_missing"]
    reseeded = copy_with("reseeded", lambda d: d["synth"].update(seed=d["synth"]["seed"] + 1))
    res = CliRunner().invoke(app, ["eval", str(run), "--compare", str(reseeded), "--no-sweep", "--limit", "8"])
    assert res.exit_code == 1 and "other data" in res.output


def test_train_refuses_to_overwrite_a_run(tiny_run):
    run, _ = tiny_run
    res = CliRunner().invoke(app, ["train", "--out", str(run)])
    assert res.exit_code == 1 and "already holds a run" in res.output


@pytest.mark.parametrize("args, message", [
    (["train", "--method", "bogus", "--out", "NEW"], "--method must be one of rmm_avr, baseline, dropout, retrofit, prompt,"),
    (["train", "--preset", "paper", "--out", "NEW"], "paper preset runs on MUSIC-AVQA"),
    (["train", "--music-avqa", "x", "--out", "NEW"], "needs --features"),
    (["eval", "NOPE"], "not found"),
])
def test_cli_user_errors_are_one_line(args, message, tmp_path):
    args = [str(tmp_path / a) if a in ("NEW", "NOPE") else a for a in args]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output


def test_eval_refuses_unfinished_run(tiny_run, tmp_path):
    import shutil
    run, _ = tiny_run
    copy = tmp_path / "unfinished"
    shutil.copytree(run, copy)
    state = read_json(copy / "state.json")
    state["finished"] = False
    (copy / "state.json").write_text(json.dumps(state))
    res = CliRunner().invoke(app, ["eval", str(copy)])
    assert res.exit_code == 1 and "--resume" in res.output


def test_cli_help_does_not_import_torch():
    code = "import sys, avqa_edge.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resume_continues_from_the_last_checkpoint(tiny_spec, tmp_path):
    from safetensors.torch import load_file

    from avqa_edge.toolkit.config import TrainConfig, preset
    from avqa_edge.toolkit.train import train
    run = tmp_path / "resumable"
    train(run, preset("edge"), TrainConfig(steps=6, refit_steps=6, batch_size=16, eval_every=3, val_samples=32), tiny_spec,
          log=lambda *_: None)
    before = load_file(str(run / "last.safetensors"))
    assert any(k.startswith("opt.") for k in before), "Adam state is saved for resume"
    # pretend the run stopped after its last checkpoint, and lengthen its stage 2: it resumes inside stage 2
    state = read_json(run / "state.json")
    state["finished"] = False
    (run / "state.json").write_text(json.dumps(state))
    res = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--refit-steps", "12"])
    assert res.exit_code == 0, res.output
    assert "refit_steps 6 -> 12" in res.output
    config = read_json(run / "config.json")
    assert config["train"]["refit_steps"] == 12 and config["resumed"] == [{"step": 12, "changed": {"refit_steps": [6, 12]}}]
    state = read_json(run / "state.json")
    # losses logged every eval_every steps; stage 1 validated at its end only (a stage 2 follows)
    assert state["finished"] and [h["step"] for h in state["history"]] == [3, 6, 9, 12, 15, 18]
    assert [h["step"] for h in state["history"] if "score" in h] == [6, 9, 12, 15, 18]
    after = load_file(str(run / "last.safetensors"))
    model = [k for k in before if not k.startswith(("opt.", "tagger."))]
    encoders = [k for k in model if k.startswith(("audio_encoder.", "visual_encoder.", "question_encoder."))]
    assert encoders and all(bool((after[k] == before[k]).all()) for k in encoders), "stage 2 keeps the encoders frozen"
    assert not all(bool((after[k] == before[k]).all()) for k in model if k.startswith("backbone.")), "and trains the backbone"


def test_runs_of_an_older_model_version_are_refused_cleanly(tiny_run, tmp_path):
    import json
    import shutil

    from avqa_edge.errors import AvqaError
    from avqa_edge.toolkit.checkpoint import load_model
    run, _ = tiny_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["model"]["arch"]                         # written before the field existed
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AvqaError, match="model version 1"):
        load_model(old)


def test_stage_1_writes_resume_checkpoints_between_its_validations(tiny_spec, tmp_path, monkeypatch):
    from avqa_edge.toolkit import checkpoint as C
    from avqa_edge.toolkit import train as T
    from avqa_edge.toolkit.config import TrainConfig, preset
    saves = []
    real = C.save_tensors

    def recording(path, tensors, meta):
        saves.append((path.name, int(meta["step"])))
        return real(path, tensors, meta)

    monkeypatch.setattr(C, "save_tensors", recording)
    T.train(tmp_path / "run", preset("edge"), TrainConfig(steps=6, refit_steps=6, batch_size=16, eval_every=3,
                                                          val_samples=16), tiny_spec, log=lambda *_: None)
    assert [s for name, s in saves if name == "last.safetensors"] == [3, 6, 9, 12], "every eval_every steps, both stages"
    state = read_json(tmp_path / "run" / "state.json")
    assert [h["step"] for h in state["history"]] == [3, 6, 9, 12], "losses at every checkpoint"
    assert [h["step"] for h in state["history"] if "score" in h] == [6, 9, 12], "stage 1 validated at its end only"


@pytest.mark.parametrize("method", ["rmm_avr", "dropout"])
def test_video_expert_trains_in_the_last_stage_only_and_eval_routes_to_it(tiny_spec, tmp_path, method):
    """The video expert (on in the edge preset): stage 2 trains it on its own term
    (ce_no_video), and eval answers the questions whose video is missing with it."""
    import copy
    import torch
    from avqa_edge.runtime.text import Vocabulary
    from avqa_edge.toolkit.config import TrainConfig, preset
    from avqa_edge.toolkit.data.loader import SplitData
    from avqa_edge.toolkit.data.specs import load_split
    from avqa_edge.toolkit.scoring import predict
    from avqa_edge.toolkit.train import train
    run = tmp_path / method
    train(run, preset("edge"),
          TrainConfig(method=method, steps=4, refit_steps=4, batch_size=16, eval_every=4, val_samples=16),
          tiny_spec, log=lambda *_: None)
    history = read_json(run / "state.json")["history"]
    assert "ce_no_video" not in history[0] and history[-1]["ce_no_video"] > 0, "stage 2 alone trains the expert"
    model, _ = load_model(run)
    drawn = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)                                    # stage 2's draw for seed 0
        drawn.reset_backbones()
    assert not all(torch.equal(x, y) for x, y in zip(model.video_expert.parameters(), drawn.video_expert.parameters()))
    test = SplitData(load_split(tiny_spec, "test"), Vocabulary(model.cfg.vocab), model.cfg.answers, strict_answers=False)
    expert_only, shared_only = copy.deepcopy(model), copy.deepcopy(model)
    expert_only.backbone = expert_only.video_expert
    shared_only.video_expert = None
    fill = "zero_fill" if method == "dropout" else "rmm+avr"
    assert (predict(model, test, "visual_missing", fill)[1] == predict(expert_only, test, "visual_missing", fill)[1]).all()
    assert (predict(model, test, "complete", fill)[1] == predict(shared_only, test, "complete", fill)[1]).all()



@pytest.mark.parametrize("flag, expected", [(None, True), ("--no-video-expert", False), ("--video-expert", True)])
def test_the_cli_trains_a_video_expert_unless_told_not_to(flag, expected, tmp_path, monkeypatch):
    """On by default (the edge preset); --no-video-expert turns it off."""
    import avqa_edge.toolkit.train as T
    seen = []
    monkeypatch.setattr(T, "train", lambda out, model_cfg, cfg, spec, resume=False: seen.append(model_cfg.video_expert))
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r")] + ([flag] if flag else []))
    assert res.exit_code == 0, res.output
    assert seen == [expected]


def test_the_baseline_never_has_a_video_expert(tiny_spec, tmp_path):
    """The baseline is what users have today: one backbone trained on complete data."""
    from avqa_edge.toolkit.config import TrainConfig, preset
    from avqa_edge.toolkit.train import train
    train(tmp_path / "b", preset("edge"), TrainConfig(method="baseline", steps=2, refit_steps=2, batch_size=8,
                                                      eval_every=2, val_samples=8), tiny_spec, log=lambda *_: None)
    model, _ = load_model(tmp_path / "b")
    assert model.video_expert is None and not model.cfg.video_expert
