"""Serving the prompt method (in the live service): with a bundle exported with
prompts, the health state picks each answer's prompt set (complete -> `complete`, camera lost
-> `visual`, microphone lost -> `audio`), `--method` chooses between that and rmm+avr, and
the confidence calibration is fitted per method on that method's logits.

The bundles come from the tiny run the tests share (tests/conftest.py): one exported without
prompts, and a copy with a 6-step prompt run's graphs added (`export --prompt`'s code path)."""
import json
import shutil
import time
from dataclasses import asdict

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="needs onnxruntime (the export extra)")
pytest.importorskip("onnx", reason="needs the export extra to make a bundle")

from typer.testing import CliRunner  # noqa: E402

from avqa_edge.calibration import confidence as C  # noqa: E402
from avqa_edge.calibration.calibset import CalibrationSet  # noqa: E402
from avqa_edge.cli import app  # noqa: E402
from avqa_edge.errors import AvqaError  # noqa: E402
from avqa_edge.runtime.pipeline import softmax  # noqa: E402
from avqa_edge.runtime.service import (ServeConfig, build_service, confidence_methods, default_confidence_path,  # noqa: E402
                                       load_confidence, open_pipeline)

FAIL_AT = 4.0         # s after the start: the injected failure
QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def bundles(tiny_run, tmp_path_factory):
    """(plain, prompted): the tiny run exported (TorchScript exporter, no parity gate for the
    seven graphs: the export tests cover them), and a copy with a tiny prompt run's two
    graphs added (their parity gate runs, as in `avqa-edge export RUN --prompt PROMPT_RUN`)."""
    import torch

    from avqa_edge.export.bundle_export import export_bundle
    from avqa_edge.export.prompt_export import add_prompts_to_bundle
    from avqa_edge.toolkit.prompt_train import PromptTrainConfig, train_prompts
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("serve-prompts")
    cfg = PromptTrainConfig(steps=6, batch_size=16, eval_every=3, val_samples=32, measure_steps=0, n_input=2, n_attn=2)
    train_prompts(d / "prompt", tiny_run[0], cfg, **QUIET)
    plain, prompted = d / "plain", d / "prompted"
    export_bundle(tiny_run[0], plain, run_parity=False, threads=1, exporter="torchscript", **QUIET)
    shutil.copytree(plain, prompted)
    report = add_prompts_to_bundle(prompted, d / "prompt", threads=1, exporter="torchscript", **QUIET)
    assert report, "the prompt graphs pass their parity gate"
    return plain, prompted


@pytest.fixture(scope="module")
def question(bundles):
    return json.loads((bundles[0] / "calibration" / "calibration.json").read_text())["questions"][0]


def _spy(pipeline):
    """Record every answer_features call of the pipeline: [(feats, question, method, case, Answer)]."""
    calls, inner = [], pipeline.answer_features

    def spy(feats, question, method="rmm+avr", top_k=3, case=None):
        ans = inner(feats, question, method, top_k, case)
        calls.append((feats, question, method, case, ans))
        return ans
    pipeline.answer_features = spy
    return calls, inner


