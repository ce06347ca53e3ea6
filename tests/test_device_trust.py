"""A bundle a user can trust (runtime/bundle.py), a read-only bundle that serves, `serve
--strict`, `avqa-edge doctor` (runtime/doctor.py) and the deploy files (deploy/).

Each manifest attack a tester tried is refused with a BundleError naming the file or field,
before anything of the bundle is read. The serving and doctor subprocesses run with torch
blocked."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avqa_edge.errors import BundleError
from avqa_edge.runtime import bundle as B
from torchfree import NO_TORCH, TORCH_FREE

ROOT = Path(__file__).resolve().parents[1]


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


needs_bundle = pytest.mark.skipif(not (_has("onnx") and _has("onnxruntime")),
                                  reason="needs the export extra (onnx, onnxruntime) to make a bundle")


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    """The tiny run exported as test_serve.py exports it (TorchScript, no parity gate)."""
    from avqa_edge.export.bundle_export import export_bundle
    out = tmp_path_factory.mktemp("trust") / "tiny"
    export_bundle(tiny_run[0], out, log=lambda *_: None, run_parity=False, threads=1, exporter="torchscript")
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def _edit(bundle: Path, fn) -> dict:
    """Apply fn to manifest.json in place (as a tester with a text editor would). -> the manifest."""
    path = bundle / B.MANIFEST
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m, indent=2))
    return m


def _rehash(m: dict, bundle: Path, rel: str) -> None:
    m["files"][rel] = {"sha256": B.sha256_file(bundle / rel), "bytes": (bundle / rel).stat().st_size}


def _swap_yes_no(xs):
    i, j = xs.index("yes"), xs.index("no")
    xs[i], xs[j] = xs[j], xs[i]


def _tree(*dirs: Path) -> dict:
    """Every entry under the folders with its size and mtime (what a write would change)."""
    out = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


# ---- torch-free pieces held to the toolkit's -----------------------------------------------------

def test_config_hash_and_legacy_defaults_match_the_toolkit():
    from avqa_edge.toolkit import config as TC
    assert B.LEGACY_MODEL_DEFAULTS == TC.LEGACY_DEFAULTS
    for cfg in (TC.preset("edge"), TC.preset("paper"), TC.preset("edge", video_expert=False, avr_start=None),
                TC.preset("edge", vocab=["is", "the"], answers=["yes", "no"])):
        assert B.config_hash(json.loads(json.dumps(cfg.to_dict()))) == cfg.hash()


def test_calibration_file_names_match_the_calibration_set():
    from avqa_edge.calibration import calibset
    assert B.CALIBRATION_FILES == (calibset.NPZ, calibset.META)


@needs_bundle
def test_onnx_metadata_is_read_without_onnx(bundle):
    import onnx
    graphs = B._onnx_graphs(B.read_manifest(bundle))
    assert len(graphs) >= 14
    for name, rel in graphs:
        want = {p.key: p.value for p in onnx.load(str(bundle / rel)).metadata_props}
        assert B.onnx_metadata(bundle / rel) == want and want["avqa_edge.component"] == name
    with pytest.raises(BundleError, match="not a readable ONNX file"):
        B.onnx_metadata(bundle / "calibration/calibration.json")


# ---- manifest attacks ------------------------------------------------------------------------------

def _outside_graph(bundle: Path, tmp_path: Path) -> str:
    """A real graph outside the bundle (one of its own, copied next to it)."""
    shutil.copy(bundle / "onnx/visual.onnx", tmp_path / "outside.onnx")
    return "../outside.onnx"


ATTACKS = {
    "absolute component path": (
        lambda m, b, t: m["components"]["visual"]["files"].update(fp32="/etc/hostname"),
        r"components\.visual\.files\.fp32 = '/etc/hostname' is an absolute path"),
    "component outside the bundle": (
        lambda m, b, t: m["components"]["visual"]["files"].update(fp32=_outside_graph(b, t)),
        r"components\.visual\.files\.fp32 = '\.\./outside\.onnx' points outside the bundle"),
    "listed file outside the bundle": (
        lambda m, b, t: m["files"].update({"../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}}),
        r"files entry = '\.\./\.\./etc/passwd' points outside the bundle"),
    "component not listed in files": (
        lambda m, b, t: (shutil.copy(b / "onnx/visual.onnx", b / "onnx/extra.onnx"),
                         m["components"]["visual"]["files"].update(fp32="onnx/extra.onnx")),
        r"components\.visual\.files\.fp32 = 'onnx/extra\.onnx' is not listed in files"),
    "engine not listed in files": (
        lambda m, b, t: m.update(engines={"visual": {"file": "engines/visual.engine"}}),
        r"engines\.visual\.file = 'engines/visual\.engine' is not listed in files"),
    "calibration not listed": (
        lambda m, b, t: m["files"].pop("calibration/calibration.npz"),
        r"calibration = 'calibration/calibration\.npz' is not listed in files"),
    "answers swapped": (
        lambda m, b, t: _swap_yes_no(m["answers"]),
        r"answers differ from the model config's answers"),
    "answers swapped in the config too": (
        lambda m, b, t: (_swap_yes_no(m["answers"]), _swap_yes_no(m["model"]["answers"])),
        r"the model config \(model\) hashes to [0-9a-f]{12}, but config_hash is"),
    "answers swapped and config_hash recomputed": (
        lambda m, b, t: (_swap_yes_no(m["answers"]), _swap_yes_no(m["model"]["answers"]),
                         m.update(config_hash=B.config_hash(m["model"]))),
        r"onnx/\w+\.onnx was exported from model config '[0-9a-f]{12}', the manifest's config_hash is"),
    "vocabulary edited": (
        lambda m, b, t: m["vocabulary"].__setitem__(2, "zzz"),
        r"vocabulary differs from the model config's"),
    "graphs of two components swapped": (
        lambda m, b, t: (m["components"]["audio"]["files"].update(fp32="onnx/visual.onnx"),
                         m["components"]["visual"]["files"].update(fp32="onnx/audio.onnx")),
        r"onnx/(visual|audio)\.onnx is the graph of '(visual|audio)', but manifest\.json names it for component"),
}


@needs_bundle
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_manifest_attack_is_refused(bundle, tmp_path, attack):
    edit, message = ATTACKS[attack]
    copy = _copy(bundle, tmp_path)
    B.verify_bundle(copy)
    _edit(copy, lambda m: edit(m, copy, tmp_path))
    with pytest.raises(BundleError, match=message):
        B.Bundle.open(copy)


@needs_bundle
def test_symlink_out_of_the_bundle_is_refused_though_its_hash_matches(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    outside = tmp_path / "visual.onnx"
    shutil.move(copy / "onnx/visual.onnx", outside)
    (copy / "onnx/visual.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match=r"files entry = 'onnx/visual\.onnx' is a symlink leading out of the bundle"):
        B.verify_bundle(copy)


@needs_bundle
def test_graph_from_another_model_is_refused_though_listed_and_hashed(bundle, tmp_path):
    """A graph replaced by one of another config (metadata edited) with its hash recorded."""
    import onnx
    copy = _copy(bundle, tmp_path)
    proto = onnx.load(str(copy / "onnx/backbone.onnx"))
    for p in proto.metadata_props:
        if p.key == "avqa_edge.config_hash":
            p.value = "0123456789ab"
    onnx.save(proto, str(copy / "onnx/backbone.onnx"))
    _edit(copy, lambda m: _rehash(m, copy, "onnx/backbone.onnx"))
    with pytest.raises(BundleError, match=r"onnx/backbone\.onnx was exported from model config '0123456789ab'"):
        B.verify_bundle(copy)


@needs_bundle
def test_serve_verifies_before_reading_the_calibration_set(bundle, tmp_path):
    """A garbage calibration.npz is reported as a modified file, not as an unreadable set."""
    from typer.testing import CliRunner

    from avqa_edge.cli import app
    copy = _copy(bundle, tmp_path)
    (copy / "calibration/calibration.npz").write_bytes(b"garbage")
    res = CliRunner().invoke(app, ["serve", str(copy), "--demo", "--ask", "is the piano playing"])
    assert res.exit_code == 1
    assert re.search(r"error: bundle .* failed verification; modified \(SHA-256 differs from the manifest\): "
                     r"calibration/calibration\.npz", res.output), res.output
    assert "unreadable" not in res.output and "Traceback" not in res.output


@needs_bundle
def test_attack_reaches_the_user_as_one_line(bundle, tmp_path):
    from typer.testing import CliRunner

    from avqa_edge.cli import app
    copy = _copy(bundle, tmp_path)
    _edit(copy, lambda m: _swap_yes_no(m["answers"]))
    res = CliRunner().invoke(app, ["serve", str(copy), "--demo", "--ask", "is the piano playing"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "error: manifest.json: answers differ from the model config's answers" in res.output


def test_graphs_only_bundle_still_verifies(tmp_path):
    """Bundles without a model (the TensorRT build tests' placeholders) keep working; a model
    config without its hash does not."""
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx/visual.onnx").write_bytes(b"placeholder")
    m = B.write_manifest(tmp_path, {"components": {"visual": {"files": {"fp32": "onnx/visual.onnx"}}}})
    assert B.verify_bundle(tmp_path) == m
    B.write_manifest(tmp_path, dict(m, model={"dim": 64}))
    with pytest.raises(BundleError, match=r"calibration = 'calibration/calibration\.json' is not listed in files"):
        B.verify_bundle(tmp_path)
    (tmp_path / "calibration").mkdir()
    for name in B.CALIBRATION_FILES:
        (tmp_path / "calibration" / name).write_bytes(b"placeholder")
    B.write_manifest(tmp_path, dict(m, model={"dim": 64}))
    with pytest.raises(BundleError, match="manifest.json has no config_hash, vocabulary, answers"):
        B.verify_bundle(tmp_path)


# ---- a read-only bundle serves; nothing is written beside it --------------------------------------

def _no_write_prefix():
    """As root, file modes do not stop writes: drop the capabilities that bypass them."""
    if os.geteuid() == 0 and shutil.which("setpriv"):
        return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
    return []


@needs_bundle
def test_read_only_bundle_serves_and_nothing_is_written_beside_it(bundle, tmp_path):
    pytest.importorskip("cv2", reason="the serve extra")
    parent = tmp_path / "shelf"
    parent.mkdir()
    ro = _copy(bundle, parent)
    for p in [ro, *ro.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    parent.chmod(0o555)
    before = _tree(parent)
    cache = tmp_path / "cache"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": "1"}
    try:
        res = subprocess.run(_no_write_prefix() + [sys.executable, "-c", NO_TORCH, "serve", str(ro), "--demo",
                                                   "--warmup", "1", "--threads", "1", "--json",
                                                   "--ask", "is the piano playing"],
                             capture_output=True, text=True, env=env, timeout=300)
        after = _tree(parent)
    finally:
        parent.chmod(0o755)
        for p in [ro, *ro.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert res.returncode == 0, res.stderr
    assert TORCH_FREE in res.stderr
    body = json.loads(res.stdout.strip().splitlines()[-1])
    assert body["answer"] in B.read_manifest(ro)["answers"] and body["mode"] == "complete"
    assert after == before                                           # not a byte beside or inside the bundle
    cached = list((cache / "avqa-edge").glob("*.confidence.json"))
    assert len(cached) == 1 and f"saved {cached[0]}" in res.stderr


# ---- serve --strict --------------------------------------------------------------------------------

@needs_bundle
def test_strict_refuses_a_camera_that_cannot_be_opened(bundle):
    pytest.importorskip("cv2", reason="the camera needs OpenCV")
    from typer.testing import CliRunner

    from avqa_edge.cli import app
    res = CliRunner().invoke(app, ["serve", str(bundle), "--strict", "--camera", "7", "--mic", "demo",
                                   "--ask", "is the piano playing"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "error: camera: cannot open camera 7. --strict: not starting without it" in res.output


@needs_bundle
def test_without_strict_a_camera_that_cannot_be_opened_is_reported_at_start(bundle):
    pytest.importorskip("cv2", reason="the camera needs OpenCV")
    from avqa_edge.runtime.service import ServeConfig, build_service
    lines = []
    svc = build_service(bundle, ServeConfig(camera="7", mic="demo", threads=1), log=lines.append)
    svc.stop()
    assert lines[0].startswith("WARNING: camera: cannot open camera 7. Serving without the camera until it opens")


# ---- doctor ----------------------------------------------------------------------------------------

def _doctor(*args, timeout=300):
    return subprocess.run([sys.executable, "-c", NO_TORCH, "doctor", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)


@needs_bundle
def test_doctor_healthy_bundle_passes_and_says_what_is_missing(bundle, tmp_path):
    out = tmp_path / "report.md"
    res = _doctor(bundle, "--bench-calls", "2", "--out", out)
    assert res.returncode == 0, res.stdout + res.stderr
    assert TORCH_FREE in res.stderr
    text = out.read_text()
    assert text.strip() == res.stdout.strip() and "Verdict: **OK**" in text
    assert "| verification | ok |" in text and "| ONNX Runtime | ok |" in text
    assert re.search(r"\| answer, camera missing \| ok \| median [\d.]+ ms", text)
    if not _has("tensorrt"):
        assert "| TensorRT | not found |" in text
    if not Path("/etc/nv_tegra_release").exists():
        assert "| JetPack | not found |" in text
    assert "| engines | info | none in the bundle" in text


@needs_bundle
def test_doctor_tampered_bundle_fails(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    raw = bytearray((copy / "onnx/avr.fp16.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (copy / "onnx/avr.fp16.onnx").write_bytes(bytes(raw))
    res = _doctor(copy)
    assert res.returncode == 1
    assert re.search(r"\| verification \| FAIL \| bundle .* modified .*onnx/avr\.fp16\.onnx", res.stdout), res.stdout
    assert "Verdict: **FAIL**" in res.stdout and "## Bench" not in res.stdout


def test_doctor_failing_sensor_fails():
    pytest.importorskip("cv2", reason="the camera needs OpenCV")
    res = _doctor("--camera", "7", "--probe-seconds", "1")
    assert res.returncode == 1
    assert re.search(r"\| camera 7 \| FAIL \| camera 7: opened 0 of \d+ attempts; 0 frames", res.stdout), res.stdout


def test_doctor_healthy_sensors_from_files(tmp_path):
    """A video file and a WAV file stand in for the camera and the microphone."""
    cv2 = pytest.importorskip("cv2", reason="the camera needs OpenCV")
    sf = pytest.importorskip("soundfile", reason="sound files need soundfile")
    rng = np.random.default_rng(0)
    video, wav = tmp_path / "camera.avi", tmp_path / "mic.wav"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    yy, xx = np.mgrid[0:64, 0:96]
    for i in range(30):                                         # a moving disc on a gradient, with noise
        img = np.repeat((60 + 40 * xx / 96)[..., None], 3, axis=2)
        img[(xx - (10 + 7 * i) % 96) ** 2 + (yy - 32) ** 2 < 120] = (200, 80, 40)
        vw.write(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8))
    vw.release()
    t = np.arange(3 * 16000) / 16000
    sf.write(str(wav), (0.2 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.normal(size=t.shape)).astype(np.float32),
             16000, subtype="PCM_16")
    res = _doctor("--camera", video, "--mic", wav, "--probe-seconds", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"\| camera \S+camera\.avi \| ok \| video file \S+: opened 1 of 1 attempts; [1-9]\d* frames",
                     res.stdout), res.stdout
    assert re.search(r"\| mic \S+mic\.wav \| ok \| .*; [1-9]\d* chunks", res.stdout), res.stdout


@needs_bundle
def test_doctor_backend_trt_without_tensorrt_fails(bundle):
    if _has("tensorrt"):
        pytest.skip("TensorRT is installed here")
    res = _doctor(bundle, "--backend", "trt", "--bench-calls", "0")
    assert res.returncode == 1
    assert "| TensorRT | FAIL |" in res.stdout and re.search(r"\| engines \| FAIL \| none in the bundle", res.stdout)


def test_doctor_engine_rules():
    """Engines: fingerprint against this device, and the parity verdict another step records."""
    from avqa_edge.runtime.doctor import FAIL, OK, WARN, engine_checks
    fp = {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt": "10.3.0", "cuda": "12.6"}
    manifest = {"fingerprint": fp, "engines": {
        "visual": {"file": "engines/visual.engine", "parity": {"passed": True, "precision": "fp16", "report": "p.md"}},
        "audio": {"file": "engines/audio.engine"}}}
    here = {"gpu_name": "Orin", "compute_capability": "8.7", "cuda": "12.6"}
    got = {c.name: c for c in engine_checks(manifest, "trt", "trt", here, "10.3.0")}
    assert got["fingerprint"].status == OK and got["parity visual"].status == OK
    assert got["parity visual"].detail == "passed, fp16, report p.md"
    assert got["parity audio"].status == FAIL and got["parity audio"].detail == "not verified"
    got = {c.name: c for c in engine_checks(manifest, "trt", "trt", dict(here, gpu_name="RTX 4090"), "10.3.0")}
    assert got["fingerprint"].status == FAIL and "gpu_name: engine built with 'Orin'" in got["fingerprint"].detail
    got = {c.name: c for c in engine_checks(manifest, "auto", "ort", None, None)}
    assert got["fingerprint"].status == WARN and got["parity audio"].status == WARN


# ---- deploy files ----------------------------------------------------------------------------------

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
UNIT = ROOT / "deploy" / "avqa-edge.service"


def _instructions(text: str):
    """Dockerfile -> [(INSTRUCTION, arguments)], continuation lines joined, comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line.rstrip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    assert not cur, "a continuation line runs past the end of the file"
    return out


def test_dockerfile_parses_and_its_files_exist():
    ins = _instructions(DOCKERFILE.read_text())
    known = {"ARG", "FROM", "RUN", "COPY", "ENV", "WORKDIR", "USER", "VOLUME", "EXPOSE", "ENTRYPOINT", "CMD",
             "HEALTHCHECK", "LABEL", "STOPSIGNAL"}
    words = [w for w, _ in ins]
    assert set(words) <= known, set(words) - known
    assert words[0] == "ARG"                                          # the base images are build args
    base_args = " ".join(a for w, a in ins[:words.index("FROM")] if w == "ARG")
    assert "L4T_BASE=nvcr.io/nvidia/l4t-jetpack:r36" in base_args     # JetPack 6 by default
    froms = [a for w, a in ins if w == "FROM"]
    assert froms[-1] == "${L4T_BASE}", froms                         # the image that runs is JetPack's
    runs = " ".join(a for w, a in ins if w == "RUN")
    assert re.search(r"pip install [^&;]*\[runtime\]", runs) and "torch" not in runs
    assert "onnxruntime-gpu" in runs and "--index-url" in runs        # Jetson's ORT from NVIDIA's index, not PyPI
    last = {w: a for w, a in ins}
    assert json.loads(last["ENTRYPOINT"]) == ["avqa-edge", "serve"]
    assert json.loads(last["CMD"])[0] == "/bundle"
    assert "/readyz" in last["HEALTHCHECK"] and " CMD " in f" {last['HEALTHCHECK']} "
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    for w, a in ins:
        if w != "COPY" or a.startswith("--from="):
            continue
        srcs = a.split()[:-1]
        assert srcs, a
        for src in srcs:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert f"!{src}" in ignore, f"COPY {src}: excluded from the build context by Dockerfile.dockerignore"


def test_systemd_unit_verifies(tmp_path):
    text = UNIT.read_text()
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                   "ReadOnlyPaths=/opt/avqa-edge", "CacheDirectory=avqa-edge", "CapabilityBoundingSet=\n",
                   "SystemCallFilter=@system-service", "--strict"):
        assert option in text, option
    settings = [line.split("=")[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert "ProtectClock" not in settings and "DeviceAllow" not in settings   # they would cut off camera and GPU
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # the unit as installed, with ExecStart's program present here (verify checks it exists)
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/opt/avqa-edge/venv/bin/avqa-edge", sys.executable))
    res = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
