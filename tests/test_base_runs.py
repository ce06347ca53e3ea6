"""Runs on another run's stage 1 (`train --from RUN`): retrofit keeps the base run's encoders and
backbone frozen and learns RMM + AVR on top; rmm_avr / dropout take its encoders and refit a
backbone; rmm_avr's dropout terms; eval scoring the compared runs with their own fill."""
import json

import pytest
import torch

from avqa_edge.errors import AvqaError, ConfigError, RunError
from avqa_edge.toolkit.checkpoint import load_model
from avqa_edge.toolkit.config import TrainConfig, preset
from avqa_edge.runtime.text import Vocabulary
from avqa_edge.toolkit.data.loader import SplitData
from avqa_edge.toolkit.data.specs import load_split
from avqa_edge.toolkit.model.avqa import AVQAModel
from avqa_edge.toolkit.model.rmm import recall_loss
from avqa_edge.toolkit.train_plan import TrainRequest, plan_run, run_plan

QUIET = dict(log=lambda *_: None)
ENCODERS = ("audio_encoder", "visual_encoder", "question_encoder")


@pytest.fixture(scope="module")
def base_run(tiny_run):
    """The test run's finished tiny rmm_avr run (with a video expert) as the base."""
    return tiny_run[0]


def _plan(base, out, **kw):
    req = TrainRequest(out=out, from_run=base, refit_steps=12, batch_size=16, eval_every=12, avr_finetune_frac=0.25, **kw)
    plan = plan_run(req)
    plan.train.val_samples = 48
    return plan


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def retrofit_run(base_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("retro") / "retrofit"
    run_plan(_plan(base_run, out, method="retrofit"))
    return out


def test_retrofit_keeps_base_encoders_and_backbone_and_learns_rmm_avr(base_run, retrofit_run):
    base, _ = load_model(base_run)
    retro, config = load_model(retrofit_run)
    assert config["train"]["method"] == "retrofit" and config["train"]["base_run"] == str(base_run.resolve())
    for name in ENCODERS + ("backbone",):
        assert _same(getattr(base, name), getattr(retro, name)), name
    assert _same(base.video_expert, retro.video_expert)
    # the trained generator recalls the training clips' features better than a fresh one does
    split = load_split(config["data"], "train")
    data = SplitData(split, Vocabulary(retro.cfg.vocab), retro.cfg.answers)
    batch = data.batch(data.ordered_batches(64, 64)[0])
    with torch.no_grad():
        f, _, _ = retro.encode(batch)
        torch.manual_seed(0)
        fresh = AVQAModel(retro.cfg).eval()
        errors = [sum(float(recall_loss(x, p, "element_mean")) for x, p in zip((f.a, f.v), m.pseudo(f))) for m in (fresh, retro)]
    assert errors[1] < 0.99 * errors[0], errors      # 12 steps: about 2 % lower
    state = json.loads((retrofit_run / "state.json").read_text())
    assert state["finished"] and state["history"][0]["step"] > 12          # stage 1 was not trained again
    assert "rmm" in state["history"][-1] and "ave" in state["history"][-1]


def test_rmm_avr_on_base_stage1_shares_encoders_and_trains_dropout_terms(base_run, tmp_path):
    out = tmp_path / "hybrid"
    run_plan(_plan(base_run, out, method="rmm_avr", dropout_weight=0.5))
    base, _ = load_model(base_run)
    hybrid, config = load_model(out)
    assert config["data"] == json.loads((base_run / "config.json").read_text())["data"]
    for name in ENCODERS:
        assert _same(getattr(base, name), getattr(hybrid, name)), name
    assert not _same(base.backbone, hybrid.backbone)                    # a backbone of its own
    hist = json.loads((out / "state.json").read_text())["history"]
    for term in ("ce_audio_drop", "ce_visual_drop", "ce_no_video_drop", "ce_audio_pseudo", "rmm"):
        assert term in hist[-1], term
    with pytest.raises(AvqaError, match="dropout-weight"):
        TrainConfig(method="dropout", dropout_weight=0.5)


def test_plan_refusals(base_run, tmp_path):
    with pytest.raises(ConfigError, match="--from"):
        plan_run(TrainRequest(out=tmp_path / "a", method="retrofit"))
    with pytest.raises(ConfigError, match="--benchmark-version"):
        plan_run(TrainRequest(out=tmp_path / "b", method="dropout", from_run=base_run, benchmark_version=2))
    with pytest.raises(ConfigError, match="--video-expert"):
        plan_run(TrainRequest(out=tmp_path / "c", method="retrofit", from_run=base_run, video_expert=True))
    with pytest.raises(RunError, match="not found"):
        plan_run(TrainRequest(out=tmp_path / "d", method="retrofit", from_run=tmp_path / "nothing"))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((base_run / "config.json").read_text())
    (unfinished / "state.json").write_text(json.dumps({"step": 3, "finished": False}))
    with pytest.raises(RunError, match="not finished"):
        plan_run(TrainRequest(out=tmp_path / "e", method="retrofit", from_run=unfinished))


def test_eval_scores_a_compared_retrofit_with_its_fill_and_zero_filled(base_run, retrofit_run, tmp_path):
    from avqa_edge.toolkit.eval import run_eval
    out = run_eval(base_run, tmp_path / "eval.json", [retrofit_run], sweep=False, noise=False, **QUIET)
    assert set(out["scenarios"]) == {"complete", "audio_missing", "visual_missing"}      # --no-noise
    for scen in ("audio_missing", "visual_missing"):
        rows = out["scenarios"][scen]
        assert {"zero_fill", "rmm+avr", "retrofit", "retrofit/zero_fill"} <= set(rows)
        # the same frozen encoders and backbones: zero-filled, retrofit answers as its base run
        assert rows["retrofit/zero_fill"] == rows["zero_fill"]
    assert out["scenarios"]["complete"]["retrofit"] == out["scenarios"]["complete"]["zero_fill"]