def _wait(cond, timeout_s: float = 20.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _check_prompt_answer(svc, body, calls, inner, question, mode, case):
    """The answer came from the prompt graph with `case`'s set, and that set matters: the same
    window answered with rmm+avr, or with another set, gives other logits."""
    assert body["mode"] == mode and body["method"] == "prompt_oracle" and body["prompt_set"] == case, body
    feats, _, method, got_case, ans = calls[-1]
    assert (method, got_case) == ("prompt_oracle", case)
    assert "backbone_prompt_case" in body["timings_ms"]
    assert not {"backbone", "avr", "rmm_audio", "rmm_visual"} & set(body["timings_ms"]), "no RMM / AVR on this path"
    assert np.array_equal(inner(feats, question, "prompt_oracle", 3, case).logits, ans.logits), "repeatable, bit for bit"
    raw = softmax(ans.logits)
    assert [x["raw_probability"] for x in body["top_k"]] == [round(float(p), 4) for p in np.sort(raw)[::-1][:3]]
    # the 6-step prompt sets of the tiny run are close to each other (logits about 1e-4 apart;
    # rmm+avr about 3e-3 away), but the graph is deterministic, so any difference is the set's
    rmm = inner(feats, question, "rmm+avr", 3, None).logits
    assert np.abs(rmm - ans.logits).max() > 1e-4, "prompt logits differ from rmm+avr on the same window"
    for other in (c for c in svc.pipeline.prompt_cases if c != case):
        assert np.abs(inner(feats, question, "prompt_oracle", 3, other).logits - ans.logits).max() > 1e-5, other
    fit = svc.confidence.get(mode, "prompt_oracle")
    assert fit is not None and (body["calibration"]["mode"], body["calibration"]["method"]) == (mode, "prompt_oracle")
    assert body["confidence"] == round(float(softmax(ans.logits / fit.temperature).max()), 4)
    return feats


@pytest.mark.parametrize("sensor, fault, mode, case", [("camera", "off", "visual_pseudo", "visual"),
                                                       ("mic", "off", "audio_pseudo", "audio")])
def test_health_state_selects_the_prompt_set(bundles, question, sensor, fault, mode, case):
    """auto on a bundle with prompts: the `complete` set before the injected failure, the
    failed sensor's set after it (mode names unchanged)."""
    _, prompted = bundles
    cfg = ServeConfig(camera="demo", mic="demo", inject=f"{sensor}:{fault}@{FAIL_AT}s", warmup_s=1, threads=1)
    svc = build_service(prompted, cfg)
    assert svc.method == "prompt" and svc.status(window=False)["method"] == "prompt"
    calls, inner = _spy(svc.pipeline)
    with svc:
        assert svc.wait_ready(20)
        assert _wait(lambda: svc.status()["mode"] == "complete")
        before = svc.ask(question)
        assert svc.elapsed() < FAIL_AT, "the service took too long to warm up for the scenario"
        _check_prompt_answer(svc, before, calls, inner, question, "complete", "complete")
        assert "'complete' prompt set" in before["message"]
        assert _wait(lambda: svc.links[sensor].monitor.state == "failed")
        assert _wait(lambda: svc.status()["mode"] == mode)     # once the window holds a segment it lost
        after = svc.ask(question)
        feats = _check_prompt_answer(svc, after, calls, inner, question, mode, case)
    lost = feats.mask_v if sensor == "camera" else feats.mask_a
    kept = feats.mask_a if sensor == "camera" else feats.mask_v
    assert lost.sum() < kept.sum() == after["segments"]["covered"], "the failed sensor's segments are zero-filled"
    assert after["sensors"][sensor]["state"] == "failed" and f"'{case}' prompt set" in after["message"]


def _json_answer(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


def test_cli_method_option(bundles, question):
    """`serve --method rmm+avr` on the prompt bundle answers with RMM + AVR; the default
    (auto) with the prompt set."""
    _, prompted = bundles
    base = ["serve", str(prompted), "--demo", "--warmup", "1", "--threads", "1", "--ask", question, "--json"]
    res = CliRunner().invoke(app, base + ["--method", "rmm+avr"])
    assert res.exit_code == 0, res.output
    body = _json_answer(res.output)
    assert body["method"] == "rmm+avr" and "prompt_set" not in body and body["answer"] is not None
    assert "backbone" in body["timings_ms"] and "backbone_prompt_case" not in body["timings_ms"]
    assert body["calibration"]["method"] == "rmm+avr"
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 0, res.output
    body = _json_answer(res.output)
    assert body["method"] == "prompt_oracle" and body["prompt_set"] == "complete" and body["mode"] == "complete"
    assert "method prompt sets chosen by sensor health" in res.output


def test_method_prompt_without_prompts_is_a_clean_error(bundles, question):
    plain, _ = bundles
    r = CliRunner()
    res = r.invoke(app, ["serve", str(plain), "--demo", "--method", "prompt", "--ask", question])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "no prompt graphs" in res.output and "avqa-edge export RUN --out BUNDLE --prompt PROMPT_RUN" in res.output
    res = r.invoke(app, ["serve", str(plain), "--demo", "--method", "prompts", "--ask", question])
    assert res.exit_code == 1 and "--method must be one of auto, rmm+avr, prompt" in res.output
    with build_service(plain, ServeConfig(threads=1)) as svc:          # auto without prompts: rmm+avr
        assert svc.method == "rmm+avr" and svc.plan("visual_pseudo") == ("rmm+avr", None, "")


def test_missing_prompt_set_falls_back_to_rmm_avr(bundles, question):
    """A mode whose set the bundle lacks is answered with rmm+avr (calibrated as such), and
    the answer says so."""
    _, prompted = bundles
    svc = build_service(prompted, ServeConfig(camera="none", mic="demo", method="prompt", warmup_s=1, threads=1))
    svc.pipeline.prompt_cases = [c for c in svc.pipeline.prompt_cases if c != "visual"]
    assert confidence_methods(svc.pipeline, "prompt") == ["prompt_oracle", "rmm+avr"]
    svc.confidence = load_confidence(svc.pipeline, CalibrationSet.load(prompted / "calibration"), None, prompted,
                                     methods=confidence_methods(svc.pipeline, "prompt"), **QUIET)
    assert svc.plan("complete") == ("prompt_oracle", "complete", "")
    with svc:
        assert svc.wait_ready(20)
        body = svc.ask(question)
    assert body["mode"] == "visual_pseudo" and body["method"] == "rmm+avr" and "prompt_set" not in body
    assert "no 'visual' prompt set" in body["message"] and "used RMM + AVR instead" in body["message"]
    assert body["calibration"]["method"] == "rmm+avr" and body["calibration"]["calibration_accuracy"] is not None
    assert "rmm_visual" in body["timings_ms"] and "avr" in body["timings_ms"]


def test_confidence_is_fitted_per_method_and_old_files_load(bundles, tmp_path):
    _, prompted = bundles
    calib = CalibrationSet.load(prompted / "calibration")
    with open_pipeline(prompted, threads=1) as pipe:
        cal = load_confidence(pipe, calib, None, prompted, methods=["rmm+avr", "prompt_oracle"], **QUIET)
        assert not cal.missing({"rmm+avr": C.MODES, "prompt_oracle": C.MODES})
        # each method's temperatures were fitted on that method's logits
        for method in ("rmm+avr", "prompt_oracle"):
            logits, labels = C.collect_logits(pipe, calib, "complete", method=method)
            fit = cal.get("complete", method)
            assert fit.nll_before == pytest.approx(C.nll(logits, labels, 1.0), rel=1e-9)
            assert fit.temperature == pytest.approx(C.fit_temperature(logits, labels), rel=1e-9)
        assert cal.get("complete", "rmm+avr").nll_before != cal.get("complete", "prompt_oracle").nll_before

        # a version-1 file (one temperature per mode, fitted on rmm+avr logits) still loads as rmm+avr
        v1 = {"kind": C.KIND, "bundle_hash": cal.bundle_hash, "fitted_with": {},
              "modes": {m: asdict(cal.get(m, "rmm+avr")) for m in C.MODES}}
        old = tmp_path / "old.confidence.json"
        old.write_text(json.dumps(v1))
        loaded = C.ConfidenceCalibration.load(old)
        assert set(loaded.methods) == {"rmm+avr"} and loaded.methods["rmm+avr"] == cal.methods["rmm+avr"]
        assert load_confidence(pipe, calib, str(old), prompted, methods=["rmm+avr"], **QUIET).methods == loaded.methods
        with pytest.raises(AvqaError, match=r"no confidence calibration for prompt_oracle/complete.*--method rmm\+avr"):
            load_confidence(pipe, calib, str(old), prompted, methods=["prompt_oracle"], **QUIET)
        # ... and as the cache ($XDG_CACHE_HOME/avqa-edge) it is kept, with the prompt method fitted and added
        cache = default_confidence_path(prompted)
        v1["modes"]["complete"]["temperature"] = 1.2345                       # a mark: kept, not refitted
        cache.write_text(json.dumps(v1))
        merged = load_confidence(pipe, calib, None, prompted, methods=["rmm+avr", "prompt_oracle"], **QUIET)
        assert merged.temperature("complete", "rmm+avr") == 1.2345
        assert merged.methods["prompt_oracle"] == cal.methods["prompt_oracle"]
        saved = json.loads(cache.read_text())
        assert saved["version"] == C.VERSION and set(saved["methods"]) == {"rmm+avr", "prompt_oracle"}
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(dict(saved, version=C.VERSION + 1)))
    with pytest.raises(AvqaError, match="newer than this avqa-edge reads"):
        C.ConfidenceCalibration.load(newer)
