"""TensorRT 8.5 compatibility (export/onnx_compat.py): LayerNormalization spelled out in plain
opset-17 ops, checked on the tiny run's exported graphs and on small synthetic graphs; the
list of ops a TensorRT version cannot parse."""
import ast
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="needs the export extra: pip install -e '.[export]'")
ort = pytest.importorskip("onnxruntime", reason="needs the export extra: pip install -e '.[export]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from avqa_edge.errors import AvqaError  # noqa: E402
from avqa_edge.export import onnx_compat as X  # noqa: E402

LN_COMPONENTS = ("visual", "audio", "question", "backbone")     # the graphs holding LayerNormalization


@pytest.fixture(scope="module")
def graphs(tiny_run, tmp_path_factory):
    """{(component, precision): ModelProto} exported from the tiny run as the bundle does
    (export/onnx_export.py, exporter auto), and real feeds for each component."""
    import torch

    from avqa_edge.calibration import calibset
    from avqa_edge.export import components as C
    from avqa_edge.export import onnx_export as OX
    from avqa_edge.runtime import signal as sig
    from avqa_edge.toolkit.checkpoint import load_model
    torch.set_num_threads(1)
    model, _ = load_model(tiny_run[0])
    out = tmp_path_factory.mktemp("compat")
    specs = C.io_specs(model)
    protos = {}
    for comp in LN_COMPONENTS:
        OX.EXPORT_FUNCTIONS[comp](model, out / f"{comp}.onnx")
        OX.export_fp16(out / f"{comp}.onnx", out / f"{comp}.fp16.onnx", comp, specs[comp], model.cfg.hash())
        protos[comp, "fp32"] = onnx.load(str(out / f"{comp}.onnx"))
        protos[comp, "fp16"] = onnx.load(str(out / f"{comp}.fp16.onnx"))
    calib = calibset.build_from_run(tiny_run[0], n_clips=3)
    feeds = {c: [] for c in LN_COMPONENTS}
    with torch.no_grad():
        for k in range(calib.n_clips):
            frames, tokens = calib.frames[k:k + 1], calib.tokens[k:k + 1]
            audio = sig.pcm16_to_float(calib.audio[k:k + 1]).astype(np.float32)
            a = model.audio_encoder(torch.from_numpy(audio)).numpy()
            v = model.visual_encoder(torch.from_numpy(frames)).numpy()
            q = model.question_encoder(torch.from_numpy(tokens)).numpy()
            feeds["visual"].append({"frames": frames})
            feeds["audio"].append({"audio": audio})
            feeds["question"].append({"tokens": tokens})
            feeds["backbone"].append({"a": a, "v": v, "q": q})
    return protos, feeds


def _io(m):
    inits = {t.name for t in m.graph.initializer}
    return ([(v.name, v.type.SerializeToString()) for v in m.graph.input if v.name not in inits],
            [(v.name, v.type.SerializeToString()) for v in m.graph.output])


def _run(m, feed, optimize=False):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("comp", LN_COMPONENTS)
def test_decomposed_fp32_graphs_equal_the_originals(graphs, comp):
    protos, feeds = graphs
    m = protos[comp, "fp32"]
    assert X.op_counts(m).get("LayerNormalization", 0) >= 1
    assert [i.op for i in X.trt_parse_issues(m, "8.5.2")] == ["LayerNormalization"]
    d = X.decompose_layernorm(m)
    onnx.checker.check_model(d, full_check=True)
    assert "LayerNormalization" not in X.op_counts(d)
    assert X.trt_parse_issues(d, "8.5.2") == []
    assert X.default_opset(d) == 17 and _io(d) == _io(m)                # same opset, I/O names and types
    assert X.op_counts(m)["LayerNormalization"] == X.op_counts(d)["Pow"] - X.op_counts(m).get("Pow", 0)
    assert all(not n.input[1:] for n in d.graph.node if n.op_type == "ReduceMean")   # axes as attribute (opset 17)
    old_names = {n.name for n in m.graph.node}
    new_nodes = [n for n in d.graph.node if n.name not in old_names]
    assert new_nodes and all(X.DECOMPOSED_TAG in n.name for n in new_nodes)        # pinnable by name in TensorRT
    # ORT optimizations off: the rewrite's own arithmetic; on: what ORT serves (it fuses the pattern back)
    for optimize in (False, True):
        diffs = X.max_abs_diff(m, d, feeds[comp], optimize=optimize)
        assert max(diffs.values()) < 1e-5, (optimize, diffs)
    assert X.op_counts(m).get("LayerNormalization")                                   # the input is not modified


@pytest.mark.parametrize("comp", LN_COMPONENTS)
def test_decomposed_fp16_graphs_equal_the_originals(graphs, comp):
    """The FP16 variants keep LayerNormalization in FP32; decomposed, it stays FP32. Outputs
    agree to within one float16 rounding step of the FP16 ops downstream. (ORT's graph
    optimizer fails on the decomposed FP16 graphs: its LayerNormFusion folds the Cast to
    FP32 in front of the pattern into the fused node, giving it FP16 input with FP32 scale;
    the TensorRT 8.5 route builds from the FP32 graph, so only optimizations-off is run.)"""
    protos, feeds = graphs
    m = protos[comp, "fp16"]
    d = X.decompose_layernorm(m)
    onnx.checker.check_model(d, full_check=True)
    assert "LayerNormalization" not in X.op_counts(d) and _io(d) == _io(m)
    types = X._value_types(d)
    for n in d.graph.node:
        if n.op_type in ("ReduceMean", "Pow", "Sqrt"):
            assert types[n.output[0]][0] == TensorProto.FLOAT, n.name
    for feed in feeds[comp]:
        for want, got in zip(_run(m, feed), _run(d, feed)):
            assert got.dtype == want.dtype == np.float32
            # one float16 step (2^-10) relative to the output's scale: near-zero outputs get
            # the same absolute slack as the largest ones (an intermediate rounding flips both)
            step = 2.0 ** -10 * float(np.abs(want).max())
            assert np.allclose(got, want, rtol=0, atol=step), (float(np.abs(got - want).max()), step)


def _ln_model(shape, axis=-1, bias=True, eps=1e-5, opset=17, dtype=TensorProto.FLOAT, stats=False, stash=None):
    rng = np.random.default_rng(0)
    rank = len(shape)
    norm_shape = shape[axis:]
    np_t = helper.tensor_dtype_to_np_dtype(dtype)
    inits = [numpy_helper.from_array(rng.standard_normal(norm_shape).astype(np_t), "scale")]
    ins = ["x", "scale"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(norm_shape).astype(np_t), "bias"))
        ins.append("bias")
    outs = ["y", "mean", "inv_std"] if stats else ["y"]
    attrs = {"axis": axis, "epsilon": eps}
    if stash is not None:
        attrs["stash_type"] = stash
    node = helper.make_node("LayerNormalization", ins, outs, name="ln", **attrs)
    ax = axis % rank
    stat_shape = list(shape[:ax]) + [1] * (rank - ax)
    outputs = [helper.make_tensor_value_info("y", dtype, shape)]
    if stats:
        outputs += [helper.make_tensor_value_info("mean", TensorProto.FLOAT, stat_shape),
                    helper.make_tensor_value_info("inv_std", TensorProto.FLOAT, stat_shape)]
    g = helper.make_graph([node], "ln", [helper.make_tensor_value_info("x", dtype, shape)], outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("kw", [
    dict(shape=[2, 5, 8]),                                            # the common case: last axis, bias
    dict(shape=[2, 5, 8], axis=1, bias=False, eps=1e-3),              # non-negative axis (rank from the graph), no bias
    dict(shape=[3, 4, 6, 2], axis=-2, stats=True),                    # two axes, Mean / InvStdDev outputs used
    dict(shape=[2, 5, 8], opset=18),                                  # opset 18: ReduceMean takes axes as an input
    dict(shape=[2, 7, 16], dtype=TensorProto.FLOAT16, stash=1),       # float16 input, float32 statistics
])
def test_decompose_synthetic_layernorms(kw):
    m = _ln_model(**kw)
    onnx.checker.check_model(m, full_check=True)
    d = X.decompose_layernorm(m)
    onnx.checker.check_model(d, full_check=True)
    assert "LayerNormalization" not in X.op_counts(d) and _io(d) == _io(m)
    opset18 = kw.get("opset") == 18
    assert all(bool(n.input[1:]) == opset18 for n in d.graph.node if n.op_type == "ReduceMean")
    shape, fp16 = kw["shape"], kw.get("dtype") == TensorProto.FLOAT16
    x = (np.random.default_rng(1).standard_normal(shape) * 3 + 1).astype(np.float16 if fp16 else np.float32)
    want, got = _run(m, {"x": x}), _run(d, {"x": x})
    # numpy reference (float64)
    axis = kw.get("axis", -1) % len(shape)
    axes = tuple(range(axis, len(shape)))
    x64 = x.astype(np.float64)
    mu = x64.mean(axes, keepdims=True)
    inv = 1 / np.sqrt(((x64 - mu) ** 2).mean(axes, keepdims=True) + kw.get("eps", 1e-5))
    scale = numpy_helper.to_array(m.graph.initializer[0]).astype(np.float64)
    ref = (x64 - mu) * inv * scale + (numpy_helper.to_array(m.graph.initializer[1]) if kw.get("bias", True) else 0)
    tol = 2e-2 if fp16 else 1e-5
    assert np.abs(got[0].astype(np.float64) - ref).max() < tol
    for w, g in zip(want, got):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert np.abs(g.astype(np.float64) - w.astype(np.float64)).max() < tol
    if kw.get("stats"):
        assert np.allclose(got[1], mu, atol=1e-5) and np.allclose(got[2], inv, rtol=1e-4)


def test_no_layernorm_is_a_copy_and_unknown_rank_is_refused():
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    d = X.decompose_layernorm(m)
    assert d == m and d is not m
    node = helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=1)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                        helper.make_tensor_value_info("s", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(AvqaError, match="unknown rank"):
        X.decompose_layernorm(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_trt_parse_issues_per_version():
    nodes = [helper.make_node("LayerNormalization", ["x", "s"], ["y"]), helper.make_node("DFT", ["y"], ["z"]),
             helper.make_node("STFT", ["y", "f"], ["w"]), helper.make_node("MelWeightMatrix", ["a", "b", "c", "d", "e"], ["m"]),
             helper.make_node("Relu", ["x"], ["r"])]
    g = helper.make_graph(nodes, "g", [], [])
    m17 = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ops = lambda m, v: [i.op for i in X.trt_parse_issues(m, v)]             # noqa: E731
    assert ops(m17, "8.5.2.2") == ["LayerNormalization", "STFT", "DFT", "MelWeightMatrix"]
    for v in ("8.6.2", (10, 3), "11.4"):
        assert ops(m17, v) == ["STFT", "DFT", "MelWeightMatrix"]
    m18 = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    assert ops(m18, "8.6") == ["STFT", "DFT", "MelWeightMatrix", "opset"] and "opset" not in ops(m18, "10.0")
    issues = X.trt_parse_issues(m17, "8.5")
    assert issues[0].nodes == 1 and "8.6" in issues[0].reason and "decompose_layernorm" in str(issues[0])
    with pytest.raises(AvqaError, match=r"TensorRT 8\.5 cannot parse the graph:\n  - LayerNormalization"):
        X.check_trt_parsable(m17, "8.5")
    with pytest.raises(AvqaError, match="not a TensorRT version"):
        X.trt_parse_issues(m17, "latest")
    clean = helper.make_model(helper.make_graph([nodes[-1]], "g", [], []), opset_imports=[helper.make_opsetid("", 17)])
    X.check_trt_parsable(clean, "8.5")


def test_onnx_compat_is_python38_and_torch_free():
    src = (Path(__file__).resolve().parents[1] / "export" / "onnx_compat.py").read_text()
    ast.parse(src, feature_version=(3, 8))
    imported = set()
    for n in ast.walk(ast.parse(src)):
        if isinstance(n, ast.Import):
            imported.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            imported.add(n.module or "")
    assert not [m for m in imported if m.split(".")[0] == "torch" or m.startswith(("avqa_edge.toolkit", "."))]
