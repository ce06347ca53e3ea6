"""`avqa-edge doctor`: one Markdown report of this device, a bundle and its sensors, to paste
into a bug report. Torch-free (numpy, and ONNX Runtime / TensorRT where installed).

Sections: the system (Python, OS, numpy); the accelerators (ONNX Runtime and its providers,
TensorRT, CUDA, GPU, JetPack; each "not found" where absent); the bundle (verification as
`serve` does it, the model, the export parity gate); its TensorRT engines (present, built for
this device's fingerprint, their parity verdict); a short bench (a few calls of the bundle's
pipeline); and a probe of each sensor given (opened, items read, health state).

A check fails when serving would fail: the bundle does not verify or its parity gate failed,
a given sensor cannot be opened or ends the probe failed, the bench fails, or the backend in
use cannot run: ONNX Runtime missing for `ort`; for `trt` (asked, or chosen by `auto` because
the bundle has engines and TensorRT imports) TensorRT, a GPU, engines or a matching
fingerprint missing, and with --backend trt also an engine parity verdict that is not
"passed". Missing TensorRT or GPU is reported, not a failure, unless that backend is needed.

    report = run_doctor("bundles/edge", camera="0", mic="default")
    print(report.to_markdown()); sys.exit(1 if report.failed else 0)
"""
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from avqa_edge import __version__
from avqa_edge.errors import AvqaError

OK, FAIL, WARN, INFO, NOT_FOUND = "ok", "FAIL", "warn", "info", "not found"
BACKENDS = ("auto", "ort", "trt")
L4T_JETPACK = {"32": "4", "35": "5", "36": "6"}     # L4T major release -> JetPack major


@dataclass
class Check:
    name: str
    status: str            # OK | FAIL | WARN | INFO | NOT_FOUND
    detail: str = ""


@dataclass
class Report:
    sections: List[Tuple[str, List[Check]]] = field(default_factory=list)

    def add(self, title: str, checks: List[Check]) -> None:
        self.sections.append((title, checks))

    @property
    def failed(self) -> List[Tuple[str, Check]]:
        return [(title, c) for title, checks in self.sections for c in checks if c.status == FAIL]

    def to_markdown(self) -> str:
        bad = self.failed
        verdict = ("**OK**: nothing required is missing" if not bad else
                   f"**FAIL**: {len(bad)} problem(s): " + "; ".join(f"{t} / {c.name}" for t, c in bad))
        lines = ["# avqa-edge doctor", "", f"avqa-edge {__version__}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", "",
                 f"Verdict: {verdict}", ""]
        for title, checks in self.sections:
            lines += [f"## {title}", "", "| check | status | detail |", "|---|---|---|"]
            lines += [f"| {c.name} | {c.status} | {_cell(c.detail)} |" for c in checks]
            lines.append("")
        return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", "<br>")


# ---- the system and its accelerators -------------------------------------------------------------

def system_checks() -> List[Check]:
    python = f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})"
    return [Check("Python", INFO, python),
            Check("OS / arch", INFO, f"{platform.platform()} / {platform.machine()}"),
            Check("numpy", INFO, np.__version__),
            Check("device model", INFO, _read("/proc/device-tree/model") or NOT_FOUND)]


def _read(path: str) -> Optional[str]:
    try:
        return Path(path).read_text(errors="replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def _run(cmd: List[str]) -> Optional[str]:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def onnxruntime_info() -> Optional[Tuple[str, List[str]]]:
    """(version, available providers), or None where onnxruntime does not import."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return ort.__version__, list(ort.get_available_providers())


def tensorrt_version() -> Optional[str]:
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def cuda_toolkit_version() -> Optional[str]:
    """The CUDA toolkit under /usr/local/cuda (version.json from CUDA 11.1, version.txt before)."""
    import json
    text = _read("/usr/local/cuda/version.json")
    if text:
        try:
            return json.loads(text)["cuda"]["version"]
        except (ValueError, KeyError, TypeError):
            pass
    m = re.search(r"CUDA Version\s+([\d.]+)", _read("/usr/local/cuda/version.txt") or "")
    return m.group(1) if m else None


def jetpack_version() -> Optional[str]:
    """"L4T 36.4.0 (JetPack 6, nvidia-jetpack 6.2+b77)" from /etc/nv_tegra_release (+ dpkg)."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", _read("/etc/nv_tegra_release") or "")
    if not m:
        return None
    jp = L4T_JETPACK.get(m.group(1))
    pkg = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    extra = ", ".join(x for x in (f"JetPack {jp}" if jp else "", f"nvidia-jetpack {pkg}" if pkg else "") if x)
    return f"L4T {m.group(1)}.{m.group(2)}" + (f" ({extra})" if extra else "")


