"""One backend of `avqa-edge bench`, measured in its own process (export/bench.py starts it).

    python -m avqa_edge.export.bench_worker SPEC.json RESULT.json

SPEC names the backend ("pytorch", "ort" or "trt"), the bundle, the run (PyTorch only), the
thread count, iterations and warm-up, and the inputs the parent prepared from the bundle's
calibration set (an .npz: real clips, and each component's feed). The worker imports only
what its backend needs - the ONNX Runtime and TensorRT workers import no torch - so the
process's peak RSS (VmHWM) is that backend's. Progress lines go to stdout; the numbers go to
RESULT.json. All times are wall-clock milliseconds per call, batch 1.

What is timed:
- components: each graph alone on its calibration feed (PyTorch: the export wrapper of
  `export/components.py` under `torch.inference_mode`; ORT / TensorRT: `runner.infer`, the
  call the pipeline makes, and for ORT also the bare `InferenceSession.run`, to show the runner's
  input checks);
- end to end, per mode: raw frames uint8 + audio float32 + question tokens -> the answer.
  ORT / TensorRT: `runtime.pipeline.Pipeline.answer(..., method="rmm+avr")`, what the runtime
  serves. PyTorch: the steps of `AVQAModel.forward` with the model's own methods (question
  encoder, `encode_audio` / `encode_visual` of the present sensors with `_blank`, `pseudo`,
  `enhance`, `backbone`), timed one by one and checked against `model(...)` once;
- AVR (ORT): the unrolled S-step graph against S calls of a single-step denoiser graph with
  the DDIM update in numpy between them (the host loop the unrolled graph replaces).
"""
import json
import os
import resource
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

MODES = ("complete", "audio_pseudo", "visual_pseudo")
# mode -> (audio present, visual present); an absent sensor is absent for all T segments
MODE_SENSORS = {"complete": (True, True), "audio_pseudo": (False, True), "visual_pseudo": (True, False)}
METHOD = "rmm+avr"


# ---- memory and statistics ---------------------------------------------------------------------

def _status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident set size, MB (VmRSS; falls back to the peak where /proc is absent)."""
    kib = _status_kib("VmRSS")
    return round((kib if kib is not None else _peak_kib()) / 1024, 1)


def _peak_kib() -> int:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak    # bytes on macOS, KiB on Linux


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MB (VmHWM / ru_maxrss)."""
    return round(_peak_kib() / 1024, 1)


def stats(ms: List[float]) -> Dict:
    """p50 / p95 / mean / min / max of a list of milliseconds."""
    x = np.asarray(ms, dtype=np.float64)
    return {"p50": float(np.percentile(x, 50)), "p95": float(np.percentile(x, 95)), "mean": float(x.mean()),
            "min": float(x.min()), "max": float(x.max()), "n": int(x.size)}


def measure(fn: Callable[[int], object], n_inputs: int, warmup: int, iters: int) -> List[float]:
    """Call fn(i % n_inputs) `warmup` times, then `iters` timed times. -> ms per call."""
    for i in range(warmup):
        fn(i % n_inputs)
    out = []
    for i in range(iters):
        t0 = time.perf_counter()
        fn(i % n_inputs)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def measure_e2e(fn: Callable[[int], tuple], n_inputs: int, warmup: int, iters: int) -> Dict:
    """End-to-end timing: fn(i) -> (answer index, {component: ms}). -> stats of the wall time,
    the mean ms per component, the glue (wall minus the components) and the answers given."""
    for i in range(warmup):
        fn(i % n_inputs)
    wall, parts, answers = [], {}, {}
    for i in range(iters):
        t0 = time.perf_counter()
        idx, timings = fn(i % n_inputs)
        wall.append((time.perf_counter() - t0) * 1e3)
        for k, v in timings.items():
            parts.setdefault(k, []).append(float(v))
        answers.setdefault(i % n_inputs, int(idx))
    res = stats(wall)
    res["components_ms"] = {k: float(np.sum(v) / iters) for k, v in parts.items()}   # mean per answer
    res["glue_ms"] = res["mean"] - sum(res["components_ms"].values())
    res["answers"] = [answers[k] for k in sorted(answers)]
    return res


