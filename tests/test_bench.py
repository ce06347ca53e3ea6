"""`avqa-edge bench` on the tiny run's bundle, with very few iterations:
the JSON holds every mode and component for PyTorch and ONNX Runtime, consistent statistics
and ratios, memory measured in separate processes, the AVR unrolled-vs-step-calls comparison;
errors are clean."""
import json

import numpy as np
import pytest

pytest.importorskip("onnx", reason="needs the export extra: pip install -e '.[export]'")
pytest.importorskip("onnxruntime", reason="needs the export extra: pip install -e '.[export]'")

from typer.testing import CliRunner  # noqa: E402

from avqa_edge.cli import app  # noqa: E402
from avqa_edge.export import bench as BN  # noqa: E402
from avqa_edge.export import bench_worker as W  # noqa: E402
from avqa_edge.runtime.bundle import COMPONENTS  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    """The tiny run exported without the parity gate (test_export.py covers it), TorchScript only."""
    from avqa_edge.export.bundle_export import export_bundle
    out = tmp_path_factory.mktemp("bench") / "bundle"
    export_bundle(tiny_run[0], out, log=lambda *_: None, exporter="torchscript", run_parity=False, threads=1)
    return out


@pytest.fixture(scope="module")
def report(bundle, tiny_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench-json") / "bench.json"
    res = CliRunner().invoke(app, ["bench", str(bundle), "--run", str(tiny_run[0]), "--threads", "1", "--iters", "3",
                                   "--warmup", "1", "--clips", "2", "--json", str(path)])
    assert res.exit_code == 0, res.output
    return json.loads(path.read_text()), res.output


def test_every_mode_and_component_for_both_backends(report):
    rep, output = report
    assert rep["threads"] == 1 and rep["iters"] == 3 and rep["clips"] == 2 and rep["batch"] == 1
    for b in ("pytorch", "ort"):
        res = rep["backends"][b]
        assert res["threads"] == 1
        assert set(res["components"]) == set(COMPONENTS) | {"video_expert"} == set(rep["components"])
        assert set(res["end_to_end"]) == set(W.MODES) == {"complete", "audio_pseudo", "visual_pseudo"}
        rows = [v["infer"] for v in res["components"].values()] + list(res["end_to_end"].values())
        if b == "ort":
            rows += [v["session_run"] for v in res["components"].values()]
        for s in rows:
            assert s["n"] == 3 and 0 < s["min"] <= s["p50"] <= s["p95"] <= s["max"]
    # what runs in each mode: an absent sensor's encoder is not run, AVR only when something is missing
    for b, rmm in (("pytorch", "rmm"), ("ort", "rmm_visual")):
        comps = {m: set(e["components_ms"]) for m, e in rep["backends"][b]["end_to_end"].items()}
        assert "audio" not in comps["audio_pseudo"] and "visual" not in comps["visual_pseudo"]
        assert "avr" in comps["audio_pseudo"] and "avr" in comps["visual_pseudo"] and "avr" not in comps["complete"]
        assert rmm in comps["visual_pseudo"]
    # the video absent throughout: the ONNX pipeline answers with the video expert, as PyTorch does
    ort = {m: set(e["components_ms"]) for m, e in rep["backends"]["ort"]["end_to_end"].items()}
    assert "video_expert" in ort["visual_pseudo"] and "backbone" not in ort["visual_pseudo"]
    assert "backbone" in ort["complete"] and "backbone" in ort["audio_pseudo"] and "video_expert" not in ort["complete"]
    assert rep["backends"]["ort"]["session_options"]["intra_op_num_threads"] == 1
    assert rep["backends"]["ort"]["session_options"]["inter_op_num_threads"] == 1
    assert rep["backends"]["pytorch"]["threads_effective"]["torch.get_num_threads"] == 1
    for m in W.MODES:
        assert f"end to end {m}" in output
    assert "where the time goes" in output and "goal:" in output


def test_speedups_are_ratios_of_the_same_json(report):
    rep, _ = report
    t, o, sp = rep["backends"]["pytorch"], rep["backends"]["ort"], rep["speedups"]["ort"]
    for c in rep["components"]:
        assert sp["components"][c] == pytest.approx(t["components"][c]["infer"]["p50"] / o["components"][c]["infer"]["p50"],
                                                    rel=1e-12)
    for m in W.MODES:
        r = t["end_to_end"][m]["p50"] / o["end_to_end"][m]["p50"]
        assert sp["end_to_end"][m] == pytest.approx(r, rel=1e-12)
        assert rep["goal"]["modes"][m]["speedup"] == pytest.approx(r, rel=1e-12)
        assert rep["goal"]["modes"][m]["met"] == (r >= 2.0)
    for b in ("pytorch", "ort"):          # shares add up to the end-to-end mean (glue included)
        for m in W.MODES:
            assert sum(s["share"] for s in rep["shares"][b][m].values()) == pytest.approx(1.0)
    assert set(rep["answers_agree_with_pytorch"]["ort"]) == set(W.MODES)


def test_memory_is_measured_per_process(report):
    rep, output = report
    t, o = rep["backends"]["pytorch"], rep["backends"]["ort"]
    assert t["pid"] != o["pid"]
    for res in (t, o):
        m = res["memory"]
        assert 0 < m["rss_after_imports_mb"] <= m["peak_rss_mb"] and 0 < m["rss_after_load_mb"] <= m["peak_rss_mb"]
    assert t["imported_torch"] and not o["imported_torch"]        # ORT's figure holds no torch
    assert str(t["pid"]) in output and str(o["pid"]) in output


def test_avr_unrolled_vs_step_calls(report):
    rep, output = report
    a = rep["avr_steps"]
    assert a["steps"] == 10
    for k in ("pytorch_loop", "ort_step_calls", "ort_unrolled"):
        assert 0 < a[k]["p50"] <= a[k]["p95"]
    assert a["step_calls_over_unrolled"] == pytest.approx(a["ort_step_calls"]["p50"] / a["ort_unrolled"]["p50"])
    assert a["ort_unrolled"] == rep["backends"]["ort"]["components"]["avr"]["infer"]
    assert a["max_abs_diff_step_calls_vs_unrolled"] < 1e-4                  # the same computation
    assert rep["denoiser_step_graph"]["max_abs_diff_vs_pytorch"] < 1e-4
    assert "unrolled" in output


def test_report_names_machine_versions_and_model(report, bundle):
    rep, output = report
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert rep["model_hash"] == manifest["run"]["model_hash"] and rep["config_hash"] == manifest["config_hash"]
    assert rep["machine"]["cpu_model"] and rep["machine"]["logical_cores"] >= 1
    assert {"torch", "onnxruntime", "numpy", "python", "avqa_edge"} <= set(rep["versions"])
    assert rep["backends"]["trt"] == {"backend": "trt", "available": False, "reason": "not available: no engines in bundle"}
    assert "not available: no engines in bundle" in output
    assert set(rep["definitions"]) >= {"p50/p95", "speedup", "end_to_end", "memory"}


def test_missing_bundle_and_bad_options_are_clean_errors(tmp_path, bundle):
    r = CliRunner()
    res = r.invoke(app, ["bench", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "not found" in res.output and "Traceback" not in res.output
    res = r.invoke(app, ["bench", str(bundle), "--iters", "0"])
    assert res.exit_code == 1 and "--iters" in res.output
    res = r.invoke(app, ["bench", str(bundle), "--precision", "int8"])
    assert res.exit_code == 1 and "--precision" in res.output
    res = r.invoke(app, ["bench", str(bundle), "--ort-config", "no-equals-sign"])
    assert res.exit_code == 1 and "KEY=VALUE" in res.output
    res = r.invoke(app, ["bench", str(bundle), "--run", str(tmp_path / "no-run")])
    assert res.exit_code == 1 and "--run" in res.output and "Traceback" not in res.output


def test_configured_ort_runner_adds_session_entries(bundle):
    """--ort-config: the runtime's runner with extra ONNX Runtime config entries, same outputs."""
    from avqa_edge.runtime.runners import SPIN_KEY, OrtRunner
    path = bundle / "onnx" / "question.onnx"
    r = W.ConfiguredOrtRunner(path, {SPIN_KEY: "0"}, threads=1, name="question")
    with r, OrtRunner(path, threads=1) as plain:
        tokens = np.zeros(plain.input_spec()["tokens"][0], np.int64)
        tokens[0, :3] = 1
        assert r.ort_session.get_session_options().get_session_config_entry(SPIN_KEY) == "0"
        assert np.array_equal(r.infer({"tokens": tokens})["q"], plain.infer({"tokens": tokens})["q"])
    assert BN.parse_ort_config(["a.b=1", " c = 2 "]) == {"a.b": "1", "c": "2"}


def test_engines_without_tensorrt_are_reported_not_fatal(bundle, tiny_run, tmp_path):
    """A bundle listing engines on a machine that cannot run them: the TensorRT process says
    why, PyTorch and ORT are still measured."""
    import shutil

    from avqa_edge.runtime import bundle as B
    copy = tmp_path / "with-engines"
    shutil.copytree(bundle, copy)
    (copy / "engines").mkdir()
    graphs = B.Bundle.open(copy).graphs
    for c in graphs:
        (copy / "engines" / f"{c}.engine").write_bytes(b"not a real plan")
    B.add_engines(copy, {c: {"file": f"engines/{c}.engine"} for c in graphs},
                  {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt": "8.5.2", "cuda": "11.4"})
    rep = BN.run_bench(copy, tiny_run[0], threads=1, iters=1, warmup=0, clips=1, log=lambda *_: None)
    trt = rep["backends"]["trt"]
    assert trt["available"] is False and trt["reason"].startswith("not available: ") and "TensorRT" in trt["reason"]
    assert "trt" not in rep["speedups"] and set(rep["speedups"]) == {"ort"}
    assert any(line.startswith("TensorRT: not available") for line in BN.summary_lines(rep))