def gpu_facts() -> Tuple[Optional[Dict[str, str]], str]:
    """({"gpu_name", "compute_capability", "cuda"}, "") via pycuda / cuda-python
    (runtime/trt.py), else nvidia-smi's name and driver; (None, why) where none is visible."""
    from .trt import gpu_info
    info, why = gpu_info()
    if info is not None:
        return info, ""
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if smi:
        name, _, driver = smi.splitlines()[0].partition(",")
        return {"gpu_name": name.strip(), "driver": driver.strip()}, ""
    return None, why


def accelerator_checks(backend: str, effective: str, gpu: Optional[Dict[str, str]], gpu_why: str,
                       ort_info, trt_ver: Optional[str]) -> List[Check]:
    """ONNX Runtime, TensorRT, CUDA, GPU, JetPack: required only for the backend in use."""
    checks = []
    if ort_info is None:
        checks.append(Check("ONNX Runtime", FAIL if effective == "ort" else NOT_FOUND,
                            "not installed: pip install onnxruntime (on Jetson: NVIDIA's onnxruntime-gpu wheel, "
                            "docs/deploy.md)"))
    else:
        checks.append(Check("ONNX Runtime", OK, f"{ort_info[0]}; providers: {', '.join(ort_info[1])}"))
    need_trt = effective == "trt"
    checks.append(Check("TensorRT", OK if trt_ver else (FAIL if need_trt else NOT_FOUND),
                        trt_ver or "not installed (needed only for --backend trt)"))
    if gpu is None:
        checks.append(Check("GPU", FAIL if need_trt else NOT_FOUND, f"no NVIDIA GPU visible ({gpu_why})"))
    else:
        checks.append(Check("GPU", OK, ", ".join(f"{k} {v}" for k, v in gpu.items())))
    checks.append(Check("CUDA toolkit", INFO if cuda_toolkit_version() else NOT_FOUND,
                        cuda_toolkit_version() or "no /usr/local/cuda"))
    jp = jetpack_version()
    checks.append(Check("JetPack", INFO if jp else NOT_FOUND, jp or "no /etc/nv_tegra_release (not a Jetson)"))
    if backend != effective:
        checks.append(Check("backend", INFO, f"auto -> {effective} (TensorRT where the bundle has engines and "
                                             "TensorRT imports, as `serve` chooses)"))
    return checks


# ---- the bundle ----------------------------------------------------------------------------------

def bundle_checks(bundle_dir: Path) -> Tuple[List[Check], Optional[Dict]]:
    """Verification as `serve` does it. -> (checks, the manifest or None when it failed)."""
    from .bundle import Bundle
    t = time.perf_counter()
    try:
        manifest = Bundle.open(bundle_dir, verify=True).manifest
    except AvqaError as e:
        return [Check("verification", FAIL, str(e))], None
    files = manifest.get("files") or {}
    mib = sum(r["bytes"] for r in files.values()) / 2**20
    answers, graphs = len(manifest.get("answers") or []), ", ".join(manifest.get("components") or {})
    checks = [Check("verification", OK, f"{len(files)} files ({mib:.1f} MiB) hashed, paths inside the bundle, model "
                                         f"config consistent ({time.perf_counter() - t:.2f} s)"),
              Check("model", INFO, f"config {manifest.get('config_hash')}, {answers} answers, graphs: {graphs}"),
              Check("exported", INFO, f"{manifest.get('created')} with "
                                      + ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items()))]
    parity = (manifest.get("parity") or {}).get("passed")
    checks.append(Check("export parity gate", {True: OK, False: FAIL, None: WARN}[parity],
                        {True: "passed (parity.md)", False: "FAILED: `serve` refuses this bundle; re-export it",
                         None: "not run at export"}[parity]))
    return checks, manifest