def log(msg: str) -> None:
    print(msg, flush=True)


# ---- inputs ------------------------------------------------------------------------------------

def load_feeds(path: str) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def component_feed(feeds: Dict[str, np.ndarray], comp: str, names: List[str], k: int) -> Dict[str, np.ndarray]:
    """The k-th calibration feed of a component: {input name: array with batch 1}."""
    return {n: feeds[f"{comp}.{n}"][k] for n in names}


def e2e_inputs(feeds: Dict[str, np.ndarray], mode: str, k: int):
    """(frames (T, F, H, W, 3) uint8 or None, audio (T*S,) float32 or None, tokens (1, L) int64)."""
    has_a, has_v = MODE_SENSORS[mode]
    return (feeds["clip.frames"][k] if has_v else None, feeds["clip.audio"][k] if has_a else None,
            feeds["clip.tokens"][k])


# ---- PyTorch -------------------------------------------------------------------------------------

def run_pytorch(spec: Dict, feeds: Dict[str, np.ndarray], result: Dict) -> None:
    """PyTorch eager: each component's wrapper, then the model's answer path end to end."""
    import torch
    n = int(spec["threads"])
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:        # already set (only possible before any parallel work)
        pass
    from avqa_edge.toolkit.checkpoint import load_model
    result["memory"]["rss_after_imports_mb"] = rss_mb()
    result["versions"]["torch"] = torch.__version__
    result["threads_effective"] = {"torch.get_num_threads": torch.get_num_threads(),
                                   "torch.get_num_interop_threads": torch.get_num_interop_threads()}
    model, _ = load_model(spec["run"])
    model.eval()
    with torch.inference_mode():
        result["components"] = _pytorch_components(model, spec, feeds, result)
        answer = _pytorch_answer(model)
        _check_answer_is_forward(model, answer, spec, feeds)
        k_in, warm, iters = int(spec["clips"]), int(spec["warmup"]), int(spec["iters"])
        e2e = {}
        for mode in spec["modes"]:
            def one(k, mode=mode):
                timings: Dict[str, float] = {}
                idx = answer(*e2e_inputs(feeds, mode, k), timings)[0]
                return idx, timings
            e2e[mode] = measure_e2e(one, k_in, warm, iters)
            log(f"  pytorch end to end {mode:<13} p50 {e2e[mode]['p50']:8.3f} ms")
        result["end_to_end"] = e2e
    result["memory"]["peak_rss_mb"] = peak_rss_mb()


def _pytorch_components(model, spec: Dict, feeds: Dict[str, np.ndarray], result: Dict) -> Dict:
    """Latency of each exported component's PyTorch wrapper on the same feeds as the graphs."""
    import torch
    from avqa_edge.export import components as C
    wrappers = {c: C.build(model, c) for c in spec["components"]}
    result["memory"]["rss_after_load_mb"] = rss_mb()
    k_in, warm, iters = int(spec["clips"]), int(spec["warmup"]), int(spec["iters"])
    comps = {}
    for comp in spec["components"]:
        mod, names = wrappers[comp], spec["io"][comp]["inputs"]
        tensors = [[torch.from_numpy(feeds[f"{comp}.{nm}"][k]) for nm in names] for k in range(k_in)]

        def call(k, mod=mod, tensors=tensors):
            out = mod(*tensors[k])
            return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]
        comps[comp] = {"infer": stats(measure(call, k_in, warm, iters))}
        log(f"  pytorch {comp:<11} p50 {comps[comp]['infer']['p50']:8.3f} ms")
    return comps


