"""TensorRT engine build (export/trt_build.py) and runner (runtime/trt.py).

Most tests run everywhere against the recording stand-ins in tests/fake_tensorrt.py: which
API calls each TensorRT version gets, the fingerprint check, the error messages, the runner's
buffer handling. The tests marked `tensorrt` / `gpu` at the end build and run a real engine
from a tiny ONNX graph and skip where TensorRT or an NVIDIA GPU is missing.
"""
import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avqa_edge.errors import AvqaError
from avqa_edge.export import trt_build
from avqa_edge.runtime import bundle as bundle_io
from avqa_edge.runtime import trt as rt
from avqa_edge.runtime.runners import Runner

_spec = importlib.util.spec_from_file_location("avqa_fake_tensorrt", Path(__file__).with_name("fake_tensorrt.py"))
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)

REPO = Path(__file__).resolve().parents[1]
FP = {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt": "10.3.0", "cuda": "12.6"}


# ----------------------------------------------------------------------------- helpers

def make_bundle(root: Path, components=("visual", "backbone"), fp16=True, nolayernorm=False) -> Path:
    """A bundle (real manifest.json via runtime/bundle.py) with placeholder ONNX files.

    The fake parser ignores the ONNX content; the manifest is hashed and verified for real.
    """
    bundle = root / "bundle"
    (bundle / "onnx").mkdir(parents=True)
    comps = {}
    for name in components:
        files = {"fp32": f"onnx/{name}.onnx"}
        if fp16:
            files["fp16"] = f"onnx/{name}.fp16.onnx"
        if nolayernorm:
            files["fp32_nolayernorm"] = f"onnx/{name}.nolayernorm.onnx"
        for rel in files.values():
            (bundle / rel).write_bytes(b"onnx " + rel.encode())
        comps[name] = {"files": files}
    bundle_io.write_manifest(bundle, {"components": comps, "engines": {}, "fingerprint": {}})
    return bundle


def device(monkeypatch, version="10.3.0", gpu=None, **cfg):
    return fake.FakeDevice(fake.FakeConfig(version=version, **cfg), gpu).install(monkeypatch)


def build(bundle, **kw):
    lines = []
    result = trt_build.build_bundle_engines(bundle, log=lines.append, **kw)
    return result, lines


# ----------------------------------------------------------------------------- versions and routes

@pytest.mark.parametrize("text, expected", [
    ("8.5.2.2", (8, 5, 2, 2)), ("8.6.2", (8, 6, 2)), ("10.3.0", (10, 3, 0)), ("11.4.0.5", (11, 4, 0, 5)),
    ("10.16.0.post1", (10, 16, 0)),
])
def test_trt_version(text, expected):
    assert trt_build.trt_version(type("M", (), {"__version__": text})) == expected


def test_trt_version_unreadable():
    with pytest.raises(AvqaError, match="Cannot read the TensorRT version"):
        trt_build.trt_version(type("M", (), {"__version__": "dev"}))


@pytest.mark.parametrize("version, route", [
    ((8, 5, 2, 2), "fp16_flag"), ((8, 6, 2), "fp16_flag"), ((9, 3, 0), "fp16_flag"),
    ((10, 0, 1), "strongly_typed"), ((10, 3, 0), "strongly_typed"), ((10, 16, 0), "strongly_typed"),
    ((11, 4, 0), "strongly_typed"), ((12, 0, 0), "strongly_typed"),
])
def test_build_route(version, route):
    assert trt_build.build_route(version) == route


@pytest.mark.parametrize("version", [(8, 4, 3), (8, 2, 1), (7, 1, 3)])
def test_build_route_refuses_old_tensorrt(version):
    with pytest.raises(AvqaError) as err:
        trt_build.build_route(version)
    text = str(err.value)
    assert ".".join(map(str, version)) in text and "8.5 or newer" in text and "JetPack 5.1" in text


def test_build_with_old_tensorrt_is_refused_before_building(tmp_path, monkeypatch):
    dev = device(monkeypatch, "8.4.3")
    with pytest.raises(AvqaError, match="TensorRT 8.4.3 is too old"):
        build(make_bundle(tmp_path))
    assert "Builder" not in dev.calls.names()


# ----------------------------------------------------------------------------- build routes per version

def test_build_tensorrt_8_5_uses_fp16_flag_on_fp32_graph(tmp_path, monkeypatch):
    dev = device(monkeypatch, "8.5.2.2")
    bundle = make_bundle(tmp_path)
    result, lines = build(bundle)
    calls, trt = dev.calls, dev.trt

    # explicit-batch network from the FP32 graph, FP16 flag + precision constraints
    assert calls.args("builder.create_network") == [(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH),)] * 2
    assert calls.args("parser.parse_from_file") == [(str(bundle / "onnx/visual.onnx"),),
                                                    (str(bundle / "onnx/backbone.onnx"),)]
    assert calls.args("config.set_flag") == [("FP16",), ("OBEY_PRECISION_CONSTRAINTS",)] * 2
    # sensitive float layers pinned to FP32 (precision and output type); 8.5 has no NORMALIZATION layer
    pinned = sorted({name for name, _ in calls.args("layer.precision")})
    assert pinned == ["exp", "ln_mean", "ln_pow", "ln_sqrt", "softmax"]
    assert all(value == trt.float32 for _, value in calls.args("layer.precision"))
    assert sorted({a[0] for a in calls.args("layer.set_output_type")}) == pinned
    # set before the build
    names = calls.names()
    assert names.index("config.set_flag") < names.index("builder.build_serialized_network")

    engines = result["engines"]
    assert set(engines) == {"visual", "backbone"}
    for name, rec in engines.items():
        assert set(rec) == {"file", "bytes", "seconds", "route", "precision", "onnx"}
        assert rec["file"] == f"engines/{name}.engine" and rec["route"] == "fp16_flag" and rec["precision"] == "fp16"
        assert (bundle / rec["file"]).read_bytes() == b"fake-engine 8.5.2.2"
        assert rec["bytes"] == len(b"fake-engine 8.5.2.2")
    assert result["fingerprint"] == {"gpu_name": "Orin", "compute_capability": "8.7",
                                     "tensorrt": "8.5.2.2", "cuda": "12.6"}
    assert any("visual.engine" in line and "5 layers pinned to FP32" in line for line in lines)


