"""Export bundle: the seven graphs (eight: the tiny run has a video
expert, as the edge preset does) and their FP16 variants, the AVR
graph's reverse steps, the calibration set, the manifest's hashes, the parity gate, the
torch-free runtime and the CLI. The tiny run is exported once (through the CLI) per test run
(conftest.py's `exported`)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="needs the export extra: pip install -e '.[export]'")
pytest.importorskip("onnxruntime", reason="needs the export extra: pip install -e '.[export]'")

from typer.testing import CliRunner  # noqa: E402

from avqa_edge.calibration import calibset  # noqa: E402
from avqa_edge.cli import app  # noqa: E402
from avqa_edge.errors import AvqaError  # noqa: E402
from avqa_edge.export import components as C  # noqa: E402
from avqa_edge.export import fp16 as fp16_pass  # noqa: E402
from avqa_edge.export import onnx_export as OX  # noqa: E402
from avqa_edge.export import parity as P  # noqa: E402
from avqa_edge.runtime import bundle as B  # noqa: E402
from avqa_edge.runtime import signal as sig  # noqa: E402
from avqa_edge.runtime.pipeline import Pipeline  # noqa: E402
from avqa_edge.runtime.runners import OrtRunner  # noqa: E402
from avqa_edge.toolkit.checkpoint import load_model  # noqa: E402
from avqa_edge.toolkit.config import preset  # noqa: E402
from avqa_edge.toolkit.model.avqa import AVQAModel  # noqa: E402
from avqa_edge.toolkit.model.diffusion import reverse  # noqa: E402

SCENARIOS = ("complete", "audio_missing", "visual_missing")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model(tiny_run):
    return load_model(tiny_run[0])[0]


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


# ---- section 1: graphs ------------------------------------------------------------------------

def test_export_reports_every_artifact(exported, model):
    bundle, output = exported
    manifest = B.read_manifest(bundle)
    assert set(manifest["components"]) == set(C.COMPONENTS) | {"video_expert"} == set(C.components_of(model))
    assert B.Bundle.open(bundle).graphs == C.COMPONENTS + ("video_expert",)
    for comp in manifest["components"]:
        for rel in manifest["components"][comp]["files"].values():
            assert (bundle / rel).is_file() and f"wrote {rel}" in output
    for rel in ("calibration/calibration.npz", "calibration/calibration.json", "parity.md", "parity.json"):
        assert rel in manifest["files"] and f"wrote {rel}" in output
    assert "manifest.json" not in manifest["files"]
    assert "total" in output and "parity PASSED" in output
    assert not list(bundle.parent.glob(".*partial*")), "no temp directory left behind"
    v = manifest["versions"]
    assert {"avqa_edge", "torch", "onnx", "onnxruntime"} <= set(v)
    assert manifest["opset"] == 17 and manifest["engines"] == {} and manifest["fingerprint"] == {}
    assert manifest["vocabulary"][:2] == ["<pad>", "<unk>"] and manifest["answers"] == manifest["model"]["answers"]


def test_each_graph_matches_its_spec(exported, model):
    bundle, _ = exported
    manifest = B.read_manifest(bundle)
    specs = C.io_specs(model)
    assert list(specs) == list(C.components_of(model))
    for comp in C.components_of(model):
        rec = manifest["components"][comp]
        for precision, rel in rec["files"].items():
            proto = onnx.load(str(bundle / rel))
            OX.check_graph(proto, comp, specs[comp], 17, model.cfg.hash())   # checker, names, shapes, dtypes, opset
            meta = OX.metadata(proto)
            assert meta["avqa_edge.precision"] == precision.split("_")[0] and meta["avqa_edge.version"]
            ins, outs = OX.graph_io(proto)
            assert ins == rec["inputs"] and outs == rec["outputs"]
            with OrtRunner(bundle / rel, threads=1) as r:
                spec = r.input_spec()
                assert [(n, list(s), str(d)) for n, (s, d) in spec.items()] == \
                       [(i["name"], i["shape"], i["dtype"]) for i in rec["inputs"]]
                assert r.output_names == [o["name"] for o in rec["outputs"]]
                assert r.metadata()["avqa_edge.component"] == comp


def test_wrong_spec_is_rejected(exported, model):
    bundle, _ = exported
    proto = onnx.load(str(bundle / "onnx/question.onnx"))
    specs = C.io_specs(model)
    with pytest.raises(AvqaError, match="question.*input names"):
        OX.check_graph(proto, "question", (specs["backbone"][0], specs["question"][1]))
    with pytest.raises(AvqaError, match="opset 17 written, 18 expected"):
        OX.check_graph(proto, "question", specs["question"], opset=18)
    with pytest.raises(AvqaError, match="config hash"):
        OX.check_graph(proto, "question", specs["question"], config_hash="000000000000")


def test_fp16_graphs_keep_io_and_sensitive_ops_in_fp32(exported):
    bundle, _ = exported
    manifest = B.read_manifest(bundle)
    F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    for comp in manifest["components"]:
        rec = manifest["components"][comp]
        m = onnx.shape_inference.infer_shapes(onnx.load(str(bundle / rec["files"]["fp16"])), strict_mode=True)
        assert OX.graph_io(m) == (rec["inputs"], rec["outputs"]), comp          # FP32 (and uint8 / int64) I/O
        dtype = {vi.name: vi.type.tensor_type.elem_type for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output)}
        dtype.update({t.name: t.data_type for t in m.graph.initializer})
        for node in m.graph.node:
            if node.op_type in fp16_pass.BLOCK_OPS:
                floats = [dtype[n] for n in list(node.input) + list(node.output) if n and dtype.get(n) in (F32, F16)]
                assert all(t == F32 for t in floats), (comp, node.op_type, node.name)   # (int-only nodes: nothing to keep)
        report = fp16_pass.precision_report(m)
        assert sum(v["fp16"] for v in report.values()) > 0, comp                  # something was converted
        if comp in ("visual", "avr", "audio"):
            assert report["Conv"]["fp16"] > 0
    # the audio encoder's log-mel front end (everything feeding Log) stays FP32
    audio = fp16_pass.precision_report(onnx.load(str(bundle / manifest["components"]["audio"]["files"]["fp16"])))
    assert audio["Log"] == {"fp16": 0, "fp32": 1} and audio["MatMul"]["fp16"] == 0


def test_fp16_converter_on_a_toy_graph():
    """FP32 I/O, Softmax kept FP32, MatMul weights stored FP16, numerics close."""
    from onnx import helper, numpy_helper
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["p"], axis=-1),
         helper.make_node("Mul", ["p", "p"], ["y"])], "toy",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m16 = fp16_pass.convert(m)
    assert [t.data_type for t in m16.graph.initializer] == [onnx.TensorProto.FLOAT16]
    assert fp16_pass.precision_report(m16) == {"MatMul": {"fp16": 1, "fp32": 0}, "Softmax": {"fp16": 0, "fp32": 1},
                                               "Mul": {"fp16": 1, "fp32": 0}}
    import onnxruntime as ort
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    y32 = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    y16 = ort.InferenceSession(m16.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert y16.dtype == np.float32 and np.allclose(y16, y32, atol=2e-3)


# ---- the components equal the model's own path -----------------------------------------------

@torch.no_grad()
def test_component_wrappers_equal_the_model_path(model):
    """components.py (what is exported) against model.encode / fill / enhance / backbone."""
    g = torch.Generator().manual_seed(0)
    t = model.cfg.t_segments
    frames = torch.randint(0, 256, (1, t, 2, 32, 48, 3), dtype=torch.uint8, generator=g)
    audio = torch.rand(1, t * 8000, generator=g) * 0.4 - 0.2
    tokens = torch.zeros(1, model.cfg.q_len, dtype=torch.int64)
    tokens[0, :4] = torch.tensor([2, 3, 4, 5])
    batch = {"frames": frames, "audio": audio, "tokens": tokens}
    ma = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 0, 1, 1]], dtype=torch.float32)
    mv = torch.tensor([[1, 0, 1, 1, 1, 0, 1, 1, 1, 1]], dtype=torch.float32)
    f, ma_q, mv_q = model.encode(batch, ma, mv)
    want = model(batch, ma, mv, method="rmm+avr")
    # the pipeline's recipe, with the wrappers
    w = {c: C.build(model, c) for c in C.components_of(model)}
    q = w["question"](tokens)
    a = w["audio"](audio * ma.repeat_interleave(8000, 1)) * ma[..., None]
    v = w["visual"](frames * mv.to(torch.uint8)[..., None, None, None, None]) * mv[..., None, None, None]
    assert torch.allclose(a, f.a) and torch.allclose(v, f.v) and torch.allclose(q, f.q)
    pa, pv = w["rmm_audio"](v, q), w["rmm_visual"](a, q)
    a_hat = ma[..., None] * a + (1 - ma[..., None]) * pa
    v_hat = mv[..., None, None, None] * v + (1 - mv[..., None, None, None]) * pv
    fa, fv = model.fill(f, ma_q, mv_q, "rmm")
    assert torch.allclose(a_hat, fa) and torch.allclose(v_hat, fv)
    ea, ev = w["avr"](a_hat, v_hat, ma, mv)                      # every segment, no shortcut
    ra, rv = model.enhance(a_hat, v_hat, ma, mv)                 # the model's path, with its shortcut
    assert torch.allclose(ea, ra, atol=1e-6) and torch.allclose(ev, rv, atol=1e-6)
    assert torch.allclose(w["backbone"](ea, ev, q), want, atol=1e-5)
    # the video missing in every segment: the video expert answers, on the recalled map
    every, none = torch.ones_like(ma), torch.zeros_like(mv)
    want = model(batch, every, none, method="rmm+avr")
    a = w["audio"](audio)
    xa, xv = w["avr"](a, w["rmm_visual"](a, q), every, none)
    assert torch.allclose(w["video_expert"](xa, xv, q), want, atol=1e-5)
    assert not torch.allclose(w["backbone"](xa, xv, q), want, atol=1e-3)


def _untrained(steps: int) -> AVQAModel:
    torch.manual_seed(0)
    m = AVQAModel(preset("edge", diffusion_steps=steps, vocab=["is", "the", "piano"], answers=["yes", "no"])).eval()
    torch.nn.init.normal_(m.denoiser.out.weight, std=0.05)       # zero-initialised: make eps depend on x
    return m


def test_avr_graph_holds_the_configured_reverse_steps(tmp_path, exported):
    """Node count grows linearly with the steps, each step holds one U-Net (its convs), and
    the graph's output equals PyTorch's S reverse steps."""
    import onnxruntime as ort
    n_conv = lambda m: sum(isinstance(x, torch.nn.Conv2d) for x in m.denoiser.modules())  # noqa: E731
    nodes, convs = {}, {}
    for s in (1, 2, 3):
        m = _untrained(s)
        path = tmp_path / f"avr{s}.onnx"
        OX.export_avr(m, path, exporter="torchscript")
        proto = onnx.load(str(path))
        nodes[s] = len(proto.graph.node)
        convs[s] = sum(n.op_type == "Conv" for n in proto.graph.node)
        assert convs[s] == s * n_conv(m)
        ins = C.example_inputs(C.io_specs(m)["avr"][0], seed=s)
        a, v, ka, kv = ins
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {n: x.numpy() for n, x in zip(("a", "v", "known_a", "known_v"), ins)})
        with torch.no_grad():
            b, t, c, h, w = v.shape
            x = torch.cat([a[..., None, None].expand(-1, -1, -1, h, w), v], 2).reshape(t, 2 * c, h, w)
            known = torch.cat([ka[..., None].expand(-1, -1, c), kv[..., None].expand(-1, -1, c)], 2).reshape(t, 2 * c, 1, 1)
            ref = reverse(m.denoiser, m.schedule, x, known, m.avr_noise).reshape(1, t, 2 * c, h, w)
            assert not torch.allclose(ref, x.reshape(ref.shape)), "the steps must change the missing parts"
        assert np.allclose(got[0], ref[:, :, :c].mean((-1, -2)).numpy(), atol=1e-5)
        assert np.allclose(got[1], ref[:, :, c:].numpy(), atol=1e-5)
    assert nodes[3] - nodes[2] == nodes[2] - nodes[1] > 0
    # the bundle's AVR graph: ten U-Net passes
    bundle, _ = exported
    m10 = _untrained(10)
    proto = onnx.load(str(bundle / "onnx/avr.onnx"))
    assert sum(n.op_type == "Conv" for n in proto.graph.node) == 10 * n_conv(m10)
    assert B.read_manifest(bundle)["components"]["avr"]["reverse_steps"] == 10


# ---- calibration set ----------------------------------------------------------------------------

def test_calibration_set_is_compact_and_pickle_free(exported, tiny_run):
    bundle, _ = exported
    path = bundle / "calibration/calibration.npz"
    assert path.stat().st_size <= calibset.MAX_BYTES
    with np.load(path, allow_pickle=False) as z:
        assert z["frames"].dtype == np.uint8 and z["frames"].shape[1:] == (10, 2, 32, 48, 3)
        assert z["audio"].dtype == np.int16 and z["audio"].shape[1] == 80000
        assert z["tokens"].dtype == np.int64 and z["clip"].max() < len(z["frames"])
        n_clips = len(z["frames"])
    meta = json.loads((bundle / "calibration/calibration.json").read_text())
    assert meta["n_clips"] == n_clips == 16        # the tiny validation split holds 16 clips (< 64: all taken)
    assert meta["source"]["split"] == "val" and len(meta["questions"]) == meta["n_questions"]
    # deterministic: the same run gives byte-identical files
    again = calibset.build_from_run(tiny_run[0])
    p2 = again.save(Path(str(bundle.parent)) / "calib-again")[0]
    assert hashlib.sha256(p2.read_bytes()).hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_calibration_takes_64_clips_from_a_larger_split():
    from avqa_edge.toolkit.data.types import QA, RawSplit
    n = 80
    frames = np.zeros((n, 10, 2, 32, 48, 3), np.uint8)
    audio = np.zeros((n, 80000), np.int16)
    qa = [QA(clip=i, question=f"is the {w} playing", answer="yes", qtype="Audio-Visual/Existential")
          for i in range(n) for w in ("piano", "violin")]
    cs = calibset.build(RawSplit(frames, audio, qa), ["is", "the", "piano", "violin", "playing"], ["yes", "no"], 14)
    assert cs.n_clips == 64 and cs.n_questions == 128 and (cs.answer == 0).all()
    assert cs.meta["source"]["clip_ids"] == sorted(cs.meta["source"]["clip_ids"])
    again = calibset.build(RawSplit(frames, audio, qa), ["is", "the", "piano", "violin", "playing"], ["yes", "no"], 14)
    assert again.meta["source"]["clip_ids"] == cs.meta["source"]["clip_ids"]


# ---- manifest ---------------------------------------------------------------------------------

def test_modified_or_missing_file_is_caught(exported, tmp_path):
    bundle = _copy(exported[0], tmp_path)
    B.verify_bundle(bundle)
    target = bundle / "onnx/avr.fp16.onnx"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(AvqaError, match=r"modified.*onnx/avr\.fp16\.onnx"):
        B.verify_bundle(bundle)
    with pytest.raises(AvqaError, match=r"avr\.fp16\.onnx"):
        Pipeline.from_bundle(bundle)
    (bundle / "calibration/calibration.json").unlink()
    with pytest.raises(AvqaError, match=r"missing: calibration/calibration\.json"):
        B.verify_bundle(bundle)


def test_add_engines_records_files_and_fingerprint(exported, tmp_path):
    bundle = _copy(exported[0], tmp_path)
    (bundle / "visual.engine").write_bytes(b"plan")
    fp = {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt": "10.3.0", "cuda": "12.6"}
    m = B.add_engines(bundle, {"visual": {"file": "visual.engine", "route": "strongly_typed"}}, fp)
    assert m["engines"]["visual"]["route"] == "strongly_typed" and m["fingerprint"] == fp
    assert m["files"]["visual.engine"]["sha256"] == hashlib.sha256(b"plan").hexdigest()
    B.verify_bundle(bundle)
    assert B.Bundle.open(bundle).engine_path("visual") == bundle / "visual.engine"
    with pytest.raises(AvqaError, match="unknown components"):
        B.add_engines(bundle, {"nope": {"file": "visual.engine"}}, fp)
    (bundle / "onnx/visual.onnx").write_bytes(b"tampered")
    with pytest.raises(AvqaError, match="onnx/visual.onnx"):
        B.add_engines(bundle, {"visual": {"file": "visual.engine"}}, fp)


# ---- section 2: parity ------------------------------------------------------------------------

def test_parity_passes_in_every_scenario(exported):
    bundle, _ = exported
    report = json.loads((bundle / "parity.json").read_text())
    assert report["passed"] and not report["failures"]
    th = P.Thresholds()
    seen = {(a["precision"], a["scenario"]) for a in report["agreement"]}
    assert {(p, s) for p in ("fp32", "fp16") for s in SCENARIOS} <= seen
    for a in report["agreement"]:
        assert a["questions"] == 96
        assert a["counted_rate"] >= (th.fp32_agreement if a["precision"] == "fp32" else th.fp16_agreement)
    outs = {(o["component"], o["output"], o["precision"]) for o in report["outputs"]}
    assert len(outs) == 2 * 9                       # 8 components, 9 outputs, 2 precisions
    for o in report["outputs"]:
        if o["precision"] == "fp32":
            assert o["max_abs_rms"] <= 1e-4 and o["cosine"] >= 0.99999
    assert B.read_manifest(bundle)["parity"]["passed"] is True
    assert "PASSED" in (bundle / "parity.md").read_text()


def test_perturbed_graph_fails_the_gate(exported, model, tmp_path):
    bundle, _ = exported
    b = B.Bundle.open(bundle)
    graphs = P.bundle_graphs(b, ("fp32",))
    proto = onnx.load(str(graphs["fp32"]["backbone"]))
    from onnx import numpy_helper
    big = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    big.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(big) * 1.01, big.name))
    graphs["fp32"]["backbone"] = tmp_path / "backbone.onnx"
    onnx.save(proto, str(graphs["fp32"]["backbone"]))
    calib = calibset.CalibrationSet.load(bundle / "calibration")
    report = P.run_parity(model, graphs, calib, b.vocabulary, b.answers, scenarios=("complete",),
                          component_samples=2, threads=1)
    assert not report
    failed = [(o.component, o.output) for o in report.outputs if not o]
    assert failed == [("backbone", "logits")]
    with pytest.raises(AvqaError, match=r"backbone/logits \(fp32\): max abs error"):
        P.gate(report)
    assert "FAILED" in report.to_markdown() and "backbone/logits" in report.to_markdown()


def test_other_backends_plug_into_the_gate(exported, model):
    """runner_sets: e.g. TensorRT engines as {"trt": {component: runner}}, judged with the FP16
    thresholds (stood in for here by ONNX Runtime on the FP16 graphs)."""
    bundle, _ = exported
    b = B.Bundle.open(bundle)
    calib = calibset.CalibrationSet.load(bundle / "calibration")
    stand_in = {c: OrtRunner(b.graph_path(c, "fp16"), threads=1, name=c) for c in b.graphs}
    report = P.run_parity(model, {}, calib, b.vocabulary, b.answers, scenarios=("visual_missing",),
                          component_samples=1, threads=1, runner_sets={"trt": stand_in})
    assert report and {o.precision for o in report.outputs} == {"trt"}
    assert [(a.precision, a.scenario, a.threshold) for a in report.agreement] == [("trt", "visual_missing", 0.99)]


def test_agreement_excuses_only_near_ties():
    ref = np.array([[2.0, 2.0 + 1e-6, -1.0], [3.0, 0.0, 0.0]], np.float32)
    got = np.array([[2.0 + 1e-3, 2.0, -1.0], [0.0, 3.0, 0.0]], np.float32)
    a = P.agreement("complete", "fp32", ref, got, ["x", "y", "z"], threshold=1.0, tie_margin=1e-4)
    assert a.agree == 0 and len(a.excused) == 1 and a.excused[0]["question"] == 0
    assert not a and a.counted_rate == 0.5
    ok = P.agreement("complete", "fp32", ref[:1], got[:1], ["x", "y", "z"], threshold=1.0, tie_margin=1e-4)
    assert ok and ok.rate == 0.0 and ok.counted_rate == 1.0


# ---- the torch-free runtime ------------------------------------------------------------------

def test_pipeline_answers_and_checks_inputs(exported):
    bundle, _ = exported
    calib = calibset.CalibrationSet.load(bundle / "calibration")
    with Pipeline.from_bundle(bundle, precision="fp16", threads=1) as p:
        q = " ".join(calib.meta["questions"][0].split())
        ans = p.answer(None, calib.audio[0], q, top_k=3)           # camera absent for the whole window
        assert ans.answer in p.answers and len(ans.top_k) == 3
        assert ans.top_k[0][1] >= ans.top_k[1][1] >= ans.top_k[2][1]
        assert ans.segments == {"audio": 10, "visual": 0, "total": 10}
        assert "visual" not in ans.timings_ms and "rmm_visual" in ans.timings_ms and "avr" in ans.timings_ms
        full = p.answer(calib.frames[0], calib.audio[0], calib.tokens[0])
        assert "avr" not in full.timings_ms                       # nothing missing: no AVR
        with pytest.raises(AvqaError, match="frames must be uint8"):
            p.answer(calib.frames[0].astype(np.float32), calib.audio[0], q)
        with pytest.raises(AvqaError, match="no data was given"):
            p.answer(None, calib.audio[0], q, mask_v=np.ones(10))
        with pytest.raises(AvqaError, match="mask_a must hold 10 values"):
            p.answer(calib.frames[0], calib.audio[0], q, mask_a=np.ones(9))
        with pytest.raises(AvqaError, match="backbone.*'q' has dtype float64"):
            p.runners["backbone"].infer({"a": np.zeros((1, 10, 64), np.float32),
                                         "v": np.zeros((1, 10, 64, 4, 6), np.float32), "q": np.zeros((1, 64))})
        with pytest.raises(AvqaError, match=r"'a' has shape \(1, 9, 64\)"):
            p.runners["rmm_visual"].infer({"a": np.zeros((1, 9, 64), np.float32), "q": np.zeros((1, 64), np.float32)})
    with pytest.raises(AvqaError, match="not active"):
        p.runners["question"].infer({"tokens": calib.tokens[:1]})


def test_pipeline_answers_a_missing_video_with_the_expert(exported, model):
    """The runtime routes as AVQAModel.answer does: the video absent in every segment (and the
    audio there) -> the video_expert graph; partly absent, or both absent -> the backbone."""
    bundle, _ = exported
    calib = calibset.CalibrationSet.load(bundle / "calibration")
    t = model.cfg.t_segments
    batch = {"frames": torch.from_numpy(calib.frames[:1]), "tokens": torch.from_numpy(calib.tokens[:1]),
             "audio": torch.from_numpy(sig.pcm16_to_float(calib.audio[:1])), "clip_index": torch.zeros(1, dtype=torch.int64)}
    part = np.ones(t, np.float32)
    part[:4] = 0
    with Pipeline.from_bundle(bundle, threads=1) as p:
        for frames, mask_v, audio, net, torch_mv, torch_ma in (
                (None, None, calib.audio[0], "video_expert", np.zeros(t), np.ones(t)),
                (calib.frames[0], part, calib.audio[0], "backbone", part, np.ones(t)),
                (calib.frames[0], None, calib.audio[0], "backbone", np.ones(t), np.ones(t)),
                (None, None, None, "backbone", np.zeros(t), np.zeros(t))):
            ans = p.answer(frames, audio, calib.tokens[0], mask_v=mask_v)
            other = {"video_expert": "backbone", "backbone": "video_expert"}[net]
            assert net in ans.timings_ms and other not in ans.timings_ms
            with torch.no_grad():
                want = model(batch, torch.from_numpy(torch_ma[None]).float(), torch.from_numpy(torch_mv[None]).float(),
                             method="rmm+avr")[0].numpy()
            assert np.abs(ans.logits - want).max() <= 1e-4 * np.sqrt(np.mean(want ** 2)) + 1e-6, net
        runners = dict(p.runners)
    del runners["video_expert"]
    with pytest.raises(AvqaError, match=r"missing \['video_expert'\]"):
        Pipeline(runners, B.Bundle.open(bundle).vocabulary, model.cfg.answers, model.cfg.to_dict())


def test_a_bundle_without_a_video_expert_still_loads_and_answers(exported, tmp_path):
    """Bundles exported before the video expert (seven graphs, no `video_expert` in the config)."""
    bundle = _copy(exported[0], tmp_path)
    manifest = B.read_manifest(bundle)
    for rel in manifest["components"].pop("video_expert")["files"].values():
        (bundle / rel).unlink()
    manifest["model"]["video_expert"] = False
    manifest["config_hash"] = B.config_hash(manifest["model"])   # and its graphs carry that config's hash
    for comp in manifest["components"].values():
        for rel in comp["files"].values():
            proto = onnx.load(str(bundle / rel))
            OX.add_metadata(proto, {"avqa_edge.config_hash": manifest["config_hash"]})
            onnx.save(proto, str(bundle / rel))
    B.write_manifest(bundle, manifest)
    assert B.Bundle.open(bundle).graphs == C.COMPONENTS
    calib = calibset.CalibrationSet.load(bundle / "calibration")
    with Pipeline.from_bundle(bundle, threads=1) as p:
        assert "video_expert" not in p.runners
        ans = p.answer(None, calib.audio[0], calib.tokens[0])
        assert "backbone" in ans.timings_ms and "rmm_visual" in ans.timings_ms


def test_runtime_runs_without_torch(exported):
    """runtime.bundle / runners / pipeline and calibration.calibset import and answer with torch blocked."""
    bundle, _ = exported
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from avqa_edge.runtime import bundle, runners, pipeline\n"
        "from avqa_edge.calibration import calibset\n"
        f"cs = calibset.CalibrationSet.load({str(bundle / 'calibration')!r})\n"
        f"with pipeline.Pipeline.from_bundle({str(bundle)!r}, threads=1) as p:\n"
        "    a = p.answer(cs.frames[0], None, cs.tokens[0])\n"
        "assert a.answer in p.answers\n"
        "bad = [m for m in sys.modules if m.startswith(('avqa_edge.toolkit', 'avqa_edge.export'))]\n"
        "assert not bad, bad\n"
        "print('ok', a.answer)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr


def test_runtime_sources_are_python38_syntax():
    import ast
    root = Path(__file__).resolve().parents[1]
    for rel in ("runtime/bundle.py", "runtime/runners.py", "runtime/pipeline.py", "calibration/calibset.py"):
        ast.parse((root / rel).read_text(), feature_version=(3, 8))


# ---- CLI --------------------------------------------------------------------------------------

def test_cli_parity(exported, tmp_path):
    bundle = _copy(exported[0], tmp_path)
    out = tmp_path / "p.json"
    res = CliRunner().invoke(app, ["parity", str(bundle), "--json", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "parity PASSED" in res.output and json.loads(out.read_text())["passed"]
    md, js = B.verify_bundle(bundle)["parity"]["report"]   # new report files, hashed into the manifest
    assert md.startswith("parity/torch.") and json.loads((bundle / js).read_text()) == json.loads(out.read_text())
    assert not (bundle / "parity.json").exists()       # the export's report, no longer the manifest's
    res = CliRunner().invoke(app, ["parity", str(bundle), "--threads", "1", "--fp32-max-abs-rms", "1e-9",
                                   "--scenario", "complete"])
    assert res.exit_code == 1 and "parity gate FAILED" in res.output and "(fp32): max abs error" in res.output
    report = B.verify_bundle(bundle)["parity"]["report"]
    assert json.loads((bundle / report[1]).read_text())["passed"] is False and not (bundle / js).exists()
    with pytest.raises(AvqaError, match="failed its parity gate"):
        Pipeline.from_bundle(bundle)
    res = CliRunner().invoke(app, ["parity", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "not found" in res.output and "Traceback" not in res.output


def test_cli_export_errors_are_clean(tmp_path, tiny_run):
    r = CliRunner()
    res = r.invoke(app, ["export", str(tmp_path / "missing-run"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "run directory" in res.output and "not found" in res.output
    assert "Traceback" not in res.output
    (tmp_path / "file").write_text("x")
    res = r.invoke(app, ["export", str(tiny_run[0]), "--out", str(tmp_path / "file")])
    assert res.exit_code == 1 and "is a file" in res.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    res = r.invoke(app, ["export", str(tiny_run[0]), "--out", str(tmp_path / "full")])
    assert res.exit_code == 1 and "--overwrite" in res.output
    res = r.invoke(app, ["export", "--from-bundle", str(tmp_path / "full")])
    assert res.exit_code == 1 and "add --trt" in res.output
    res = r.invoke(app, ["export", str(tiny_run[0])])
    assert res.exit_code == 1 and "--out" in res.output


def test_failed_export_leaves_no_bundle(tiny_run, tmp_path, monkeypatch):
    from avqa_edge.export import bundle_export

    def boom(*a, **k):
        raise AvqaError("audio export failed (test)")
    monkeypatch.setitem(OX.EXPORT_FUNCTIONS, "audio", boom)
    with pytest.raises(AvqaError, match="test"):
        bundle_export.export_bundle(tiny_run[0], tmp_path / "b", log=lambda *_: None, exporter="torchscript")
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


def test_cli_trt_writes_the_bundle_then_fails_clearly(exported, tiny_run, tmp_path, monkeypatch):
    """--trt: the ONNX bundle first, then the engine build; where TensorRT / a GPU is missing,
    a non-zero exit with the how-to message. (The export itself is stubbed with a copy of the
    test run's bundle to keep the test fast.)"""
    from avqa_edge.export import bundle_export
    calls = []

    def fake_export(run_dir, out, **kw):
        calls.append("export")
        shutil.copytree(exported[0], out)
        res = bundle_export.ExportResult(bundle=Path(out), artifacts=[], manifest=B.read_manifest(out))
        return res
    monkeypatch.setattr(bundle_export, "export_bundle", fake_export)
    out = tmp_path / "b"
    res = CliRunner().invoke(app, ["export", str(tiny_run[0]), "--out", str(out), "--trt"])
    assert calls == ["export"] and (out / "manifest.json").is_file()
    try:
        import tensorrt  # noqa: F401
        has_trt = True
    except ImportError:
        has_trt = False
    if not has_trt:
        assert res.exit_code == 1, res.output
        assert "TensorRT" in res.output and "--from-bundle" in res.output and "Traceback" not in res.output


def test_cli_from_bundle_imports_no_torch(exported):
    """`avqa-edge export --trt --from-bundle` runs without torch (it fails here for want of
    TensorRT / a GPU, with the how-to message, not an ImportError of torch)."""
    bundle, _ = exported
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from avqa_edge.cli import app\n"
        "try:\n"
        f"    app(['export', '--trt', '--from-bundle', {str(bundle)!r}])\n"
        "except SystemExit as e:\n"
        "    bad = [m for m in sys.modules if m.startswith('avqa_edge.toolkit')]\n"
        "    assert not bad, bad\n"
        "    sys.exit(e.code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert "halted" not in text and "Traceback" not in text, text     # no `import torch` was attempted
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert out.returncode == 1 and "TensorRT" in text, text


def test_layernorm_free_graphs_for_tensorrt_85(exported):
    """Graphs with LayerNormalization also come spelled out (TensorRT 8.5 cannot parse the op),
    and answer the same as the originals."""
    from avqa_edge.export import onnx_compat as OC
    bundle, _ = exported
    manifest = B.read_manifest(bundle)
    rewritten = [c for c, rec in manifest["components"].items() if "fp32_nolayernorm" in rec["files"]]
    assert {"visual", "audio", "question", "backbone", "video_expert"} <= set(rewritten)
    rng = np.random.default_rng(0)
    for comp in rewritten:
        files = manifest["components"][comp]["files"]
        original, spelled = onnx.load(str(bundle / files["fp32"])), onnx.load(str(bundle / files["fp32_nolayernorm"]))
        assert OC.op_counts(original).get("LayerNormalization") and not OC.op_counts(spelled).get("LayerNormalization")
        feed = {}
        for i in manifest["components"][comp]["inputs"]:
            if i["dtype"] == "float32":
                feed[i["name"]] = rng.standard_normal(i["shape"]).astype(np.float32)
            elif i["dtype"] == "uint8":
                feed[i["name"]] = rng.integers(0, 256, i["shape"], dtype=np.uint8)
            else:
                feed[i["name"]] = rng.integers(1, 5, i["shape"]).astype(np.int64)
        outs = []
        for path in (files["fp32"], files["fp32_nolayernorm"]):
            with OrtRunner(bundle / path, threads=1) as r:
                outs.append(r.infer(feed))
        for name in outs[0]:
            np.testing.assert_allclose(outs[1][name], outs[0][name], atol=1e-4, rtol=1e-4)