def _pytorch_answer(model):
    """AVQAModel.forward's steps (encode, fill with rmm+avr, backbone) as one function that
    times each step: answer(frames, audio, tokens, timings) -> (top index, logits, batch, masks)."""
    import torch
    from avqa_edge.toolkit.model import avqa as M
    t, c, h, w = model.cfg.t_segments, model.cfg.dim, model.cfg.map_h, model.cfg.map_w

    def answer(frames, audio, tokens, timings):
        def timed(name, fn):
            t0 = time.perf_counter()
            out = fn()
            timings[name] = timings.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
            return out
        batch = {"tokens": torch.from_numpy(tokens)}
        if frames is not None:
            batch["frames"] = torch.from_numpy(frames)[None]
        if audio is not None:
            batch["audio"] = torch.from_numpy(audio)[None]
        mask_a = torch.full((1, t), 1.0 if audio is not None else 0.0)
        mask_v = torch.full((1, t), 1.0 if frames is not None else 0.0)
        q = timed("question", lambda: model.question_encoder(batch["tokens"]))
        if bool(mask_a.any()):
            a = timed("audio", lambda: model.encode_audio(M._blank(batch, "audio", mask_a)) * mask_a[..., None])
        else:
            a = q.new_zeros(1, t, c)
        if bool(mask_v.any()):
            v = timed("visual", lambda: model.encode_visual(M._blank(batch, "visual", mask_v))
                      * mask_v[..., None, None, None])
        else:
            v = q.new_zeros(1, t, c, h, w)
        f = M.Feats(a, v, q)
        ma, mv = mask_a[..., None], mask_v[..., None, None, None]
        if model.rmm is not None:                                   # model.fill, method rmm+avr
            pa, pv = timed("rmm", lambda: model.pseudo(f))
            a, v = ma * f.a + (1 - ma) * pa, mv * f.v + (1 - mv) * pv
        if model.denoiser is not None and bool(((mask_a < 1) | (mask_v < 1)).any()):
            a, v = timed("avr", lambda: model.enhance(a, v, mask_a, mask_v))
        logits = timed("backbone", lambda: model.answer(a, v, f.q, mask_a, mask_v))   # or the video expert
        probs = torch.softmax(logits[0].double(), 0)
        top = torch.topk(probs, min(3, probs.numel()))
        return int(top.indices[0]), logits, batch, mask_a, mask_v
    return answer


def _check_answer_is_forward(model, answer, spec: Dict, feeds: Dict[str, np.ndarray]) -> None:
    """The timed steps must stay the model's own forward: checked once per mode."""
    import torch
    from avqa_edge.errors import AvqaError
    for mode in spec["modes"]:
        frames, audio, tokens = e2e_inputs(feeds, mode, 0)
        _, logits, batch, ma, mv = answer(frames, audio, tokens, {})
        want = model(batch, ma, mv, method=METHOD)
        if not torch.allclose(logits, want, atol=1e-5, rtol=1e-5):
            raise AvqaError(f"bench: the timed PyTorch steps no longer equal AVQAModel.forward in mode {mode} "
                            f"(max abs diff {float((logits - want).abs().max()):.3g}); update "
                            "export/bench_worker.py to follow toolkit/model/avqa.py")


# ---- ONNX Runtime / TensorRT ---------------------------------------------------------------------

def _session_options(runner) -> Dict:
    try:
        so = runner.ort_session.get_session_options()
        return {"graph_optimization_level": str(so.graph_optimization_level), "execution_mode": str(so.execution_mode),
                "intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": so.inter_op_num_threads,
                "providers": runner.ort_session.get_providers()}
    except AttributeError:
        return {}


def ConfiguredOrtRunner(path, config: Dict[str, str], threads: int, name: str):
    """runtime.runners.OrtRunner with extra ONNX Runtime config entries (`--ort-config`,
    e.g. runtime.runners.SPIN_KEY=1), to try an option before changing the runtime."""
    from avqa_edge.runtime.runners import OrtRunner
    return OrtRunner(path, threads=threads, name=name, session_config=config)