def engine_checks(manifest: Dict, backend: str, effective: str, gpu: Optional[Dict[str, str]],
                  trt_ver: Optional[str]) -> List[Check]:
    """Engines present, built for this device, and their parity verdict
    (manifest["engines"][component]["parity"] = {"passed", "precision", "report"})."""
    from .trt import fingerprint_differences
    engines = manifest.get("engines") or {}
    need = effective == "trt"
    if not engines:
        return [Check("engines", FAIL if need else INFO,
                      "none in the bundle: build them on the device with `avqa-edge export --trt --from-bundle BUNDLE`")]
    recorded = manifest.get("fingerprint") or {}
    checks = [Check("engines", OK, f"{len(engines)}: {', '.join(engines)}; built on "
                                   + (", ".join(f"{k} {v}" for k, v in recorded.items()) or "an unrecorded device"))]
    if gpu is None:
        checks.append(Check("fingerprint", FAIL if need else WARN, "cannot check: no NVIDIA GPU visible here"))
    else:
        here = dict(gpu, tensorrt=trt_ver)
        diffs = fingerprint_differences(recorded, here)
        checks.append(Check("fingerprint", (FAIL if need else WARN) if diffs else OK,
                            "; ".join(diffs) + ". Rebuild them here: avqa-edge export --trt --from-bundle BUNDLE"
                            if diffs else "matches this device"))
    for comp, rec in engines.items():
        par = rec.get("parity") if isinstance(rec, dict) else None
        if not isinstance(par, dict) or par.get("passed") is None:
            checks.append(Check(f"parity {comp}", FAIL if backend == "trt" else WARN, "not verified"))
        else:
            detail = (f"{'passed' if par['passed'] else 'FAILED'}, {par.get('precision', '?')}"
                      + (f", report {par['report']}" if par.get("report") else ""))
            checks.append(Check(f"parity {comp}", OK if par["passed"] else (FAIL if need else WARN), detail))
    return checks


def bench_checks(bundle_dir: Path, backend: str, calls: int = 3, threads: int = 0) -> List[Check]:
    """A few calls of the bundle's pipeline on its first calibration clip: complete, and the
    camera missing (RMM + AVR). Median of `calls` after one warm-up, ms."""
    from avqa_edge.calibration.calibset import CalibrationSet

    from .pipeline import Pipeline
    try:
        calib = CalibrationSet.load(Path(bundle_dir) / "calibration")
        t = time.perf_counter()
        pipe = Pipeline.from_bundle(bundle_dir, backend=backend, threads=threads, verify=False)
        load_s = time.perf_counter() - t
    except AvqaError as e:
        return [Check("load", FAIL, str(e))]
    checks = [Check("load", OK, f"{pipe.name}: {len(pipe.runners)} graphs in {load_s:.2f} s")]
    clip = int(calib.clip[0])                                  # the first question's clip
    frames, audio, tokens = calib.frames[clip], calib.audio[clip], calib.tokens[0]
    camera_off = np.zeros(pipe.t, np.float32)
    try:
        with pipe:
            for label, mask_v in (("complete", None), ("camera missing", camera_off)):
                ms = []
                for _ in range(calls + 1):
                    t = time.perf_counter()
                    feats = pipe.encode(frames, audio, mask_v=mask_v)
                    pipe.answer_features(feats, tokens)
                    ms.append((time.perf_counter() - t) * 1e3)
                runs = sorted(ms[1:])
                checks.append(Check(f"answer, {label}", OK, f"median {runs[len(runs) // 2]:.1f} ms, "
                                                           f"min {runs[0]:.1f} ms over {calls} calls (after 1 warm-up)"))
    except AvqaError as e:
        checks.append(Check("answer", FAIL, str(e)))
    return checks


# ---- sensors -------------------------------------------------------------------------------------

