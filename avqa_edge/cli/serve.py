"""`avqa-edge serve`: torch-free live serving.

Nothing here imports torch or the training code: the serving path is numpy, ONNX Runtime
(or TensorRT), OpenCV, sounddevice / soundfile and FastAPI, each imported where needed.
"""
import json
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ..errors import AvqaError, ConfigError
from ._common import err as _err


def _summary(body: dict, t: float) -> str:
    """One answer as two readable lines."""
    s, seg = body["sensors"], body["segments"]
    sensors = (f"camera {s['camera']['state']} ({seg['real']['camera']}/{seg['total']} real), "
               f"mic {s['mic']['state']} ({seg['real']['mic']}/{seg['total']} real)")
    if body["answer"] is None:
        return f"[{t:7.2f}s] {body['question']!r} -> no answer, mode none: {body['message']}"
    if seg["covered"] < seg["total"]:
        sensors += f" (warming up: {seg['covered']} of {seg['total']} s recorded)"
    top = ", ".join(f"{x['answer']} {x['probability']:.0%}" for x in body["top_k"])
    prompt = f", prompt set {body['prompt_set']}" if body.get("prompt_set") else ""
    if body.get("graph") == "video_expert":
        prompt += ", video expert"
    unknown = body.get("unknown_words") or []
    words = f", unknown words: {', '.join(unknown)}" if unknown else ""
    return (f"[{t:7.2f}s] {body['question']!r} -> {body['answer']} (confidence {body['confidence']:.0%}, "
            f"mode {body['mode']}{prompt}{words}, {body['latency_ms']:.0f} ms)\n           {sensors}; top: {top}"
            + (f"\n           {_demo_text(body['demo'])}" if body.get("demo") else ""))


def _demo_text(demo: dict) -> str:
    """What the demo window showed, and the true answer where there is one."""
    from ..runtime.signal import T_SEGMENTS                          # a clip is T one-second segments
    clips = demo["clips"]
    if len(clips) > 1:
        parts = " + ".join(f"clip {c['clip']} ({c['seconds']:g} s)" for c in clips)
        return f"demo window: {parts}: two scenes, no single true answer"
    if not clips:
        return "demo window: nothing recorded yet"
    clip, seconds, truth = clips[0]["clip"], clips[0]["seconds"], demo.get("truth")
    if truth is not None:
        return f"demo window: clip {clip}, true answer {truth}"
    if seconds < T_SEGMENTS - 1e-3:
        return f"demo window: {seconds:g} s of clip {clip} so far"
    return f"demo window: clip {clip} (the calibration set has no answer to this question for it)"


def serve(
    bundle: Annotated[Path, typer.Argument(help="An exported bundle (avqa-edge export).")],
    camera: Annotated[str, typer.Option(help="demo, none, a device index (0), a video file or a stream URL (rtsp://...).")] = "demo",
    mic: Annotated[str, typer.Option(help="demo, none, default, a device index or name (sounddevice), or a sound file (WAV).")] = "demo",
    demo: Annotated[bool, typer.Option("--demo", help="Both sensors from the demo source (the bundle's calibration clips, replayed in real time).")] = False,
    backend: Annotated[str, typer.Option(help="auto (TensorRT where the bundle has engines and TensorRT imports), trt or ort.")] = "auto",
    allow_unverified_engines: Annotated[bool, typer.Option("--allow-unverified-engines", help="Serve TensorRT engines that have no passing parity verdict (verify them instead: avqa-edge parity BUNDLE --backend trt).")] = False,
    precision: Annotated[str, typer.Option(help="ONNX Runtime graphs: fp32 or fp16.")] = "fp32",
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads (0: its default).")] = 0,
    method: Annotated[str, typer.Option(help="auto (prompt where the bundle has prompt graphs, else rmm+avr), rmm+avr, or prompt (the prompt set chosen by sensor health; needs a bundle exported with --prompt).")] = "auto",
    host: Annotated[str, typer.Option(help="Address to bind; anything but a loopback address (127.0.0.1, ::1) or localhost needs --token.")] = "127.0.0.1",
    allow_host: Annotated[Optional[List[str]], typer.Option(metavar="NAME", help="A name the Host header may carry besides loopback names and --host (repeatable; '*': any). Default with --host 0.0.0.0: any.")] = None,
    port: Annotated[int, typer.Option(help="Port (0: any free port, printed at start).")] = 8000,
    token: Annotated[Optional[str], typer.Option(envvar="AVQA_EDGE_TOKEN", help="Bearer token clients must send (env AVQA_EDGE_TOKEN).")] = None,
    ask: Annotated[Optional[str], typer.Option(help="Answer this question once the window is recorded, print it and exit (no HTTP server).")] = None,
    every: Annotated[float, typer.Option(help="With --ask: ask again every this many seconds until --duration.")] = 0.0,
    stdin: Annotated[bool, typer.Option("--stdin", help="Answer each line read from stdin (no HTTP server).")] = False,
    inject: Annotated[Optional[str], typer.Option(help="Failure injection, e.g. camera:off@15s,mic:silence@25s-30s. Camera kinds: off, hang, freeze, black, saturate, noise, nan. Mic kinds: off, hang, freeze, silence, clip, noise, nan, flat.")] = None,
    duration: Annotated[Optional[float], typer.Option(help="Stop after this many seconds.")] = None,
    warmup: Annotated[float, typer.Option(help="Answer once this many seconds of the 10-second window are recorded (earlier segments count as absent).")] = 10.0,
    thresholds: Annotated[Optional[Path], typer.Option(help="Health thresholds from `avqa-edge calibrate` (default: fitted on the bundle's calibration set).")] = None,
    confidence: Annotated[Optional[Path], typer.Option(help="Per-mode confidence calibration JSON (default: fitted at the first start and cached in $XDG_CACHE_HOME/avqa-edge/, never beside the bundle).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse to start (exit 1) when a given --camera / --mic cannot be opened, instead of serving without it.")] = False,
    top_k: Annotated[int, typer.Option(help="Answers listed with their probabilities.")] = 3,
    json_out: Annotated[bool, typer.Option("--json", help="With --ask / --stdin: print each answer as one JSON line.")] = False,
    max_body: Annotated[int, typer.Option(help="HTTP request body limit, bytes.")] = 16384,
):
    """Answer questions about the live camera and microphone; keep answering when one fails.

    HTTP API + web page, or --ask / --stdin in the terminal. Torch-free."""
    from ..runtime.service import ServeConfig, build_service
    camera, mic = _check_options(camera, mic, demo, ask, stdin, every, duration, top_k, host, token, max_body)
    cfg = ServeConfig(camera=camera, mic=mic, backend=backend, allow_unverified_engines=allow_unverified_engines,
                      precision=precision, threads=threads, method=method,
                      inject=inject or "", thresholds=str(thresholds) if thresholds else None,
                      confidence=str(confidence) if confidence else None, strict=strict, warmup_s=warmup, top_k=top_k,
                      demo_question=ask if "demo" in (camera, mic) else None)
    svc = build_service(bundle, cfg, log=_err)
    _err(_serving_line(bundle, svc))
    try:
        if ask is not None or stdin:
            svc.start()
            _terminal(svc, ask, every, duration, json_out)
        else:
            _http(svc, host, port, token, max_body, duration, allow_host or ())
    finally:
        svc.stop()


