"""Torch-free parity against the PyTorch references stored in the bundle (export/parity_refs.py):
the stored files, the same verdict as the PyTorch gate without torch, perturbed graphs and
references, TensorRT engines (the stand-in module) built, checked and given verdicts, serve's
refusal of unverified engines, and report writes that leave a verifiable bundle when cut short.
The tiny run's bundle is the export tests' (conftest.py)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="needs the export extra: pip install -e '.[export]'")
pytest.importorskip("onnxruntime", reason="needs the export extra: pip install -e '.[export]'")

from typer.testing import CliRunner  # noqa: E402

from avqa_edge.cli import app  # noqa: E402
from avqa_edge.errors import AvqaError, BundleError, ParityError  # noqa: E402
from avqa_edge.export import parity_refs as R  # noqa: E402
from avqa_edge.export import trt_build  # noqa: E402
from avqa_edge.runtime import bundle as B  # noqa: E402

_spec = importlib.util.spec_from_file_location("avqa_fake_tensorrt", Path(__file__).with_name("fake_tensorrt.py"))
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)

NO_TORCH = '''import sys


class _NoTorch:
    """Any import of torch fails, as on a device without it."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed here")
        return None


sys.meta_path.insert(0, _NoTorch())
'''


@pytest.fixture(scope="module")
def bundle(exported):
    """The tiny run's bundle, exported once per test run (conftest.py): references stored, the
    PyTorch gate run on one thread. Tests copy it before changing it."""
    return exported[0]


def _copy(bundle: Path, tmp_path: Path, name: str = "copy") -> Path:
    dst = tmp_path / name
    shutil.copytree(bundle, dst)
    return dst


def _rehash(bundle: Path) -> None:
    """Re-record every file's hash (what a re-export of a changed graph would give)."""
    B.write_manifest(bundle, B.read_manifest(bundle), rehash=True)


def _fake_device(monkeypatch, hook=None):
    cfg = fake.FakeConfig("10.3.0", onnx_engines=True, output_hook=hook)
    return fake.FakeDevice(cfg).install(monkeypatch)


def test_device_side_modules_parse_as_python_3_8():
    """JetPack 5 runs Python 3.8: the torch-free check and the engine build must parse there."""
    import ast
    root = Path(__file__).resolve().parents[1]
    for rel in ("export/parity_refs.py", "export/trt_build.py", "runtime/trt.py"):
        ast.parse((root / rel).read_text(), feature_version=(3, 8))


def test_export_stores_the_references(bundle):
    manifest = B.read_manifest(bundle)
    rec = manifest["references"]
    assert {rec["components"], rec["answers"]} <= set(manifest["files"])
    assert rec["scenarios"] == list(R.SCENARIOS)
    b = B.Bundle.open(bundle)
    refs = R.load_references(b)
    assert list(refs.cases) == list(b.graphs)
    assert all(len(cases) == rec["samples"][c] for c, cases in refs.cases.items())
    feed, outs = refs.cases["visual"][0]
    assert feed["frames"].dtype == np.uint8 and set(outs) == {"v"}
    q, n = manifest["calibration"]["questions"], len(manifest["answers"])
    for s in R.SCENARIOS:
        assert refs.logits[s].shape == (q, n) and refs.logits[s].dtype == np.float32
        assert refs.masks[s][0].shape == (manifest["calibration"]["clips"], manifest["model"]["t_segments"])
    assert refs.masks["audio_missing"][0].sum() == 0 and refs.masks["audio_missing"][1].all()
    with np.load(bundle / rec["answers"], allow_pickle=False) as z:       # plain arrays, no pickle
        assert sorted(z.files) == sorted(f"{k}/{s}" for k in ("logits", "mask_a", "mask_v") for s in R.SCENARIOS)


def test_torch_free_parity_reaches_the_gate_verdict(bundle, tmp_path):
    """`avqa-edge parity --backend ort` in a process where importing torch fails: the same
    verdict, statistics and answer agreement as the PyTorch gate at export."""
    copy = _copy(bundle, tmp_path)
    block = tmp_path / "no-torch"
    block.mkdir()
    (block / "sitecustomize.py").write_text(NO_TORCH)
    env = dict(os.environ, PYTHONPATH=str(block))
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "torch is not installed here" in probe.stderr
    code = ("import sys\nfrom avqa_edge.cli import app\n"
            "try:\n    app(sys.argv[1:])\nfinally:\n"
            "    assert not [m for m in sys.modules if m == 'torch' or m.startswith('avqa_edge.toolkit')]\n")
    res = subprocess.run([sys.executable, "-c", code, "parity", str(copy), "--backend", "ort", "--threads", "1",
                          "--json", str(tmp_path / "ort.json")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "parity PASSED" in res.stdout
    manifest = B.verify_bundle(copy)
    check = manifest["parity_checks"]["ort-fp32+fp16"]
    assert check["passed"] is manifest["parity"]["passed"] is True
    assert all((copy / f).is_file() and f in manifest["files"] for f in check["report"])
    gate = json.loads((copy / "parity.json").read_text())
    mine = json.loads((tmp_path / "ort.json").read_text())
    assert mine["info"]["references"] == "stored" and mine["passed"] == gate["passed"]
    key = ("component", "output", "precision")
    g = {tuple(o[k] for k in key): o for o in gate["outputs"]}
    m = {tuple(o[k] for k in key): o for o in mine["outputs"]}
    assert set(g) == set(m) and len(g) == 2 * 9
    for k in g:
        for stat in ("max_abs", "mean_abs", "max_abs_rms", "cosine"):
            assert m[k][stat] == pytest.approx(g[k][stat], rel=1e-6, abs=1e-12), (k, stat)
    assert [(a["precision"], a["scenario"], a["agree"]) for a in mine["agreement"]] == \
           [(a["precision"], a["scenario"], a["agree"]) for a in gate["agreement"]]


def test_perturbed_graph_fails_naming_the_component(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    path = copy / "onnx" / "rmm_audio.onnx"
    proto = onnx.load(str(path))
    from onnx import numpy_helper
    big = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    big.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(big) * 1.01, big.name))
    onnx.save(proto, str(path))
    _rehash(copy)
    report = R.stored_parity(copy, "ort", ["fp32"], scenarios=["complete"], threads=1, log=lambda *_: None)
    assert not report and report.failed_components() == ["rmm_audio"]
    with pytest.raises(ParityError, match=r"rmm_audio/pseudo_a \(fp32\): max abs error"):
        R.gate(report)


def test_perturbed_reference_fails_naming_the_component(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    path = copy / R.COMPONENTS_NPZ
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["audio/000/out/a"] = arrays["audio/000/out/a"] * 1.05
    np.savez(path, **arrays)
    with pytest.raises(AvqaError, match="failed verification.*references/components.npz"):
        R.stored_parity(copy, "ort", ["fp32"], scenarios=["complete"], threads=1, log=lambda *_: None)
    _rehash(copy)
    report = R.stored_parity(copy, "ort", ["fp32"], scenarios=["complete"], threads=1, log=lambda *_: None)
    assert not report and report.failed_components() == ["audio"]
    assert any(f.startswith("audio/a (fp32)") for f in report.failures())


def test_bundle_without_references_is_refused(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    manifest = B.read_manifest(copy)
    B.write_manifest(copy, dict(manifest, references={}), rehash=False)
    with pytest.raises(BundleError, match="holds no PyTorch references.*--backend torch"):
        R.stored_parity(copy, "ort", log=lambda *_: None)
    with pytest.raises(AvqaError, match="TensorRT engines are fp16"):
        R.stored_parity(copy, "trt", ["fp32"], log=lambda *_: None)


def test_fake_tensorrt_build_records_passing_verdicts(bundle, tmp_path, monkeypatch):
    """`export --trt --from-bundle` with the stand-in TensorRT (engines that run their ONNX
    graph): built, checked against the references and ONNX Runtime, verdicts recorded; serve
    then opens the engines."""
    copy = _copy(bundle, tmp_path)
    _fake_device(monkeypatch)
    res = CliRunner().invoke(app, ["export", "--trt", "--from-bundle", str(copy), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "engine parity PASSED" in res.output and "TensorRT vs ONNX Runtime" in res.output
    manifest = B.verify_bundle(copy)
    engines = manifest["engines"]
    assert set(engines) == set(B.Bundle.open(copy).graphs)
    reports = set()
    for c, rec in engines.items():
        v = rec["parity"]
        assert v["passed"] is True and v["precision"] == "fp16" and v["outputs_passed"] and v["answers_passed"]
        assert v["engine_sha256"] == manifest["files"][rec["file"]]["sha256"]
        assert rec["onnx"] == "fp16" and v["report"] in manifest["files"] and v["json"] in manifest["files"]
        reports.add(v["json"])
    assert len(reports) == 1
    report = json.loads((copy / reports.pop()).read_text())
    assert report["info"]["backend"] == "trt" and report["info"]["trt_vs_ort"] == "compared"
    assert {(x["component"], x["reference"]) for x in report["cross"]} == \
           {(c, f"onnx/{c}.fp16.onnx") for c in engines}
    assert all(x["max_abs"] == 0.0 and x["finite"] for x in report["cross"])   # the stand-in runs the same graph
    assert {a["precision"] for a in report["agreement"]} == {"fp16"} and len(report["agreement"]) == len(R.SCENARIOS)

    from avqa_edge.runtime.service import open_pipeline
    with open_pipeline(copy, backend="trt", threads=1) as pipe:
        assert pipe.name == "trt"


def test_broken_engine_fails_and_serve_refuses_it(bundle, tmp_path, monkeypatch):
    copy = _copy(bundle, tmp_path)
    _fake_device(monkeypatch)
    trt_build.build_bundle_engines(copy, log=lambda *_: None, parity=False)
    assert all("parity" not in rec for rec in B.read_manifest(copy)["engines"].values())

    def broken(path, outs):                         # the backbone engine's logits shifted by one answer
        return {k: np.roll(v, 1, axis=-1) for k, v in outs.items()} if path.endswith("backbone.fp16.onnx") else outs
    _fake_device(monkeypatch, hook=broken)
    res = CliRunner().invoke(app, ["parity", str(copy), "--backend", "trt", "--scenario", "complete", "--threads", "1"])
    assert res.exit_code == 1 and "parity gate FAILED" in res.output and "backbone/logits (fp16)" in res.output
    engines = B.verify_bundle(copy)["engines"]
    assert engines["backbone"]["parity"]["passed"] is False and engines["backbone"]["parity"]["outputs_passed"] is False
    assert engines["visual"]["parity"]["outputs_passed"] is True

    from avqa_edge.runtime.service import open_pipeline
    with pytest.raises(AvqaError, match=r"(?s)backbone: parity FAILED.*avqa-edge parity .* --backend trt"):
        open_pipeline(copy, backend="trt", threads=1)


def test_serve_refuses_engines_without_a_verdict(bundle, tmp_path, monkeypatch):
    copy = _copy(bundle, tmp_path)
    _fake_device(monkeypatch)
    trt_build.build_bundle_engines(copy, log=lambda *_: None, parity=False)
    from avqa_edge.runtime.service import open_pipeline
    for backend in ("trt", "auto"):                     # auto picks TensorRT: tensorrt imports here
        with pytest.raises(AvqaError, match=r"(?s)visual: no parity verdict.*--backend trt.*--allow-unverified-engines"):
            open_pipeline(copy, backend=backend, threads=1)
    with open_pipeline(copy, backend="ort", threads=1) as pipe:
        assert pipe.name == "ort-fp32"
    warnings = []
    with open_pipeline(copy, backend="trt", threads=1, allow_unverified_engines=True, log=warnings.append) as pipe:
        assert pipe.name == "trt"
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "not verified" in warnings[0]
    res = CliRunner().invoke(app, ["serve", str(copy), "--backend", "trt", "--ask", "what?", "--duration", "1"])
    assert res.exit_code == 1 and "no parity verdict" in res.output and "Traceback" not in res.output


def test_interrupted_parity_write_leaves_a_verifiable_bundle(bundle, tmp_path, monkeypatch):
    """Cut the write of a parity report short at every file operation in turn: the bundle
    verifies each time, and its manifest is the old one or the new one."""
    first = R.stored_parity(bundle, "ort", ["fp32"], scenarios=["complete"], threads=1, log=lambda *_: None)
    second = R.stored_parity(bundle, "ort", ["fp32"], scenarios=["visual_missing"], threads=1, log=lambda *_: None)
    base = _copy(bundle, tmp_path, "base")
    old = R.record_parity(base, first, "ort")["parity_checks"]["ort-fp32"]["report"]

    class Cut(Exception):
        pass

    real_replace, real_unlink = os.replace, Path.unlink
    n = 0
    while True:
        n += 1
        copy = _copy(base, tmp_path, f"cut{n}")
        ops = [0]

        def step(real):
            def wrapped(*args, **kwargs):
                ops[0] += 1
                if ops[0] == n:
                    raise Cut()
                return real(*args, **kwargs)
            return wrapped
        monkeypatch.setattr(os, "replace", step(real_replace))
        monkeypatch.setattr(Path, "unlink", step(real_unlink))
        try:
            R.record_parity(copy, second, "ort")
            done = True
        except Cut:
            done = False
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
            monkeypatch.setattr(Path, "unlink", real_unlink)
        manifest = B.verify_bundle(copy)
        report = manifest["parity_checks"]["ort-fp32"]["report"]
        assert report == old or json.loads((copy / report[1]).read_text())["info"]["scenarios"] == \
            {"visual_missing": {"missing": "visual_missing", "fraction": 1.0}}
        if done:
            break
    assert n >= 4                                       # two reports, the manifest, the old report's removal
    assert report != old and not any((copy / f).exists() for f in old)
    assert all((copy / f).is_file() for f in report)


def test_cli_parity_rejects_impossible_options(tmp_path):
    r = CliRunner()
    for args, msg in ((["--backend", "onnx"], "must be torch, ort or trt"),
                      (["--precision", "fp16"], "--precision applies to --backend ort | trt"),
                      (["--backend", "ort", "--run", str(tmp_path)], "--run applies to --backend torch")):
        res = r.invoke(app, ["parity", str(tmp_path / "b"), *args])
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output
    res = r.invoke(app, ["parity", str(tmp_path / "nope"), "--backend", "ort"])
    assert res.exit_code == 1 and "not found" in res.output