def avr_host_loop(step, feed: Dict[str, np.ndarray], alpha_bar: np.ndarray, steps: np.ndarray, noise: np.ndarray):
    """`toolkit.model.diffusion.reverse` with S separate calls of the single-step denoiser graph
    (x, t -> eps) and the DDIM update in numpy between them, like `AvrGraph` around it.
    alpha_bar, steps: the reverse grid (S+1,), index k = the k-th step from the end.
    -> (a_out (1, T, C), v_out (1, T, C, H', W'))."""
    a, v = feed["a"], feed["v"]
    b, t, c, h, w = v.shape
    x_start = np.concatenate([np.broadcast_to(a[..., None, None], (b, t, c, h, w)), v], axis=2)
    x_start = x_start.reshape(b * t, 2 * c, h, w)                                       # (T, 2C, H', W')
    known = np.concatenate([np.broadcast_to(feed["known_a"][..., None], (b, t, c)),
                            np.broadcast_to(feed["known_v"][..., None], (b, t, c))], axis=2)
    known = known.reshape(b * t, 2 * c, 1, 1)                                          # (T, 2C, 1, 1)
    s = alpha_bar.shape[0] - 1
    sq, sq1 = np.sqrt(alpha_bar), np.sqrt(np.float32(1) - alpha_bar)                    # float32, as in torch
    x = sq[s] * x_start + sq1[s] * noise
    x0 = x_start
    for k in range(s, 0, -1):
        eps = step.infer({"x": x, "t": np.full((b * t,), steps[k], np.float32)})["eps"]
        x0 = (x - sq1[k] * eps) / sq[k]
        x0 = known * x_start + (1 - known) * x0
        x = sq[k - 1] * x0 + sq1[k - 1] * eps
    out = x0.reshape(b, t, 2 * c, h, w)
    return out[:, :, :c].mean(axis=(-1, -2)), np.ascontiguousarray(out[:, :, c:])


def run_graphs(spec: Dict, feeds: Dict[str, np.ndarray], result: Dict) -> None:
    """ONNX Runtime (backend "ort") or TensorRT engines (backend "trt") through the pipeline."""
    backend = spec["backend"]
    if backend == "ort":
        import onnxruntime
        result["versions"]["onnxruntime"] = onnxruntime.__version__
    result["memory"]["rss_after_imports_mb"] = rss_mb()
    if "torch" in sys.modules:
        result["notes"].append("torch was imported in this process: its memory is part of the figures")
    pipe = _open_pipeline(spec, result)
    if pipe is None:
        return
    step = _open_step_graph(spec)
    result["memory"]["rss_after_load_mb"] = rss_mb()
    if backend == "ort":
        result["session_options"] = _session_options(pipe.runners["avr"])
        result["session_options"]["config_entries"] = dict(spec.get("ort_config") or {})
    with pipe:
        result["components"] = _graph_components(pipe, spec, feeds)
        e2e = {}
        for mode in spec["modes"]:
            def one(k, mode=mode):
                frames, audio, tokens = e2e_inputs(feeds, mode, k)
                ans = pipe.answer(frames, audio, tokens[0], method=METHOD)
                return ans.index, {n: x for n, x in ans.timings_ms.items() if n != "total"}
            e2e[mode] = measure_e2e(one, int(spec["clips"]), int(spec["warmup"]), int(spec["iters"]))
            log(f"  {backend} end to end {mode:<13} p50 {e2e[mode]['p50']:8.3f} ms")
        result["end_to_end"] = e2e
        if step is not None:
            with step:
                result["avr_steps"] = _avr_step_calls(pipe, step, spec, feeds, result["components"]["avr"]["infer"])
    result["memory"]["peak_rss_mb"] = peak_rss_mb()


def _open_pipeline(spec: Dict, result: Dict):
    """The runtime's Pipeline on the bundle's graphs or engines; None (and the reason in
    `result`) where TensorRT engines are listed but cannot run here."""
    from avqa_edge.errors import AvqaError
    from avqa_edge.runtime.pipeline import Pipeline
    backend, threads, config = spec["backend"], int(spec["threads"]), dict(spec.get("ort_config") or {})
    factory = None
    if backend == "ort" and config:
        def factory(comp, b):
            return ConfiguredOrtRunner(b.graph_path(comp, spec["precision"]), config, threads=threads, name=comp)
    try:
        pipe = Pipeline.from_bundle(spec["bundle"], backend=backend, precision=spec["precision"], threads=threads,
                                    verify=False, allow_failed_parity=True, runner_factory=factory)
    except AvqaError as e:
        if backend == "trt":                 # engines listed but not runnable here: say why, no numbers
            result["available"] = False
            result["reason"] = f"not available: {e}"
            return None
        raise
    result["available"] = True
    if backend == "trt":
        try:
            import tensorrt
            result["versions"]["tensorrt"] = tensorrt.__version__
        except ImportError:
            pass
    return pipe


