"""`avqa-edge bench BUNDLE`: latency and memory, PyTorch eager vs ONNX Runtime (vs TensorRT).

Batch 1, one question about one 10-segment clip, inputs from the bundle's calibration set
(real clips). Every backend runs in its own process (export/bench_worker.py), one after the
other, so each process's peak RSS is that backend's alone and no two measurements share
the CPU; both are pinned to the same thread count (PyTorch: `torch.set_num_threads(N)`,
inter-op 1; ONNX Runtime: intra-op N, inter-op 1, as `runtime.runners.OrtRunner` sets them;
OMP_NUM_THREADS=N in both).

Measured, p50 / p95 after warm-up:
- each component graph alone, on its calibration feed;
- end to end, from raw frames (uint8) + audio (float32) + question tokens to the answer, in
  three modes: `complete`, `audio_pseudo` (audio absent for all T segments: its encoder is
  not run, RMM recalls pseudo audio, AVR refines) and `visual_pseudo`; with the time spent in
  each component, the rest being host code between the graphs ("glue");
- the AVR reverse process three ways: PyTorch's loop (S U-Net calls), ONNX Runtime calling
  a single-step denoiser graph S times with the DDIM update in numpy (exported here into a
  temporary directory), and the bundle's unrolled S-step graph.
Speed-ups are PyTorch p50 / other backend p50, both measured in this run.

Timings depend on what else runs on the machine: the report records the load average
before and after; take figures to publish on a quiet machine.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from avqa_edge import __version__
from avqa_edge.calibration.calibset import CalibrationSet
from avqa_edge.errors import AvqaError
from avqa_edge.runtime import signal as sig
from avqa_edge.runtime.atomic import write_json
from avqa_edge.runtime.bundle import PRECISIONS, Bundle

from .bench_worker import METHOD, MODES

Log = Callable[[str], None]
GOAL, STRETCH = 2.0, 3.0          # ORT end to end >= 2x PyTorch eager in each mode (3x: stretch)
MODE_TEXT = {"complete": "complete (both sensors)", "audio_pseudo": "audio pseudo (no audio: RMM + AVR)",
             "visual_pseudo": "visual pseudo (no video: RMM + AVR)"}
BACKEND_TEXT = {"pytorch": "PyTorch eager", "ort": "ONNX Runtime", "trt": "TensorRT"}
# end-to-end time split into these groups ("where the time goes")
GROUPS = ("audio", "visual", "question", "rmm", "avr", "backbone", "glue")
GROUP_TEXT = {"audio": "audio encoder (log-mel incl.)", "visual": "visual encoder", "question": "question encoder",
              "rmm": "RMM pseudo features", "avr": "AVR (10 reverse steps)", "backbone": "backbone",
              "glue": "glue: host code between graphs"}
DEFINITIONS = {
    "ms": "wall-clock milliseconds per call, batch 1 (one question about one clip)",
    "p50/p95": "median / 95th percentile over `iters` timed calls after `warmup` untimed ones, cycling over `clips` "
               "calibration clips",
    "speedup": "PyTorch p50 / backend p50, both from this run",
    "components": "each graph alone on its calibration feed; PyTorch: the export wrapper (export/components.py) under "
                  "torch.inference_mode; ORT/TRT 'infer': runner.infer (what the pipeline calls, with its input "
                  "checks); ORT 'session_run': the bare InferenceSession.run",
    "end_to_end": "raw frames uint8 + audio float32 + question tokens -> answer; ORT/TRT: runtime.pipeline."
                  "Pipeline.answer(method='rmm+avr'); PyTorch: AVQAModel.forward's steps with the model's own methods "
                  "(checked equal to model(...)); components_ms: mean ms per answer in each component; glue_ms: mean "
                  "wall minus the components (numpy/torch glue, input checks, masks, softmax)",
    "pytorch rmm": "PyTorch's model.fill calls model.pseudo, which computes both pseudo features (also in the "
                   "complete mode); the runtime runs only the RMM graph of the absent sensor",
    "memory": "per backend process: VmRSS after imports, after loading the model / sessions, and the peak (VmHWM); "
              "the ORT process also holds the single-step denoiser graph of the AVR comparison (< 1 MB)",
    "avr_steps": "ORT: the bundle's unrolled S-step graph vs S calls of a single-step denoiser graph (x, t -> eps) "
                 "with the DDIM update in numpy; PyTorch: the same reverse() loop in eager mode",
}


# ---- machine ---------------------------------------------------------------------------------------

def machine_info() -> Dict:
    """CPU model, cores (logical, usable by this process, cgroup quota), memory, OS."""
    info = {"cpu_model": platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["usable_cores"] = os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        info["cgroup_cpu_quota_cores"] = None if quota == "max" else round(int(quota) / int(period), 2)
    except (OSError, ValueError):
        pass
    try:
        kib = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
        info["memory_gb"] = round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    return info


def default_threads() -> int:
    """The cores this process may use (the bench pins both backends to this by default)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _load() -> List[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---- preparation (in the parent, which has torch) -----------------------------------------------------

def validate_arguments(threads: int, iters: int, warmup: int, precision: str, clips: int) -> None:
    if threads < 1:
        raise AvqaError(f"--threads must be >= 1 (got {threads})")
    if iters < 1:
        raise AvqaError(f"--iters must be >= 1 (got {iters})")
    if warmup < 0:
        raise AvqaError(f"--warmup must be >= 0 (got {warmup})")
    if precision not in PRECISIONS:
        raise AvqaError(f"--precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if clips < 1:
        raise AvqaError(f"--clips must be >= 1 (got {clips})")


def _resolve_run(bundle: Bundle, run_dir) -> Path:
    run = Path(run_dir) if run_dir is not None else Path((bundle.manifest.get("run") or {}).get("dir") or "")
    if not str(run) or str(run) == "." or not run.is_dir():
        raise AvqaError(f"bench compares with PyTorch and needs the run the bundle came from; {run} not found: "
                        "pass --run RUN_DIR")
    return run


def prepare_feeds(model, calib: CalibrationSet, clips: int, path: Path) -> int:
    """Write the inputs both workers use: the first question of each of the first `clips`
    calibration clips, and each component's feed computed from them with the PyTorch
    wrappers (encoders and RMM on real features; AVR on RMM-filled pairs, audio missing for
    even clips, video for odd ones; backbone on the complete features; a video expert on the
    audio with the recalled video). -> clips used."""
    import torch

    from . import components as C
    first = [qs[0] for qs in calib.questions_of_clip() if qs][:clips]
    if not first:
        raise AvqaError("the bundle's calibration set holds no questions")
    specs = C.io_specs(model)
    w = {c: C.build(model, c) for c in C.components_of(model)}
    feeds: Dict[str, List[np.ndarray]] = {}

    def put(key: str, x) -> None:
        feeds.setdefault(key, []).append(np.ascontiguousarray(x.numpy() if hasattr(x, "numpy") else x))

    t = model.cfg.t_segments
    with torch.inference_mode():
        for k, qi in enumerate(first):
            clip = int(calib.clip[qi])
            frames = calib.frames[clip]                                         # (T, F, H, W, 3) uint8
            audio = sig.pcm16_to_float(calib.audio[clip]).astype(np.float32)  # (T*S,)
            tokens = calib.tokens[qi:qi + 1]                                    # (1, L)
            put("clip.frames", frames)
            put("clip.audio", audio)
            put("clip.tokens", tokens)
            tf, ta, tq = torch.from_numpy(frames[None]), torch.from_numpy(audio[None]), torch.from_numpy(tokens)
            v, a, q = w["visual"](tf), w["audio"](ta), w["question"](tq)
            pa, pv = w["rmm_audio"](v, q), w["rmm_visual"](a, q)
            known_a = torch.full((1, t), 0.0 if k % 2 == 0 else 1.0)
            known_v = 1 - known_a
            fill = {"visual": {"frames": tf}, "audio": {"audio": ta}, "question": {"tokens": tq},
                    "rmm_audio": {"v": v, "q": q}, "rmm_visual": {"a": a, "q": q},
                    "avr": {"a": pa if k % 2 == 0 else a, "v": v if k % 2 == 0 else pv,
                            "known_a": known_a, "known_v": known_v},
                    "backbone": {"a": a, "v": v, "q": q},
                    "video_expert": {"a": a, "v": pv, "q": q}}        # the video recalled throughout
            for comp in w:
                for s in specs[comp][0]:
                    put(f"{comp}.{s.name}", fill[comp][s.name])
    arrays = {k: np.stack(v) for k, v in feeds.items()}                         # leading axis: the clip
    alpha_bar, steps = model.schedule.grid()                                             # the reverse grid, (S+1,) each
    arrays["avr.alpha_bar"] = alpha_bar.detach().numpy().astype(np.float32)
    arrays["avr.t"] = steps.detach().numpy().astype(np.float32)
    arrays["avr.noise"] = model.avr_noise.detach().numpy().astype(np.float32)                # (T, 2C, H', W')
    np.savez(path, **arrays)
    return len(first)


def export_step_graph(model, path: Path, threads: int) -> Dict:
    """The AVR denoiser as a single-step graph (x (T, 2C, H', W'), t (T,) float32 -> eps), for the
    unrolled-vs-separate-calls comparison; checked against PyTorch at the first and last step."""
    import torch

    from . import onnx_export as OX
    from avqa_edge.runtime.runners import OrtRunner

    class DenoiserStep(torch.nn.Module):
        def __init__(self, denoiser):
            super().__init__()
            self.denoiser = denoiser

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.denoiser(x, t)

    cfg = model.cfg
    module = DenoiserStep(model.denoiser).eval()
    x = torch.randn(cfg.t_segments, 2 * cfg.dim, cfg.map_h, cfg.map_w, generator=torch.Generator().manual_seed(0))
    _, grid = model.schedule.grid()                                                  # (S+1,) the reverse steps
    args = (x, torch.full((cfg.t_segments,), float(grid[-1])))
    t0 = time.perf_counter()
    OX._export_once(module, args, path, ["x", "t"], ["eps"], OX.OPSET, dynamo=False)
    seconds = time.perf_counter() - t0
    diff = 0.0
    with OrtRunner(path, threads=threads, name="denoiser_step") as r, torch.inference_mode():
        if list(r.input_spec()) != ["x", "t"]:
            raise AvqaError(f"the single-step denoiser graph takes {list(r.input_spec())}, expected ['x', 't']")
        for step in (1, cfg.diffusion_steps):
            tt = torch.full((cfg.t_segments,), float(grid[step]))
            got = r.infer({"x": x.numpy(), "t": tt.numpy()})["eps"]
            diff = max(diff, float(np.abs(got - module(x, tt).numpy()).max()))
    if not diff < 1e-4:
        raise AvqaError(f"the single-step denoiser graph differs from PyTorch by {diff:.3g}")
    return {"file": "(temporary) denoiser_step.onnx", "export_seconds": round(seconds, 2), "max_abs_diff_vs_pytorch": diff}


def _run_worker(backend: str, spec: Dict, tmp: Path, log: Log) -> Dict:
    """Run export/bench_worker.py for one backend in a fresh Python process. -> its result."""
    spec = dict(spec, backend=backend)
    spec_path, out_path = tmp / f"{backend}.spec.json", tmp / f"{backend}.result.json"
    spec_path.write_text(json.dumps(spec))
    n = str(spec["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n)
    cmd = [sys.executable, "-m", "avqa_edge.export.bench_worker", str(spec_path), str(out_path)]
    lines: List[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        if line.startswith("  "):
            log(line)
    rc = proc.wait()
    if rc != 0 or not out_path.is_file():
        tail = "\n".join(lines[-12:])
        raise AvqaError(f"the {BACKEND_TEXT[backend]} bench process failed (exit code {rc}):\n{tail}")
    return json.loads(out_path.read_text())


# ---- the report ------------------------------------------------------------------------------------

def _group(name: str) -> str:
    return "rmm" if name.startswith("rmm") else "backbone" if name == "video_expert" else name


def shares(e2e: Dict) -> Dict:
    """{group: {"ms", "share"}} of one end-to-end result: mean ms per answer and its fraction
    of the mean end-to-end time (means add up; medians do not)."""
    ms = {g: 0.0 for g in GROUPS}
    for name, x in e2e["components_ms"].items():
        ms[_group(name)] += x
    ms["glue"] = e2e["glue_ms"]
    total = e2e["mean"]
    return {g: {"ms": ms[g], "share": (ms[g] / total if total > 0 else 0.0)} for g in GROUPS}


def _ratio(a: float, b: float) -> Optional[float]:
    return a / b if b > 0 else None


def assemble(results: Dict[str, Dict], meta: Dict) -> Dict:
    """The report: the workers' numbers, speed-ups against PyTorch, time shares, the AVR
    comparison, answer agreement and the goal check."""
    torch_res = results["pytorch"]
    speedups: Dict[str, Dict] = {}
    agree: Dict[str, Dict] = {}
    for backend, res in results.items():
        if backend == "pytorch" or not res.get("available", True):
            continue
        speedups[backend] = {
            "components": {c: _ratio(torch_res["components"][c]["infer"]["p50"], res["components"][c]["infer"]["p50"])
                           for c in res["components"]},
            "end_to_end": {m: _ratio(torch_res["end_to_end"][m]["p50"], res["end_to_end"][m]["p50"])
                           for m in res["end_to_end"]},
        }
        agree[backend] = {m: float(np.mean(np.equal(torch_res["end_to_end"][m]["answers"], res["end_to_end"][m]["answers"])))
                          for m in res["end_to_end"]}
    report = dict(meta)
    report["backends"] = results
    report["speedups"] = speedups
    report["answers_agree_with_pytorch"] = agree
    report["shares"] = {b: {m: shares(e) for m, e in r["end_to_end"].items()}
                        for b, r in results.items() if r.get("available", True)}
    ort = results.get("ort", {})
    if "avr_steps" in ort:
        s = ort["avr_steps"]
        torch_loop = torch_res["components"]["avr"]["infer"]
        report["avr_steps"] = {
            "steps": s["steps"],
            "pytorch_loop": torch_loop, "ort_step_calls": s["step_calls"], "ort_unrolled": s["unrolled"],
            "step_calls_over_unrolled": _ratio(s["step_calls"]["p50"], s["unrolled"]["p50"]),
            "pytorch_over_unrolled": _ratio(torch_loop["p50"], s["unrolled"]["p50"]),
            "pytorch_over_step_calls": _ratio(torch_loop["p50"], s["step_calls"]["p50"]),
            "max_abs_diff_step_calls_vs_unrolled": s["max_abs_diff_vs_unrolled"],
        }
    if "ort" in speedups:
        e2e = speedups["ort"]["end_to_end"]
        report["goal"] = {"statement": f"ONNX Runtime end to end >= {GOAL:g}x PyTorch eager in each mode "
                                       f"({STRETCH:g}x is the stretch goal)",
                          "target": GOAL, "stretch": STRETCH,
                          "modes": {m: {"speedup": r, "met": bool(r is not None and r >= GOAL),
                                        "stretch_met": bool(r is not None and r >= STRETCH)} for m, r in e2e.items()},
                          "met": all(r is not None and r >= GOAL for r in e2e.values())}
    report["definitions"] = DEFINITIONS
    return report


def parse_ort_config(items: Optional[List[str]]) -> Dict[str, str]:
    """["KEY=VALUE", ...] -> {key: value}."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise AvqaError(f"--ort-config takes KEY=VALUE (an ONNX Runtime config entry), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def run_bench(bundle_dir, run_dir=None, threads: int = 0, iters: int = 200, warmup: int = 20,
              precision: str = "fp32", clips: int = 8, json_path=None, log: Log = print,
              ort_config: Optional[Dict[str, str]] = None) -> Dict:
    """Measure PyTorch eager, ONNX Runtime (and TensorRT where the bundle has engines), each
    in its own process; write the JSON report to `json_path` if given. -> the report.

    ort_config: extra ONNX Runtime config entries for the ORT process (default none:
    the runtime's own OrtRunner options), to try an option before changing the runtime."""
    threads = threads or default_threads()
    validate_arguments(threads, iters, warmup, precision, clips)
    ort_config = dict(ort_config or {})
    bundle = Bundle.open(bundle_dir, verify=True)
    run = _resolve_run(bundle, run_dir)
    model, config = _load_matching_model(bundle, run)
    calib = CalibrationSet.load(bundle.path / bundle.manifest["calibration"]["dir"])
    notes, load_start = _notes_before(bundle)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="avqa-bench-") as tmp_name:
        tmp = Path(tmp_name)
        n_clips = prepare_feeds(model, calib, clips, tmp / "feeds.npz")
        step = None
        if precision == "fp32":      # the step graph is FP32: compare it with the FP32 unrolled graph only
            step = export_step_graph(model, tmp / "denoiser_step.onnx", threads)
        else:
            notes.append("the AVR unrolled-vs-step-calls comparison runs with --precision fp32 only")
        from . import components as C
        io = {c: {"inputs": [s.name for s in ins], "outputs": [s.name for s in outs]}
              for c, (ins, outs) in C.io_specs(model).items()}
        spec = {"bundle": str(Path(bundle_dir).resolve()), "run": str(run.resolve()), "precision": precision,
                "threads": threads, "iters": iters, "warmup": warmup, "clips": n_clips, "feeds": str(tmp / "feeds.npz"),
                "step_graph": str(tmp / "denoiser_step.onnx") if step else None, "components": list(bundle.graphs), "modes": list(MODES),
                "io": io, "ort_config": ort_config}
        del model
        log(f"bench: {bundle_dir}, {threads} thread(s), {warmup} warm-up + {iters} timed calls per row, "
            f"{n_clips} calibration clips; each backend in its own process")
        results = _measure_backends(bundle, run, spec, tmp, log)
    versions = {"avqa_edge": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for r in results.values():
        versions.update(r.get("versions", {}))
    meta = {"kind": "avqa-edge-bench", "format": 1,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "bundle": str(Path(bundle_dir).resolve()), "run": str(run.resolve()),
            "model_hash": (bundle.manifest.get("run") or {}).get("model_hash") or config.get("model_hash"),
            "config_hash": bundle.manifest.get("config_hash"),
            "threads": threads, "iters": iters, "warmup": warmup, "clips": n_clips, "batch": 1, "method": METHOD,
            "modes": list(MODES), "components": list(bundle.graphs),
            "precision": {"pytorch": "fp32", "ort": precision, "trt": "fp16 engines"}, "ort_config": ort_config,
            "machine": machine_info(), "load_average": {"start": load_start, "end": _load()},
            "versions": versions, "denoiser_step_graph": step, "seconds": round(time.perf_counter() - t_start, 1),
            "notes": notes}
    report = assemble(results, meta)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(json_path, report)
    return report


def _load_matching_model(bundle: Bundle, run: Path):
    """The PyTorch model of `run`, refused unless it is the bundle's model."""
    from ..toolkit.checkpoint import load_model
    from . import components as C
    model, config = load_model(run)
    if model.cfg.hash() != bundle.manifest.get("config_hash"):
        raise AvqaError(f"the run {run} has model config {model.cfg.hash()}, the bundle {bundle.manifest.get('config_hash')}: "
                        "not the same model")
    C.check_exportable(model)
    return model, config


def _notes_before(bundle: Bundle):
    """-> (notes that qualify the numbers, the 1-minute load average at the start)."""
    notes = []
    if bundle.parity_passed is False:
        notes.append("this bundle FAILED its parity gate at export: these are the speeds of graphs whose answers "
                     "differ from PyTorch's")
    load_start = _load()
    if load_start and load_start[0] >= 1.0:
        notes.append(f"1-minute load average {load_start[0]} before the bench started, on "
                     f"{machine_info().get('usable_cores')} core(s): if that work was still running, the timings are "
                     "disturbed")
    return notes, load_start


def _measure_backends(bundle: Bundle, run: Path, spec: Dict, tmp: Path, log: Log) -> Dict[str, Dict]:
    """Each backend in its own worker process: PyTorch, ONNX Runtime, TensorRT where possible."""
    engines = bundle.manifest.get("engines") or {}
    results: Dict[str, Dict] = {}
    log(f"PyTorch eager (fp32, torch.inference_mode), run {run}")
    results["pytorch"] = _run_worker("pytorch", spec, tmp, log)
    log(f"ONNX Runtime ({spec['precision']} graphs, CPUExecutionProvider"
        + (f", config {spec['ort_config']}" if spec["ort_config"] else "") + ")")
    results["ort"] = _run_worker("ort", spec, tmp, log)
    if set(bundle.graphs) <= set(engines):
        log("TensorRT (the bundle's engines)")
        try:
            results["trt"] = _run_worker("trt", spec, tmp, log)
        except AvqaError as e:         # optional: report why, keep the other numbers
            results["trt"] = {"backend": "trt", "available": False, "reason": f"not available: {e}"}
    else:
        why = "no engines in bundle" if not engines else f"engines for {sorted(engines)} only (the pipeline needs {list(bundle.graphs)})"
        results["trt"] = {"backend": "trt", "available": False, "reason": f"not available: {why}"}
    return results


# ---- printing ------------------------------------------------------------------------------------

def _ms(x: Optional[float]) -> str:
    return "-" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.2f}")


def _x(r: Optional[float]) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _others(report: Dict) -> List[str]:
    """The backends compared with PyTorch that produced numbers."""
    return [b for b in ("ort", "trt") if b in report["backends"] and report["backends"][b].get("available", True)]


def _short(b: str) -> str:
    return {"pytorch": "PyTorch", "ort": "ORT", "trt": "TRT"}[b]


def latency_table(report: Dict):
    from rich.table import Table
    res, others = report["backends"], _others(report)
    table = Table(title=f"latency per answer, batch 1, {report['threads']} thread(s), ms after {report['warmup']} "
                        f"warm-up calls ({report['iters']} timed)",
                  caption="speed-up = PyTorch p50 / backend p50, same run; ORT runs the "
                          f"{report['precision']['ort']} graphs; peak RSS: each backend's own process")
    table.add_column("component / mode")
    table.add_column("PyTorch p50", justify="right")
    table.add_column("p95", justify="right")
    for b in others:
        table.add_column(f"{_short(b)} p50", justify="right")
        table.add_column("p95", justify="right")
        table.add_column("speed-up", justify="right")
    t = res["pytorch"]
    for c in report["components"]:
        row = [c, _ms(t["components"][c]["infer"]["p50"]), _ms(t["components"][c]["infer"]["p95"])]
        for b in others:
            s = res[b]["components"][c]["infer"]
            row += [_ms(s["p50"]), _ms(s["p95"]), _x(report["speedups"][b]["components"][c])]
        table.add_row(*row)
    table.add_section()
    for m in report["modes"]:
        row = [f"[b]end to end {m}[/b]", _ms(t["end_to_end"][m]["p50"]), _ms(t["end_to_end"][m]["p95"])]
        for b in others:
            s, r = res[b]["end_to_end"][m], report["speedups"][b]["end_to_end"][m]
            ok = "" if b != "ort" else (" [green]ok[/green]" if r is not None and r >= GOAL else " [red]<2x[/red]")
            row += [_ms(s["p50"]), _ms(s["p95"]), f"[b]{_x(r)}[/b]{ok}"]
        table.add_row(*row)
    table.add_section()
    row = ["peak RSS, MB", f"{t['memory']['peak_rss_mb']:.0f}", ""]
    for b in others:
        pk = res[b]["memory"]["peak_rss_mb"]
        row += [f"{pk:.0f}", "", f"{t['memory']['peak_rss_mb'] / pk:.1f}x less" if pk else "-"]
    table.add_row(*row)
    return table


def memory_table(report: Dict):
    from rich.table import Table
    res = report["backends"]
    table = Table(title="processes: each backend measured in its own")
    for col in ("backend", "pid", "RSS after imports MB", "after loading MB", "peak RSS MB", "seconds"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for b in ["pytorch"] + _others(report):
        m = res[b]["memory"]
        table.add_row(BACKEND_TEXT[b], str(res[b]["pid"]), f"{m.get('rss_after_imports_mb', 0):.0f}",
                      f"{m.get('rss_after_load_mb', 0):.0f}", f"{m['peak_rss_mb']:.0f}", f"{res[b].get('seconds', 0):.1f}")
    return table


def where_table(report: Dict):
    from rich.table import Table
    res = report["backends"]
    cols = [(m, b) for m in report["modes"] for b in ["pytorch"] + _others(report)]
    table = Table(title="where the time goes: mean ms per answer and share of end to end",
                  caption="glue = end to end minus the components: host code between the graphs "
                          "(masks, blanking, casts, input checks, softmax); PyTorch's RMM computes both pseudo "
                          "features, as model.fill does")
    table.add_column("part")
    for m, b in cols:
        table.add_column(f"{m}\n{_short(b)}", justify="right")
    for g in GROUPS:
        cells = []
        for m, b in cols:
            s = report["shares"][b][m][g]
            cells.append("-" if s["ms"] == 0 else f"{s['ms']:.2f} {s['share']:.0%}")
        table.add_row(GROUP_TEXT[g], *cells)
    table.add_section()
    table.add_row("[b]end to end, mean[/b]", *[f"{res[b]['end_to_end'][m]['mean']:.2f}" for m, b in cols])
    return table


def avr_table(report: Dict):
    from rich.table import Table
    a = report["avr_steps"]
    s = a["steps"]
    table = Table(title=f"AVR, {s} reverse steps on all T segments: one unrolled graph vs {s} separate calls")
    for col in ("how", "p50 ms", "p95 ms", "/ ORT unrolled", "max abs diff"):
        table.add_column(col, justify="left" if col == "how" else "right")
    u = a["ort_unrolled"]["p50"]
    table.add_row(f"PyTorch eager reverse() loop ({s} U-Net calls)", _ms(a["pytorch_loop"]["p50"]),
                  _ms(a["pytorch_loop"]["p95"]), _x(a["pytorch_over_unrolled"]), "reference")
    table.add_row(f"ORT: {s} calls of a 1-step denoiser graph, DDIM update in numpy", _ms(a["ort_step_calls"]["p50"]),
                  _ms(a["ort_step_calls"]["p95"]), _x(a["step_calls_over_unrolled"]),
                  f"{a['max_abs_diff_step_calls_vs_unrolled']:.1e}")
    table.add_row("ORT: the bundle's unrolled graph (avr.onnx), 1 call", _ms(u), _ms(a["ort_unrolled"]["p95"]),
                  "1.00x", "")
    return table


def tables(report: Dict) -> List:
    """Rich tables: latency (components, end to end, peak memory), processes, where the time
    goes, and the AVR comparison."""
    out = [latency_table(report), memory_table(report), where_table(report)]
    if "avr_steps" in report:
        out.append(avr_table(report))
    return out


def summary_lines(report: Dict) -> List[str]:
    """The goal check, TensorRT's status, answer agreement and the conditions of the run."""
    lines = []
    g = report.get("goal")
    if g:
        parts = [f"{m} {_x(v['speedup'])}{'' if v['met'] else ' NOT MET'}" for m, v in g["modes"].items()]
        lines.append(f"goal: {g['statement']}: {', '.join(parts)} -> {'MET' if g['met'] else 'NOT MET'}")
    trt = report["backends"].get("trt", {})
    if not trt.get("available", True):
        lines.append(f"TensorRT: {trt.get('reason')}")
    for b, modes in report["answers_agree_with_pytorch"].items():
        lines.append(f"answers, {_short(b)} vs PyTorch on the bench clips: "
                     + ", ".join(f"{m} {v:.0%}" for m, v in modes.items()))
    lines += [f"note: {n}" for n in report.get("notes", [])]
    if report.get("ort_config"):
        lines.append(f"ONNX Runtime config entries added for this run: {report['ort_config']}")
    mach, la = report["machine"], report["load_average"]
    lines.append(f"machine: {mach.get('cpu_model')}, {mach.get('usable_cores')} usable core(s) of "
                 f"{mach.get('logical_cores')}; load average (1/5/15 min) {la['start']} before, {la['end']} after. "
                 "Other jobs on the machine disturb these figures: publish numbers from a quiet machine.")
    return lines
