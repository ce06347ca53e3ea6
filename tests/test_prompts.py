"""Prompt learning on a frozen run, the prompt eval methods, the `uncertain` scenario."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avqa_edge.cli import app
from avqa_edge.runtime import signal as sig
from avqa_edge.toolkit.checkpoint import load_model, read_json
from avqa_edge.toolkit.config import preset
from avqa_edge.toolkit.scoring import (UNCERTAIN, UNCERTAIN_CONDITIONS, observed_masks, predict, scenario_conditions,
                                        scenario_masks)
from avqa_edge.toolkit.model.avqa import AVQAModel, _blank
from avqa_edge.toolkit.model.prompts import CONDITION_CASE, PROMPT_CASES, PromptBank, PromptConfig
from avqa_edge.toolkit.prompt_train import (PROMPT_CONDITIONS, PromptTrainConfig, freeze, load_prompts, prompt_loss,
                                            train_prompts)

GOLDEN = Path(__file__).parent / "data" / "logits_before_prompts.npz"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def prompt_run(tiny_run, tmp_path_factory):
    run, _ = tiny_run
    out = tmp_path_factory.mktemp("prompt") / "p"
    cfg = PromptTrainConfig(steps=6, batch_size=16, eval_every=3, val_samples=32, measure_steps=3, n_input=2, n_attn=2)
    summary = train_prompts(out, run, cfg, log=lambda *_: None)
    return out, summary


def _data(run):
    from avqa_edge.runtime.text import Vocabulary
    from avqa_edge.toolkit.data.loader import SplitData
    from avqa_edge.toolkit.data.specs import load_split
    model, config = load_model(run)
    train = SplitData(load_split(config["data"], "train"), Vocabulary(model.cfg.vocab), model.cfg.answers)
    train.cache_mel(model.audio_encoder.frontend)
    return model, train


# ---- the default path is unchanged ----------------------------------------------------------------

def test_logits_without_prompts_equal_the_code_before_issue_5():
    """tests/data/logits_before_prompts.npz was first written by the model code of commit 283049c
    (before prompts existed) and rewritten, from the same seeded model and inputs, by the
    commit that made model version 3 (its backbone differs); with prompts=None the numbers
    must not move. On that machine the match is bit for bit (max difference 0.0); the
    tolerance only allows other CPUs' float kernels. The golden file predates the audio recall
    heads, the later AVR start and the video expert, so the model is built with one head (more
    heads draw more random numbers at init), the reverse process starting at the schedule's last
    step, and no video expert (it would answer the row whose video is missing)."""
    torch.manual_seed(0)
    cfg = preset("edge", vocab=[f"w{i}" for i in range(20)], answers=[f"a{i}" for i in range(7)], audio_heads=1,
                 avr_start=None, video_expert=False)
    m = AVQAModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    t = 10
    frames = torch.randint(0, 256, (2, t, sig.FRAMES_PER_SEGMENT, sig.FRAME_H, sig.FRAME_W, 3), generator=g, dtype=torch.uint8)
    audio = torch.rand(2, t * sig.SEGMENT_SAMPLES, generator=g) * 0.2 - 0.1
    tokens = torch.randint(2, 22, (3, 14), generator=g)
    ma, mv = torch.ones(2, t), torch.ones(2, t)
    ma[1, :5] = 0
    mv[0] = 0
    batch = {"frames": frames, "audio": audio, "tokens": tokens, "clip_index": torch.tensor([0, 1, 1])}
    want = np.load(GOLDEN)
    with torch.no_grad():
        got = {"complete": m(batch, method="zero_fill"), "zero_fill": m(batch, ma, mv, method="zero_fill"),
               "rmm+avr": m(batch, ma, mv, method="rmm+avr")}
        f, _, _ = m.encode(batch)
        explicit = m.backbone(f.a, f.v, f.q, prefix_kv=None, prompts=None)
    for k, v in got.items():
        np.testing.assert_allclose(v.numpy(), want[k], rtol=0, atol=1e-6, err_msg=k)
    assert torch.equal(explicit, got["complete"])
    assert not any("prompt" in k for k in m.state_dict()), "prompts never enter the base model's state dict"


# ---- prompt training --------------------------------------------------------------------------------

def test_only_prompts_train_and_the_model_weights_and_buffers_stay(tiny_run):
    run, _ = tiny_run
    model, train = _data(run)
    freeze(model)
    bank = PromptBank(PromptConfig(model.cfg.dim, 2, 2), model.backbone.type_av)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []
    assert all(p.requires_grad for p in bank.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any("running_mean" in k for k in before), "the encoders hold BatchNorm statistics"
    bank_before = {k: v.clone() for k, v in bank.state_dict().items()}
    opt = torch.optim.Adam(bank.parameters(), lr=1e-2)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    for _ in range(3):
        batch = train.batch(train.sample(rng, 16, 4))
        u = int(batch["clip_index"].max()) + 1
        loss = prompt_loss(model, bank, batch, [PROMPT_CONDITIONS[i % len(PROMPT_CONDITIONS)] for i in range(u)], (1.0, 1.0), gen, through_encoders=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], f"frozen model changed: {changed[:5]}"
    assert any(not torch.equal(bank_before[k], v) for k, v in bank.state_dict().items()), "the prompts did train"
    # the check is sensitive: the same steps in train mode move BatchNorm statistics
    model.train()
    with torch.no_grad():
        model.encode(train.batch(train.sample(rng, 16, 4)))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if "running_mean" in k)


def test_gradients_reach_only_the_selected_set(tiny_run):
    run, _ = tiny_run
    model, train = _data(run)
    freeze(model)
    bank = PromptBank(PromptConfig(model.cfg.dim, 2, 2), model.backbone.type_av)
    batch = train.batch(train.sample(np.random.default_rng(1), 16, 4))
    u = int(batch["clip_index"].max()) + 1
    for cond in ("complete", "audio_missing", "visual_noisy", "both_noisy"):
        bank.zero_grad()
        prompt_loss(model, bank, batch, [cond] * u, (1.0, 1.0), torch.Generator().manual_seed(0), False).backward()
        k = PROMPT_CASES.index(CONDITION_CASE[cond])
        for p in (bank.input_a, bank.input_v, bank.attn):
            norms = p.grad.flatten(1).norm(dim=1)
            assert norms[k] > 0 and all(norms[j] == 0 for j in range(len(PROMPT_CASES)) if j != k), (cond, norms)


def test_prompt_run_artifacts_and_costs(prompt_run, tiny_run):
    out, summary = prompt_run
    state, config = read_json(out / "state.json"), read_json(out / "config.json")
    assert state["finished"] and config["kind"] == "prompt" and (out / "prompts.safetensors").exists()
    assert summary["base_model_unchanged"]
    bank, _ = load_prompts(out, tiny_run[0])
    assert summary["trainable_parameters"] == sum(p.numel() for p in bank.parameters()) == 4 * (2 + 2 + 2) * 64
    costs = summary["costs"]
    ft, pr = costs["finetune"], costs["prompt"]
    assert pr["trainable_parameters"] == summary["trainable_parameters"] < ft["trainable_parameters"]
    for key in ("peak_rss_mib", "sec_per_step", "sec_per_epoch"):
        assert ft[key] > 0 and pr[key] > 0
    assert set(costs["savings_percent"]) == {"trainable_parameters", "peak_rss_delta", "peak_rss", "time_per_epoch"}
    assert state["summary"]["costs"] == costs


# ---- evaluation ---------------------------------------------------------------------------------------

def test_uncertain_conditions_are_deterministic_and_absence_is_observable(tiny_run):
    a, b = scenario_conditions(UNCERTAIN, 200, seed=0), scenario_conditions(UNCERTAIN, 200, seed=0)
    assert (a == b).all() and set(a) == set(UNCERTAIN_CONDITIONS)
    assert (a != scenario_conditions(UNCERTAIN, 200, seed=1)).any()
    ma, mv = scenario_masks(UNCERTAIN, 200, 10, seed=0)
    assert (ma.sum(1) == 0).sum() == (a == "audio_missing").sum() and (mv.sum(1) == 0).sum() == (a == "visual_missing").sum()
    model, train = _data(tiny_run[0])
    batch = train.batch(list(range(48)))
    u = int(batch["clip_index"].max()) + 1
    ma, mv = (torch.from_numpy(m) for m in scenario_masks(UNCERTAIN, u, 10, seed=0))
    blanked = _blank(_blank(batch, "audio", ma), "visual", mv)
    oa, ov = observed_masks(blanked, 10)
    assert torch.equal(oa, ma) and torch.equal(ov, mv)
    raw = {k: v for k, v in blanked.items() if k != "mel"}
    raw["audio"] = _blank({"audio": torch.from_numpy(train.split.audio[:u].astype(np.float32) / 32768)}, "audio", ma)["audio"]
    assert torch.equal(observed_masks(raw, 10)[0], ma), "waveform silence is detected too"


def test_eval_with_prompts_every_scenario(tiny_run, prompt_run, tmp_path):
    from avqa_edge.toolkit.eval import run_eval
    run, _ = tiny_run
    kw = dict(sweep=False, limit=48, seed=0, log=lambda *_: None, prompt=prompt_run[0])
    res = run_eval(run, tmp_path / "e.json", [], **kw)
    again = run_eval(run, tmp_path / "f.json", [], **kw)
    assert res["scenarios"] == again["scenarios"], "uncertain and the prompt methods are deterministic"
    for scen, methods in res["scenarios"].items():
        assert {"prompt_all", "prompt_oracle"} <= set(methods), scen
    assert {"zero_fill", "rmm+avr", "prompt_all", "prompt_oracle", "prompt_detect"} <= set(res["scenarios"][UNCERTAIN])
    assert "| uncertain | prompt_all |" in (tmp_path / "e.md").read_text(), "eval.md is written beside the JSON"


def test_prompt_oracle_uses_the_set_of_the_true_case(tiny_run, prompt_run):
    from avqa_edge.runtime.text import Vocabulary
    from avqa_edge.toolkit.data.loader import SplitData
    from avqa_edge.toolkit.data.specs import load_split
    model, config = load_model(tiny_run[0])
    bank, _ = load_prompts(prompt_run[0])
    test = SplitData(load_split(config["data"], "test"), Vocabulary(model.cfg.vocab), model.cfg.answers, strict_answers=False)
    test.cache_mel(model.audio_encoder.frontend)
    seen = []
    select = bank.select
    bank.select = lambda idx: (seen.append(idx.clone()), select(idx))[1]
    for scen in ("complete", "audio_missing", "visual_noisy", "both_noisy"):
        seen.clear()
        predict(model, test, scen, "prompt_oracle", prompts=bank)
        assert torch.cat(seen).unique().tolist() == [PROMPT_CASES.index(CONDITION_CASE[scen])]
    seen.clear()
    qs, _ = predict(model, test, UNCERTAIN, "prompt_oracle", prompts=bank)
    cond = scenario_conditions(UNCERTAIN, len(test.questions_of), 0)
    want = [PROMPT_CASES.index(CONDITION_CASE[c]) for c in cond[test.clip[torch.from_numpy(qs)].numpy()]]
    assert torch.cat(seen).tolist() == want
    seen.clear()
    predict(model, test, UNCERTAIN, "prompt_detect", prompts=bank)   # noise is not observable: never "both"
    assert PROMPT_CASES.index("both") not in torch.cat(seen).tolist()


# ---- CLI ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["train", "--method", "prompt", "--out", "NEW"], "needs --from"),
    (["train", "--method", "prompt", "--from", "NOPE", "--out", "NEW"], "not found"),
    (["train", "--from", "NOPE", "--out", "NEW"], "no training run there"),
])
def test_prompt_cli_errors(args, message, tmp_path):
    args = [str(tmp_path / a) if a in ("NEW", "NOPE") else a for a in args]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output


def test_prompt_cli_refuses_unfinished_base_and_prompt_runs_as_models(tiny_run, prompt_run, tmp_path):
    import shutil
    copy = tmp_path / "unfinished"
    shutil.copytree(tiny_run[0], copy)
    state = read_json(copy / "state.json")
    state["finished"] = False
    (copy / "state.json").write_text(json.dumps(state))
    res = CliRunner().invoke(app, ["train", "--method", "prompt", "--from", str(copy), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "has not finished" in res.output
    res = CliRunner().invoke(app, ["eval", str(prompt_run[0])])
    assert res.exit_code == 1 and "is a prompt run" in res.output


# ---- export ---------------------------------------------------------------------------------------------

def test_prompt_graphs_export_and_pass_parity(tiny_run, prompt_run, tmp_path):
    pytest.importorskip("onnx", reason="needs the export extra")
    pytest.importorskip("onnxruntime", reason="needs the export extra")
    from avqa_edge.calibration import calibset
    from avqa_edge.export import onnx_export as OX
    from avqa_edge.export import parity as P
    from avqa_edge.export import prompt_export as PX
    from avqa_edge.runtime.runners import OrtRunner
    run, _ = tiny_run
    model, _ = load_model(run)
    bank, _ = load_prompts(prompt_run[0], run)
    calib = calibset.build_from_run(run, calibset.MIN_CLIPS)
    feeds = PX.component_cases(model, bank, calib)
    assert sorted({int(f["case"][0]) for f in feeds}) == list(range(len(PROMPT_CASES)))
    specs = PX.io_specs(model)
    for name in PX.PROMPT_COMPONENTS:
        p32, p16 = tmp_path / f"{name}.onnx", tmp_path / f"{name}.fp16.onnx"
        PX.export_prompt_graph(model, bank, name, p32, exporter="torchscript")   # what auto ends at for the backbone
        OX.export_fp16(p32, p16, name, specs[name], model.cfg.hash())
        refs = [PX.reference(model, bank, name, f) for f in feeds]
        for prec, path in (("fp32", p32), ("fp16", p16)):
            with OrtRunner(path, threads=1) as r:
                got = [r.infer({k: f[k] for k in r.input_spec()})["logits"] for f in feeds]
            res = P.compare(name, "logits", prec, refs, got, P.Thresholds())
            assert res, res.failures
    # the case input selects the set: each case gives the PyTorch logits of that set
    with OrtRunner(tmp_path / "backbone_prompt_case.onnx", threads=1) as r:
        f = feeds[0]
        outs = [r.infer(dict(f, case=np.array([k], np.int64)))["logits"] for k in range(len(PROMPT_CASES))]
    for k, o in enumerate(outs):
        np.testing.assert_allclose(o, PX.reference(model, bank, "backbone_prompt_case", dict(f, case=np.array([k]))),
                                   rtol=1e-4, atol=1e-5)
    assert not np.allclose(outs[0], outs[1])


@pytest.mark.slow
def test_export_cli_with_prompts_end_to_end(tiny_run, prompt_run, tmp_path):
    """`avqa-edge export RUN --out B --prompt P`: the prompt graphs join the bundle with their
    own parity gate (component errors and the pipeline's answers against PyTorch), and the
    torch-free pipeline serves prompt_all / prompt_oracle from the bundle."""
    pytest.importorskip("onnxruntime", reason="needs the export extra")
    from avqa_edge.runtime import bundle as B
    from avqa_edge.runtime.pipeline import Pipeline
    run, _ = tiny_run
    out = tmp_path / "bundle"
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(out), "--threads", "1", "--calib-clips", "16",
                                   "--prompt", str(prompt_run[0])])
    assert res.exit_code == 0, res.output
    assert "prompt parity PASSED" in res.output
    manifest = B.read_manifest(out)
    prompts = manifest["prompts"]
    assert prompts["parity"]["passed"] and prompts["cases"] == list(PROMPT_CASES)
    assert {f"{s}/{m}" for s in ("complete", "audio_missing", "visual_missing") for m in ("prompt_all", "prompt_oracle")} \
        <= {k.split("/", 1)[1] for k in prompts["parity"]["agreement"]}
    B.verify_bundle(out)                           # the prompt graphs are hashed like every other file
    from avqa_edge.calibration.calibset import CalibrationSet
    calib = CalibrationSet.load(out / "calibration")
    with Pipeline.from_bundle(out, threads=1) as pipe:
        ans_all = pipe.answer(calib.frames[0], None, calib.tokens[0], method="prompt_all")
        ans_case = pipe.answer(calib.frames[0], None, calib.tokens[0], method="prompt_oracle")
        assert pipe.prompt_case(pipe.encode(calib.frames[0], None)) == "audio"     # audio absent -> the audio set
        assert ans_all.method == "prompt_all" and "backbone_prompt_case" in ans_case.timings_ms