@pytest.mark.parametrize("version, graph", [("8.5.2.2", "visual.nolayernorm.onnx"), ("8.6.2", "visual.onnx"),
                                            ("10.3.0", "visual.fp16.onnx")])
def test_tensorrt_8_5_takes_the_layernorm_free_graph(tmp_path, monkeypatch, version, graph):
    dev = device(monkeypatch, version)
    bundle = make_bundle(tmp_path, components=("visual",), nolayernorm=True)
    build(bundle)
    assert dev.calls.args("parser.parse_from_file") == [(str(bundle / "onnx" / graph),)]


def test_build_tensorrt_8_6_pins_normalization_layer(tmp_path, monkeypatch):
    dev = device(monkeypatch, "8.6.2")
    build(make_bundle(tmp_path, components=("backbone",)))
    assert "layernorm" in {name for name, _ in dev.calls.args("layer.precision")}


def test_build_tensorrt_8_5_fp32_graph_needed_even_if_fp16_missing(tmp_path, monkeypatch):
    device(monkeypatch, "8.5.2.2")
    result, _ = build(make_bundle(tmp_path, fp16=False))
    assert {r["route"] for r in result["engines"].values()} == {"fp16_flag"}


@pytest.mark.parametrize("version", ["10.3.0", "10.16.0"])
def test_build_tensorrt_10_strongly_typed_from_fp16_graph(tmp_path, monkeypatch, version):
    dev = device(monkeypatch, version)
    bundle = make_bundle(tmp_path)
    result, _ = build(bundle)
    calls, flags = dev.calls, dev.trt.NetworkDefinitionCreationFlag

    # STRONGLY_TYPED only: EXPLICIT_BATCH is deprecated and ignored in 10.x, so not set
    assert calls.args("builder.create_network") == [(1 << int(flags.STRONGLY_TYPED),)] * 2
    assert calls.args("parser.parse_from_file") == [(str(bundle / "onnx/visual.fp16.onnx"),),
                                                    (str(bundle / "onnx/backbone.fp16.onnx"),)]
    # no precision flags or per-layer precision: the types are in the graph
    assert calls.args("config.set_flag") == []
    assert calls.args("layer.precision") == [] and calls.args("layer.set_output_type") == []
    assert {r["route"] for r in result["engines"].values()} == {"strongly_typed"}
    assert result["fingerprint"]["tensorrt"] == version