def _check_options(camera, mic, demo, ask, stdin, every, duration, top_k, host, token, max_body):
    """Impossible combinations, refused before anything opens. -> (camera, mic)."""
    from ..runtime.server import is_loopback
    if demo:
        if camera not in ("demo",) or mic not in ("demo",):
            raise AvqaError("--demo replays the demo source on both sensors: drop --camera / --mic")
        camera = mic = "demo"
    if ask is not None and stdin:
        raise AvqaError("give --ask or --stdin, not both")
    if every < 0 or (every and ask is None):
        raise AvqaError("--every needs --ask and a positive number of seconds")
    if duration is not None and duration <= 0:
        raise AvqaError("--duration must be positive")
    if not 1 <= top_k <= 10:
        raise AvqaError("--top-k must lie in [1, 10]")
    if ask is None and not stdin and not is_loopback(host) and not token:
        raise ConfigError(f"--host {host} is not a loopback address (127.0.0.1, ::1, localhost), so it may expose the "
                          "server beyond this machine: give --token (or AVQA_EDGE_TOKEN)")
    if max_body < 256:
        raise AvqaError("--max-body must be at least 256 bytes")
    return camera, mic


def _serving_line(bundle, svc) -> str:
    from ..runtime.redact import redact
    return redact(f"serving {bundle} with {svc.pipeline.name}, method {svc.method_text()}; "
                  f"camera: {svc.links['camera'].description}; mic: {svc.links['mic'].description}"
                  + (f"; injecting {', '.join(map(str, svc.faults))}" if svc.faults else ""))


def _http(svc, host: str, port: int, token, max_body: int, duration, allow_hosts) -> None:
    from ..runtime.server import run_server

    def ready(server):
        sock = server.servers[0].sockets[0].getsockname() if server.servers else (host, port)
        name = f"[{host}]" if ":" in host else host
        _err(f"listening on http://{name}:{sock[1]}/ (web page), POST /ask, GET /readyz /metrics"
             + (" (Bearer token required)" if token else ""))
    run_server(svc, host=host, port=port, token=token, max_body=max_body, duration_s=duration, ready_cb=ready,
               allow_hosts=allow_hosts)


def _terminal(svc, ask: Optional[str], every: float, duration: Optional[float], json_out: bool) -> None:
    from ..runtime.service import NotReady

    def answer(q: str) -> None:
        try:
            body = svc.ask(q)
        except AvqaError as e:
            _err(f"error: {e}")
            return
        except NotReady as e:
            _err(f"not ready: {e}")
            return
        typer.echo(json.dumps(body) if json_out else _summary(body, svc.elapsed()))
        sys.stdout.flush()

    if svc.window.elapsed_segments(svc.clock.now()) < svc.warmup_segments:
        _err(f"recording the window: answers in about {svc.warmup_segments - svc.elapsed():.0f} s ...")
    if ask is not None:
        svc.check_question(ask)                                     # a bad question fails now, clearly
    if not svc.wait_ready(svc.warmup_segments + 60.0):
        raise AvqaError("the window was not recorded in time")
    if ask is not None:
        answer(ask)
        while every and (duration is None or svc.elapsed() + every <= duration):
            time.sleep(max(0.0, every - 0.001))
            answer(ask)
        if duration is not None and svc.elapsed() < duration and every:
            time.sleep(duration - svc.elapsed())
        return
    stop = threading.Event()
    if duration is not None:
        threading.Timer(max(0.0, duration - svc.elapsed()), stop.set).start()
    for line in sys.stdin:
        if stop.is_set():
            break
        q = line.rstrip("\n")
        if q.strip():
            answer(q)