def _open_step_graph(spec: Dict):
    """The single-step denoiser graph (ONNX Runtime, FP32 only), or None."""
    if spec["backend"] != "ort" or not spec.get("step_graph"):
        return None
    from avqa_edge.runtime.runners import OrtRunner
    threads, config = int(spec["threads"]), dict(spec.get("ort_config") or {})
    if config:
        return ConfiguredOrtRunner(spec["step_graph"], config, threads=threads, name="denoiser_step")
    return OrtRunner(spec["step_graph"], threads=threads, name="denoiser_step")


def _graph_components(pipe, spec: Dict, feeds: Dict[str, np.ndarray]) -> Dict:
    """Latency of each component's runner (and, for ONNX Runtime, of the bare run call)."""
    backend = spec["backend"]
    k_in, warm, iters = int(spec["clips"]), int(spec["warmup"]), int(spec["iters"])
    comps = {}
    for comp in spec["components"]:
        runner, names = pipe.runners[comp], spec["io"][comp]["inputs"]
        fs = [component_feed(feeds, comp, names, k) for k in range(k_in)]
        comps[comp] = {"infer": stats(measure(lambda k, r=runner, fs=fs: r.infer(fs[k]), k_in, warm, iters))}
        if backend == "ort":
            sess = runner.ort_session
            comps[comp]["session_run"] = stats(measure(lambda k, s=sess, fs=fs: s.run(None, fs[k]), k_in, warm, iters))
        log(f"  {backend} {comp:<11} p50 {comps[comp]['infer']['p50']:8.3f} ms")
    return comps


def _avr_step_calls(pipe, step, spec: Dict, feeds: Dict[str, np.ndarray], unrolled: Dict) -> Dict:
    """The AVR reverse process as S single-step calls with the update on the host, against the
    unrolled graph: latency and the largest output difference."""
    k_in, warm, iters = int(spec["clips"]), int(spec["warmup"]), int(spec["iters"])
    fs = [component_feed(feeds, "avr", spec["io"]["avr"]["inputs"], k) for k in range(k_in)]
    ab, ts, noise = feeds["avr.alpha_bar"], feeds["avr.t"], feeds["avr.noise"]
    loop = stats(measure(lambda k: avr_host_loop(step, fs[k], ab, ts, noise), k_in, warm, iters))
    diff = 0.0
    for k in range(k_in):
        want = pipe.runners["avr"].infer(fs[k])
        got = avr_host_loop(step, fs[k], ab, ts, noise)
        diff = max(diff, float(np.abs(got[0] - want["a_out"]).max()), float(np.abs(got[1] - want["v_out"]).max()))
    log(f"  {spec['backend']} AVR as {ab.shape[0] - 1} step calls p50 {loop['p50']:8.3f} ms "
        f"(unrolled {unrolled['p50']:.3f} ms, max abs diff {diff:.2e})")
    return {"unrolled": unrolled, "step_calls": loop, "steps": int(ab.shape[0] - 1), "max_abs_diff_vs_unrolled": diff}


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m avqa_edge.export.bench_worker SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = json.loads(open(argv[0]).read())
    t0 = time.perf_counter()
    result = {"backend": spec["backend"], "pid": os.getpid(), "threads": int(spec["threads"]),
              "memory": {}, "versions": {"numpy": np.__version__}, "notes": []}
    feeds = load_feeds(spec["feeds"])
    if spec["backend"] == "pytorch":
        run_pytorch(spec, feeds, result)
    else:
        run_graphs(spec, feeds, result)
    result["imported_torch"] = "torch" in sys.modules
    result["seconds"] = round(time.perf_counter() - t0, 2)
    with open(argv[1], "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as e:      # the parent shows this line (AvqaError messages are meant for users)
        print(f"bench worker error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