def test_build_tensorrt_11_strongly_typed_without_fp16_flag(tmp_path, monkeypatch):
    dev = device(monkeypatch, "11.4.0")
    assert not hasattr(dev.trt.BuilderFlag, "FP16")   # removed in 11: touching it would raise
    bundle = make_bundle(tmp_path)
    result, _ = build(bundle)
    calls = dev.calls
    assert calls.args("builder.create_network") == [
        (1 << int(dev.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED),)] * 2
    assert calls.args("parser.parse_from_file")[0] == (str(bundle / "onnx/visual.fp16.onnx"),)
    assert "config.set_flag" not in calls.names()
    assert "layer.precision" not in calls.names()
    assert {r["route"] for r in result["engines"].values()} == {"strongly_typed"}


def test_build_tensorrt_11_without_strongly_typed_flag_passes_zero(tmp_path, monkeypatch):
    """11.x networks are always strongly typed; should the flag go away, no flag is passed."""
    dev = device(monkeypatch, "11.4.0", strongly_typed_flag=False)
    build(make_bundle(tmp_path, components=("visual",)))
    assert dev.calls.args("builder.create_network") == [(0,)]


def test_strongly_typed_route_needs_fp16_graph(tmp_path, monkeypatch):
    device(monkeypatch, "10.3.0")
    with pytest.raises(AvqaError, match="no fp16 ONNX graph") as err:
        build(make_bundle(tmp_path, fp16=False))
    assert "Re-export" in str(err.value)


def test_fp16_flag_on_strongly_typed_network_would_fail():
    """The fake reproduces TensorRT 10's refusal, so the route tests above are meaningful."""
    dev = fake.FakeDevice(fake.FakeConfig(version="10.3.0"))
    trt = dev.trt
    builder = trt.Builder(None)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(network, config) is None


# ----------------------------------------------------------------------------- config: workspace, profile, timing cache

def test_workspace_limit(tmp_path, monkeypatch):
    dev = device(monkeypatch, "10.3.0")
    build(make_bundle(tmp_path, components=("visual",)), workspace_mib=512)
    assert dev.calls.args("config.set_memory_pool_limit") == [("WORKSPACE", 512 * 2**20)]


def test_workspace_limit_must_be_positive(tmp_path):
    with pytest.raises(AvqaError, match="positive"):
        trt_build.build_bundle_engines(make_bundle(tmp_path), workspace_mib=0)


def test_dynamic_input_gets_a_batch_1_profile(tmp_path, monkeypatch):
    dev = device(monkeypatch, "10.3.0", network_inputs=[("x", (-1, 4)), ("q", (1, 8))])
    build(make_bundle(tmp_path, components=("visual",)))
    assert dev.calls.args("profile.set_shape") == [("x", (1, 4), (1, 4), (1, 4))]
    assert dev.calls.args("config.add_optimization_profile") == [()]


def test_static_inputs_need_no_profile(tmp_path, monkeypatch):
    dev = device(monkeypatch, "10.3.0")
    build(make_bundle(tmp_path, components=("visual",)))
    assert "config.add_optimization_profile" not in dev.calls.names()


def test_timing_cache_created_saved_and_reloaded(tmp_path, monkeypatch):
    dev = device(monkeypatch, "10.3.0")
    bundle = make_bundle(tmp_path)
    cache = tmp_path / "timing.cache"
    build(bundle, timing_cache=cache)
    calls = dev.calls
    # first component starts from an empty cache; the second loads what the first saved
    created = [args[0] for args in calls.args("config.create_timing_cache")]
    assert created == [b"", b"|timings"]
    assert [args[1] for args in calls.args("config.set_timing_cache")] == [False, False]   # ignore_mismatch
    assert cache.read_bytes() == b"|timings|timings"
    names = calls.names()
    assert names.index("config.set_timing_cache") < names.index("builder.build_serialized_network")

    dev.calls.clear()
    build(bundle, timing_cache=cache)
    assert dev.calls.args("config.create_timing_cache")[0] == (b"|timings|timings",)


def test_timing_cache_from_another_device_is_replaced(tmp_path, monkeypatch):
    dev = device(monkeypatch, "8.6.2")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"foreign timings")
    _, lines = build(make_bundle(tmp_path, components=("visual",)), timing_cache=cache)
    assert [a[0] for a in dev.calls.args("config.create_timing_cache")] == [b"foreign timings", b""]
    assert any("does not match this device" in line for line in lines)
    assert cache.read_bytes() == b"|timings"


def test_no_timing_cache_by_default(tmp_path, monkeypatch):
    dev = device(monkeypatch, "10.3.0")
    build(make_bundle(tmp_path, components=("visual",)))
    assert "config.create_timing_cache" not in dev.calls.names()