def probe_sensor(sensor: str, spec: str, seconds: float = 3.0, thresholds=None) -> Check:
    """Run one sensor for `seconds` through the serving path (source, content checks, health
    monitor, reconnects): opened?, items read, bad items, errors, the health state at the end."""
    from .clock import RealClock
    from .health import CameraChecker, HealthMonitor, HealthThresholds, MicChecker
    from .sensors import SensorLink, Sensors
    from .sources import camera_factory, mic_factory
    from .window import Window
    name = f"{sensor} {spec}"
    clock = RealClock()
    th = thresholds or HealthThresholds()
    try:
        factory = camera_factory(spec, clock) if sensor == "camera" else mic_factory(spec, clock)
    except AvqaError as e:
        return Check(name, FAIL, str(e))
    limits = th.camera if sensor == "camera" else th.mic
    monitor = HealthMonitor(sensor, th.timing, limits.stall_s, clock, what="frames" if sensor == "camera" else "audio")
    checker = CameraChecker(th.camera) if sensor == "camera" else MicChecker(th.mic)
    link = SensorLink(sensor, factory, checker, monitor, Window(clock.now()), clock)
    live = Sensors({sensor: link}, clock, hang_s=max(2.0, 2 * limits.stall_s))
    live.start()
    try:
        time.sleep(seconds)
        snap = monitor.snapshot()
    finally:
        live.stop()
    what = "frames" if sensor == "camera" else "chunks"
    detail = (f"{link.description}: opened {link.opened} of {link.open_attempts} attempts; {snap['items']} {what} "
              f"in {seconds:g} s ({snap['bad_items']} flagged), {snap['errors']} errors; state {snap['state']}"
              + (f" ({snap['reason']})" if snap["reason"] else ""))
    ok = link.opened > 0 and snap["items"] > 0 and snap["state"] != "failed"
    return Check(name, OK if ok else FAIL, detail)


# ---- the whole report ----------------------------------------------------------------------------

def resolve_backend(backend: str, manifest: Optional[Dict], trt_ver: Optional[str]) -> str:
    """What `serve --backend auto` would run: TensorRT where the bundle has engines and TensorRT imports."""
    if backend != "auto":
        return backend
    return "trt" if manifest and manifest.get("engines") and trt_ver else "ort"


def run_doctor(bundle: Optional[Path] = None, camera: Optional[str] = None, mic: Optional[str] = None,
               backend: str = "auto", bench_calls: int = 3, probe_s: float = 3.0, threads: int = 0,
               log: Callable[[str], None] = lambda *_: None) -> Report:
    """Every check (see the module docstring). Problems are reported, never raised; an
    AvqaError only for options that cannot work (an unknown backend, a demo sensor)."""
    if backend not in BACKENDS:
        raise AvqaError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    for sensor, spec in (("camera", camera), ("mic", mic)):
        if spec in ("demo", "none"):
            raise AvqaError(f"doctor probes a real --{sensor} (device, file or URL), not {spec!r}")
    report = Report()
    report.add("System", system_checks())
    log("checking ONNX Runtime, TensorRT, the GPU ...")
    ort_info, trt_ver = onnxruntime_info(), tensorrt_version()
    gpu, gpu_why = gpu_facts()
    manifest, bundle_part = None, []
    if bundle is not None:
        log(f"verifying {bundle} ...")
        bundle_part, manifest = bundle_checks(Path(bundle))
    effective = resolve_backend(backend, manifest, trt_ver)
    report.add("Accelerators", accelerator_checks(backend, effective, gpu, gpu_why, ort_info, trt_ver))
    if bundle is not None:
        report.add(f"Bundle {bundle}", bundle_part)
        if manifest is not None:
            report.add("TensorRT engines", engine_checks(manifest, backend, effective, gpu, trt_ver))
            runnable = (effective == "ort" and ort_info is not None) or (effective == "trt" and trt_ver and gpu)
            if bench_calls > 0 and runnable and (manifest.get("parity") or {}).get("passed") is not False:
                log(f"bench: {bench_calls} calls per case ({effective}) ...")
                report.add(f"Bench ({effective})", bench_checks(Path(bundle), effective, bench_calls, threads))
    probes = []
    thresholds = _thresholds(bundle) if manifest is not None else None
    for sensor, spec in (("camera", camera), ("mic", mic)):
        if spec is not None:
            log(f"probing the {sensor} {spec} for {probe_s:g} s ...")
            probes.append(probe_sensor(sensor, spec, probe_s, thresholds))
    if probes:
        report.add("Sensors", probes)
    return report


def _thresholds(bundle: Path):
    """The health thresholds `serve` uses by default: fitted on the bundle's calibration set."""
    from avqa_edge.calibration.calibset import CalibrationSet
    from avqa_edge.calibration.thresholds import fit_from_calibset
    try:
        calib = CalibrationSet.load(Path(bundle) / "calibration")
    except AvqaError:
        return None
    return fit_from_calibset(calib.frames, calib.audio)