# ----------------------------------------------------------------------------- failures

def test_parser_errors_are_all_in_the_message(tmp_path, monkeypatch):
    errors = ["In node 12 (importSTFT): UNSUPPORTED_NODE: No importer registered for op: STFT",
              "In node 40 (parseGraph): INVALID_NODE: Invalid Node - /backbone/Gather_3"]
    device(monkeypatch, "8.5.2.2", parse_errors=errors)
    bundle = make_bundle(tmp_path)
    with pytest.raises(AvqaError) as err:
        build(bundle)
    text = str(err.value)
    assert "could not parse visual.onnx" in text and "TensorRT 8.5.2.2" in text
    assert all(e in text for e in errors)
    assert "opset 17" in text and "LayerNormalization" in text   # the 8.x / 8.5 hints
    assert not list(bundle.rglob("*.engine"))


def test_build_returning_none_is_an_error(tmp_path, monkeypatch):
    device(monkeypatch, "10.3.0", build_fails=True)
    bundle = make_bundle(tmp_path)
    with pytest.raises(AvqaError) as err:
        build(bundle, workspace_mib=64)
    text = str(err.value)
    assert "failed to build visual.engine from visual.fp16.onnx" in text and "64 MiB" in text
    assert not list(bundle.rglob("*.engine*"))
    assert bundle_io.read_manifest(bundle)["engines"] == {}


def test_missing_manifest_or_damaged_bundle_fails_before_building(tmp_path, monkeypatch):
    dev = device(monkeypatch, "10.3.0")
    with pytest.raises(AvqaError, match="no manifest.json"):
        build(tmp_path)
    bundle = make_bundle(tmp_path)
    (bundle / "onnx/backbone.fp16.onnx").unlink()
    (bundle / "onnx/visual.onnx").write_bytes(b"changed")
    with pytest.raises(AvqaError) as err:
        build(bundle)
    assert "modified (SHA-256 differs from the manifest): onnx/visual.onnx" in str(err.value)
    assert "missing: onnx/backbone.fp16.onnx" in str(err.value)
    assert "Builder" not in dev.calls.names()


# ----------------------------------------------------------------------------- no TensorRT / no GPU

def test_no_tensorrt_says_how_to_build_on_the_device(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)   # any `import tensorrt` now fails
    bundle = make_bundle(tmp_path)
    with pytest.raises(AvqaError) as err:
        trt_build.build_bundle_engines(bundle, log=lambda _: None)
    text = str(err.value)
    assert "TensorRT is not installed" in text
    assert "avqa-edge export --trt --from-bundle BUNDLE" in text
    assert "pip install 'avqa-edge[tensorrt]'" in text and "python3-libnvinfer" in text
    assert "usable with onnxruntime" in text and str(bundle) in text
    assert not (bundle / "engines").exists() and bundle_io.read_manifest(bundle)["engines"] == {}


def test_no_gpu_says_how_to_build_on_the_device(tmp_path, monkeypatch):
    device(monkeypatch, "10.3.0", gpu=fake.GpuSpec(count=0))
    with pytest.raises(AvqaError) as err:
        build(make_bundle(tmp_path))
    text = str(err.value)
    assert "no NVIDIA GPU is visible" in text and "cuInit failed" in text
    assert "avqa-edge export --trt --from-bundle BUNDLE" in text


def test_engines_recorded_in_manifest(tmp_path, monkeypatch):
    device(monkeypatch, "10.3.0")
    bundle = make_bundle(tmp_path)
    result, _ = build(bundle)
    opened = bundle_io.Bundle.open(bundle, verify=True)   # engines hashed in the manifest
    assert opened.manifest["engines"] == result["engines"]
    assert opened.manifest["fingerprint"] == result["fingerprint"] == dict(FP)
    assert opened.engine_path("visual") == bundle / "engines" / "visual.engine"
    assert "engines/visual.engine" in opened.manifest["files"]


def test_rebuild_replaces_recorded_engines(tmp_path, monkeypatch):
    """A second build (e.g. after a TensorRT upgrade) must not trip over the old engines' hashes."""
    device(monkeypatch, "10.3.0")
    bundle = make_bundle(tmp_path)
    build(bundle)
    dev = device(monkeypatch, "10.16.0")
    result, _ = build(bundle)
    assert "builder.build_serialized_network" in dev.calls.names()
    opened = bundle_io.Bundle.open(bundle, verify=True)
    assert opened.manifest["fingerprint"]["tensorrt"] == "10.16.0"
    assert opened.engine_path("backbone").read_bytes() == b"fake-engine 10.16.0"
    assert opened.manifest["engines"] == result["engines"]


# ----------------------------------------------------------------------------- fingerprint

def test_device_fingerprint_via_pycuda(monkeypatch):
    device(monkeypatch, "10.3.0", gpu=fake.GpuSpec(name="NVIDIA GeForce RTX 4090", cc=(8, 9), cuda=12040))
    assert rt.device_fingerprint() == {"gpu_name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9",
                                       "tensorrt": "10.3.0", "cuda": "12.4"}


def test_device_fingerprint_via_cuda_python(monkeypatch):
    dev = device(monkeypatch, "11.4.0")
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    pkg, bindings, drv = fake.make_cuda_python(fake.GpuSpec(name="NVIDIA H100", cc=(9, 0), cuda=13000))
    for name, module in (("cuda", pkg), ("cuda.bindings", bindings), ("cuda.bindings.driver", drv)):
        monkeypatch.setitem(sys.modules, name, module)
    assert rt.device_fingerprint() == {"gpu_name": "NVIDIA H100", "compute_capability": "9.0",
                                       "tensorrt": "11.4.0", "cuda": "13.0"}
    assert dev.trt.__version__ == "11.4.0"


def test_device_fingerprint_without_gpu(monkeypatch):
    for name in ("pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.driver"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(AvqaError, match="No NVIDIA GPU is visible .*pycuda is not installed; cuda-python is not installed"):
        rt.device_fingerprint()


def test_check_fingerprint_names_what_differs():
    current = dict(FP, compute_capability="8.6", tensorrt="8.6.2")
    with pytest.raises(AvqaError) as err:
        trt_build.check_fingerprint(FP, current, bundle="/data/bundle")
    text = str(err.value)
    assert "compute_capability: engine built with '8.7', this device has '8.6'" in text
    assert "tensorrt: engine built with '10.3.0', this device has '8.6.2'" in text
    assert "gpu_name" not in text and "cuda:" not in text
    assert "Rebuild the engines on this device: avqa-edge export --trt --from-bundle BUNDLE" in text
    assert "/data/bundle" in text


def test_check_fingerprint_accepts_a_match_and_skips_unknowns():
    trt_build.check_fingerprint(FP, dict(FP))
    trt_build.check_fingerprint(FP, dict(FP, cuda=None))            # not measurable here
    trt_build.check_fingerprint(dict(FP, gpu_name=None), dict(FP, gpu_name="Thor"))


# ----------------------------------------------------------------------------- runner

def _engine_file(root: Path, version: str) -> Path:
    """BUNDLE/engines/visual.engine holding what the fake TensorRT of `version` deserializes."""
    engine = root / "bundle" / "engines" / "visual.engine"
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_bytes(b"fake-engine " + version.encode())
    return engine


def test_runner_is_a_runner():
    assert issubclass(rt.TrtRunner, Runner)


@pytest.mark.parametrize("version", ["8.5.2.2", "10.3.0", "11.4.0"])
def test_runner_round_trip(tmp_path, monkeypatch, version):
    dev = device(monkeypatch, version)
    engine = _engine_file(tmp_path, version)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    tokens = np.array([[3, 4, 5]], dtype=np.int32)

    runner = rt.TrtRunner(engine, fingerprint=dict(FP, tensorrt=version))
    assert dev.calls.args("runtime.deserialize_cuda_engine") == []   # nothing loaded before activation
    with runner:
        assert runner.input_spec() == {"x": ((1, 4), np.dtype(np.float32)), "tokens": ((1, 3), np.dtype(np.int32))}
        assert runner.output_names == ["y", "count"]
        out = runner.infer({"x": x, "tokens": tokens})
        again = runner.infer({"x": x + 1, "tokens": tokens})

    assert set(out) == {"y", "count"}
    assert out["y"].shape == (1, 4) and out["y"].dtype == np.float32
    np.testing.assert_array_equal(out["y"], 2 * x)
    np.testing.assert_array_equal(out["count"], [[12]])
    np.testing.assert_array_equal(again["y"], 2 * (x + 1))

    calls = dev.calls
    assert calls.args("context.execute_async_v3") == [(0xBEEF,), (0xBEEF,)]
    assert calls.args("context.set_input_shape")[:2] == [("x", (1, 4)), ("tokens", (1, 3))]
    names = calls.names()
    assert names.index("context.set_input_shape") < names.index("context.set_tensor_address") \
        < names.index("cuda.memcpy_htod_async") < names.index("context.execute_async_v3") \
        < names.index("cuda.memcpy_dtoh_async") < names.index("stream.synchronize")
    # fixed shapes: four buffers allocated once, all freed on exit, context released
    assert len(calls.args("cuda.mem_alloc")) == 4 and len(calls.args("cuda.free")) == 4
    assert dev.memory.blocks == {}
    assert names.count("ctx.push") == names.count("ctx.pop") and names[-1] == "ctx.detach"


@pytest.mark.parametrize("feed, message", [
    ({"x": np.zeros((1, 4), np.float32)}, r"missing \['tokens'\]"),
    ({"x": np.zeros((1, 4), np.float32), "tokens": np.zeros((1, 3), np.int32), "q": np.zeros(1)},
     r"unknown \['q'\]"),
    ({"x": np.zeros((1, 5), np.float32), "tokens": np.zeros((1, 3), np.int32)}, r"'x' has shape \(1, 5\)"),
    ({"x": np.zeros((4,), np.float32), "tokens": np.zeros((1, 3), np.int32)}, r"'x' has shape \(4,\)"),
    ({"x": np.zeros((1, 4), np.float64), "tokens": np.zeros((1, 3), np.int32)}, "'x' has dtype float64"),
])
def test_runner_rejects_bad_inputs(tmp_path, monkeypatch, feed, message):
    dev = device(monkeypatch, "10.3.0")
    with rt.TrtRunner(_engine_file(tmp_path, "10.3.0")) as runner:
        with pytest.raises(AvqaError, match=message):
            runner.infer(feed)
    assert "context.execute_async_v3" not in dev.calls.names()


def test_runner_refuses_mismatched_fingerprint_before_loading(tmp_path, monkeypatch):
    dev = device(monkeypatch, "10.3.0", gpu=fake.GpuSpec(name="NVIDIA GeForce RTX 3060", cc=(8, 6)))
    engine = _engine_file(tmp_path, "10.3.0")
    runner = rt.TrtRunner(engine, fingerprint=FP)
    with pytest.raises(AvqaError) as err:
        runner.__enter__()
    text = str(err.value)
    assert "gpu_name: engine built with 'Orin', this device has 'NVIDIA GeForce RTX 3060'" in text
    assert "compute_capability: engine built with '8.7', this device has '8.6'" in text
    assert "avqa-edge export --trt --from-bundle BUNDLE" in text and f"(bundle: {tmp_path / 'bundle'})" in text
    assert "runtime.deserialize_cuda_engine" not in dev.calls.names() and not runner.is_active


def test_runner_engine_from_other_tensorrt_is_refused(tmp_path, monkeypatch):
    dev = device(monkeypatch, "10.3.0")
    engine = _engine_file(tmp_path, "8.6.2")   # no fingerprint given: TensorRT itself refuses it
    with pytest.raises(AvqaError, match="could not deserialize .*Rebuild the engines on this device"):
        rt.TrtRunner(engine).__enter__()
    assert dev.calls.names()[-1] == "ctx.detach"   # buffers released on the error path


def test_runner_missing_engine_or_tensorrt(tmp_path, monkeypatch):
    with pytest.raises(AvqaError, match="engine not found.*avqa-edge export --trt --from-bundle BUNDLE"):
        rt.TrtRunner(tmp_path / "nope.engine")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(AvqaError, match="TensorRT is not installed.*onnxruntime"):
        rt.TrtRunner(_engine_file(tmp_path, "10.3.0")).__enter__()


def test_runner_closed_cannot_infer(tmp_path, monkeypatch):
    device(monkeypatch, "10.3.0")
    runner = rt.TrtRunner(_engine_file(tmp_path, "10.3.0")).__enter__()
    runner.close()
    runner.close()   # idempotent
    with pytest.raises(AvqaError, match="not active"):
        runner.infer({"x": np.zeros((1, 4), np.float32), "tokens": np.zeros((1, 3), np.int32)})


# ----------------------------------------------------------------------------- portability

def test_modules_import_without_torch_or_tensorrt():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        "import avqa_edge.export.trt_build, avqa_edge.runtime.trt\n"
        "bad = [m for m, mod in sys.modules.items() if mod is not None and (m.startswith('avqa_edge.toolkit') "
        "or m.split('.')[0] in ('torch', 'tensorrt', 'pycuda', 'onnx', 'onnxruntime'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("rel", ["export/trt_build.py", "runtime/trt.py"])
def test_python_3_8_syntax(rel):
    """JetPack 5 ships Python 3.8: no `X | Y` unions, match statements or other 3.9+ syntax."""
    src = (REPO / rel).read_text()
    tree = ast.parse(src, feature_version=(3, 8))
    # builtin generics in annotations (list[int]) parse under 3.8 but fail when evaluated there
    generic = {"list", "dict", "tuple", "set", "type", "frozenset"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            assert node.value.id not in generic, f"{rel}:{node.lineno}: {node.value.id}[...] needs Python 3.9"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            assert not isinstance(node.left, (ast.Dict, ast.DictComp)), f"{rel}:{node.lineno}: dict | needs 3.9"
    for banned in ("removeprefix(", "removesuffix(", "functools.cache(", "@cache\n", "zip(strict"):
        assert banned not in src, f"{rel} uses {banned!r} (Python 3.9+)"


# ----------------------------------------------------------------------------- real TensorRT (skipped here)

def _real_tensorrt():
    """The installed tensorrt module and a visible GPU, or skip saying which is missing."""
    try:
        import tensorrt
    except ImportError:
        pytest.skip("TensorRT not installed")
    info, reason = rt.gpu_info()
    if info is None:
        pytest.skip(f"no NVIDIA GPU ({reason})")
    return tensorrt


def _layernorm_nodes(src: str, out: str, fused: bool):
    """LayerNorm over the last axis: the opset-17 op, or spelled out for TensorRT 8.5 (no importer)."""
    from onnx import helper
    if fused:
        return [helper.make_node("LayerNormalization", [src, "gamma", "beta"], [out], axis=-1, epsilon=1e-5)]
    return [
        helper.make_node("ReduceMean", [src], ["mu"], axes=[-1], keepdims=1),
        helper.make_node("Sub", [src, "mu"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["norm"]),
        helper.make_node("Mul", ["norm", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], [out]),
    ]


def _tiny_graphs(bundle: Path, rng: np.random.Generator, fused_layernorm: bool = True):
    """FP32 and FP16 ONNX graphs (opset 17): y = Softmax(LayerNorm(x W + b)), z = ReduceMean_T(y).

    x (1, 8, 16) float32 -> y (1, 8, 16), z (1, 16) float32. The FP16 graph casts to half for
    the MatMul/Add and back to float before LayerNorm / Softmax / ReduceMean, as the bundle's
    FP16 graphs do; its I/O stays FP32. `fused_layernorm=False` spells LayerNorm out in
    primitive ops, which TensorRT 8.5 needs.
    """
    onnx = pytest.importorskip("onnx", reason="onnx not installed (needed to write the tiny test graph)")
    from onnx import TensorProto, helper, numpy_helper

    w = rng.normal(0, 0.25, (16, 16)).astype(np.float32)
    b = rng.normal(0, 0.1, (16,)).astype(np.float32)
    gamma, beta = np.ones(16, np.float32), np.zeros(16, np.float32)

    def save(path, half):
        dt = np.float16 if half else np.float32
        inits = [numpy_helper.from_array(w.astype(dt), "W"), numpy_helper.from_array(b.astype(dt), "B"),
                 numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(beta, "beta"),
                 numpy_helper.from_array(np.array(2.0, np.float32), "two"),
                 numpy_helper.from_array(np.array(1e-5, np.float32), "eps")]
        nodes = []
        src = "x"
        if half:
            nodes.append(helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16))
            src = "x16"
        nodes += [helper.make_node("MatMul", [src, "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["h"])]
        pre = "h"
        if half:
            nodes.append(helper.make_node("Cast", ["h"], ["h32"], to=TensorProto.FLOAT))
            pre = "h32"
        nodes += _layernorm_nodes(pre, "ln", fused_layernorm)
        nodes += [
            helper.make_node("Softmax", ["ln"], ["y"], axis=-1),
            helper.make_node("ReduceMean", ["y"], ["z"], axes=[1], keepdims=0),
        ]
        graph = helper.make_graph(
            nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16]),
             helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8   # readable by the ONNX parser of TensorRT 8.5
        onnx.checker.check_model(model)
        onnx.save(model, str(path))

    save(bundle / "tiny.onnx", half=False)
    save(bundle / "tiny.fp16.onnx", half=True)
    components = {"tiny": {"files": {"fp32": "tiny.onnx", "fp16": "tiny.fp16.onnx"}}}
    bundle_io.write_manifest(bundle, {"components": components, "engines": {}, "fingerprint": {}})

    def reference(x):
        h = x @ w + b
        ln = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
        e = np.exp(ln - ln.max(-1, keepdims=True))
        y = e / e.sum(-1, keepdims=True)
        return y, y.mean(1)
    return reference


@pytest.mark.parametrize("fused_layernorm", [True, False])
def test_tiny_graphs_match_their_reference_on_onnxruntime(tmp_path, fused_layernorm):
    """The real-engine test's graphs and numpy reference agree on CPU, so only TensorRT is untested there."""
    ort = pytest.importorskip("onnxruntime")
    reference = _tiny_graphs(tmp_path, np.random.default_rng(0), fused_layernorm)
    x = np.random.default_rng(1).normal(size=(1, 8, 16)).astype(np.float32)
    y_ref, z_ref = reference(x)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    # the graph as written (ORT's LayerNorm fusion mistypes the spelled-out FP16 variant)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for name, atol in (("tiny.onnx", 1e-5), ("tiny.fp16.onnx", 5e-3)):
        graph = ort.InferenceSession(str(tmp_path / name), opts, providers=["CPUExecutionProvider"])
        y, z = graph.run(["y", "z"], {"x": x})
        np.testing.assert_allclose(y, y_ref, atol=atol, rtol=5e-2)
        np.testing.assert_allclose(z, z_ref, atol=atol, rtol=5e-2)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_engine_build_and_run(tmp_path):
    trt = _real_tensorrt()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    version = trt_build.trt_version(trt)
    reference = _tiny_graphs(bundle, np.random.default_rng(0), fused_layernorm=version[:2] >= (8, 6))
    cache = tmp_path / "timing.cache"

    lines = []
    result = trt_build.build_bundle_engines(bundle, workspace_mib=256, timing_cache=cache, log=lines.append)
    route = trt_build.build_route(version)
    rec = result["engines"]["tiny"]
    engine = bundle / "engines" / "tiny.engine"
    assert rec["route"] == route and rec["bytes"] > 0 and engine.stat().st_size == rec["bytes"]
    assert cache.stat().st_size > 0
    fingerprint = result["fingerprint"]
    assert fingerprint["tensorrt"] == trt.__version__ and fingerprint == rt.device_fingerprint()
    opened = bundle_io.Bundle.open(bundle, verify=True)
    assert opened.engine_path("tiny") == engine and opened.manifest["fingerprint"] == fingerprint

    x = np.random.default_rng(1).normal(size=(1, 8, 16)).astype(np.float32)
    y_ref, z_ref = reference(x)
    with rt.TrtRunner(engine, fingerprint=opened.manifest["fingerprint"]) as runner:
        assert runner.input_spec() == {"x": ((1, 8, 16), np.dtype(np.float32))}
        assert sorted(runner.output_names) == ["y", "z"]
        out = runner.infer({"x": x})
        again = runner.infer({"x": x})
        with pytest.raises(AvqaError, match="shape"):
            runner.infer({"x": x[:, :4]})
    assert out["y"].shape == (1, 8, 16) and out["z"].shape == (1, 16)
    np.testing.assert_allclose(out["y"], y_ref, atol=5e-3, rtol=5e-2)   # FP16 MatMul
    np.testing.assert_allclose(out["z"], z_ref, atol=2e-3, rtol=5e-2)
    np.testing.assert_array_equal(out["y"], again["y"])
    np.testing.assert_allclose(out["y"].sum(-1), 1.0, atol=1e-3)   # softmax kept in FP32

    # a rebuild reuses the timing cache and replaces the recorded engine
    trt_build.build_bundle_engines(bundle, workspace_mib=256, timing_cache=cache, log=lines.append)
    bundle_io.Bundle.open(bundle, verify=True)

    with pytest.raises(AvqaError, match="avqa-edge export --trt --from-bundle BUNDLE"):
        with rt.TrtRunner(engine, fingerprint=dict(fingerprint, tensorrt="0.0.0")):
            pass


@pytest.mark.gpu
def test_real_device_fingerprint():
    info, reason = rt.gpu_info()
    if info is None:
        pytest.skip(f"no NVIDIA GPU ({reason})")
    fp = rt.device_fingerprint()
    major, minor = fp["compute_capability"].split(".")
    assert int(major) >= 5 and minor.isdigit()
    assert fp["gpu_name"] and fp["cuda"].count(".") == 1
