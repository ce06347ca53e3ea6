"""HTTP API and web page for `serve` (FastAPI + uvicorn, imported here only).

    POST /ask      {"question": "...", "top_k": 3} -> the answer body of `Service.ask`
    GET  /livez    the process is up
    GET  /readyz   200 when answers can be given (also with a degraded or failed sensor),
                   503 while warming up or with every sensor failed; per-sensor JSON
    GET  /status   sensors, levels, window masks (the web page polls it)
    GET  /metrics  Prometheus text (runtime/metrics.py)
    GET  /preview.jpg  the newest camera frame, enlarged
    GET  /         the web page (runtime/web/index.html)

Errors are JSON {"error": "..."}: 400 unreadable body (not UTF-8, not JSON), 401 missing or
wrong token, 413 body over the limit, 422 unusable question (empty, too long, only unknown
words, wrong type), 503 not ready. Nothing a client sends can take the server down: every
handler turns unexpected exceptions into a 500 JSON body.

Security: binds 127.0.0.1 by default; `serve` refuses any other host without a token.
With a token every endpoint but `/` and `/livez` needs `Authorization: Bearer TOKEN` (the
page reads the token from its URL fragment, `/#token=...`, which browsers never send).
"""
import asyncio
import hmac
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from avqa_edge.errors import AvqaError

from .service import NotReady, Service

WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_BODY_BYTES = 16 * 1024
OPEN_PATHS = ("/", "/livez", "/favicon.ico")
log = logging.getLogger("avqa_edge.server")


def _json_response(status: int, body: dict, headers: Optional[dict] = None):
    from starlette.responses import JSONResponse
    return JSONResponse(body, status_code=status, headers=headers)


class GuardMiddleware:
    """Pure ASGI: bearer-token check, then the body size limit (Content-Length, and the
    bytes actually received for chunked bodies), before any handler runs."""

    def __init__(self, app, token: Optional[str], max_body: int, metrics=None):
        self.app, self.token, self.max_body, self.metrics = app, token, max_body, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token and scope.get("path") not in OPEN_PATHS:
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                self._reject("unauthorized")
                return await _json_response(401, {"error": "missing or wrong token: send 'Authorization: Bearer TOKEN'"},
                                            {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                self._reject("bad_request")
                return await _json_response(400, {"error": "bad Content-Length header"})(scope, receive, send)
            if too_big:
                self._reject("too_large")
                return await _json_response(413, {"error": f"request body over {self.max_body} bytes"})(scope, receive, send)
            return await self.app(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        # no Content-Length (chunked): read up to the limit here, then replay it
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_body:
                self._reject("too_large")
                return await _json_response(413, {"error": f"request body over {self.max_body} bytes"})(scope, receive, send)
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        data, sent = b"".join(chunks), [False]

        async def replay():
            if not sent[0]:
                sent[0] = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)

    def _reject(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.reject(reason)


def parse_ask_body(raw: bytes) -> dict:
    """The /ask body -> {"question": str, "top_k": Optional[int]}; _BadRequest(status, message)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRequest(400, "the request body is not valid UTF-8") from None
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise _BadRequest(400, f"the request body is not valid JSON ({e})") from None
    except RecursionError:
        raise _BadRequest(400, "the request body is not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict) or "question" not in obj:
        raise _BadRequest(422, 'expected a JSON object {"question": "..."}')
    q = obj["question"]
    if not isinstance(q, str):
        raise _BadRequest(422, "'question' must be a string")
    top_k = obj.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 10):
        raise _BadRequest(422, "'top_k' must be an integer in [1, 10]")
    unknown = sorted(set(obj) - {"question", "top_k"})
    if unknown:
        raise _BadRequest(422, f"unknown fields: {', '.join(unknown)}")
    return {"question": q, "top_k": top_k}


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(service: Service, token: Optional[str] = None, max_body: int = MAX_BODY_BYTES, metrics=None):
    """The FastAPI app around a started Service."""
    try:
        from fastapi import FastAPI, Request
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import HTMLResponse, Response
    except ImportError as e:
        raise AvqaError(f"the HTTP server needs fastapi and uvicorn ({e}): pip install 'avqa-edge[serve]'") from None

    app = FastAPI(title="avqa-edge", docs_url=None, redoc_url=None, openapi_url=None)
    service.metrics = metrics

    def reject(reason: str) -> None:
        if metrics is not None:
            metrics.reject(reason)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):                    # never a crash, never a traceback to the client
        log.exception("unexpected error on %s", request.url.path)
        reject("error")
        return _json_response(500, {"error": f"internal error ({type(exc).__name__})"})

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/livez")
    async def livez():
        return {"live": True, "uptime_s": round(service.elapsed(), 2)}

    @app.get("/readyz")
    async def readyz():
        status = await run_in_threadpool(service.status)
        body = {"ready": status["ready"], "reason": status["readiness"], "mode": status["mode"],
                "sensors": status["sensors"], "window": status["window"], "uptime_s": status["uptime_s"]}
        return _json_response(200 if status["ready"] else 503, body)

    @app.get("/status")
    async def status():
        return await run_in_threadpool(service.status)

    @app.get("/metrics")
    async def metrics_endpoint():
        if metrics is None:
            return _json_response(501, {"error": "metrics are off (prometheus-client is not installed)"})
        metrics.update(await run_in_threadpool(service.status))
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/preview.jpg")
    async def preview():
        latest = service.window.video.latest
        if latest is None:
            return _json_response(404, {"error": "no camera frame yet"})
        jpg = await run_in_threadpool(_jpeg, latest[1])
        if jpg is None:
            return _json_response(501, {"error": "the preview needs OpenCV"})
        return Response(jpg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.post("/ask")
    async def ask(request: Request):
        try:
            req = parse_ask_body(await request.body())
        except _BadRequest as e:
            reject("bad_request")
            return _json_response(e.status, {"error": str(e)})
        try:
            return await run_in_threadpool(service.ask, req["question"], req["top_k"])
        except AvqaError as e:
            reject("bad_question")
            return _json_response(422, {"error": str(e)})
        except NotReady as e:
            reject("not_ready")
            return _json_response(503, {"error": str(e), "retry_after_s": e.retry_after_s},
                                  {"Retry-After": str(int(np.ceil(e.retry_after_s)))})

    return GuardMiddleware(app, token, max_body, metrics)


def _jpeg(image: np.ndarray, scale: int = 6) -> Optional[bytes]:
    try:
        import cv2
    except ImportError:
        return None
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(np.nan_to_num(img), 0, 255).astype(np.uint8)
    big = cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return buf.tobytes() if ok else None


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def run_server(service: Service, host: str = "127.0.0.1", port: int = 8000, token: Optional[str] = None,
               max_body: int = MAX_BODY_BYTES, duration_s: Optional[float] = None,
               ready_cb=None) -> None:
    """Serve until Ctrl-C (or `duration_s`). Refuses a non-loopback host without a token.
    Starts the service's sensors (if not started) only once the app is built, so that the
    imports (which hold the GIL for a while) cannot starve the sensor threads."""
    if not is_loopback(host) and not token:
        raise AvqaError(f"--host {host} exposes the server beyond this machine: give --token (clients then send "
                        "'Authorization: Bearer TOKEN')")
    try:
        import uvicorn
    except ImportError as e:
        raise AvqaError(f"the HTTP server needs uvicorn ({e}): pip install 'avqa-edge[serve]'") from None
    from .metrics import Metrics
    try:
        metrics = Metrics()
    except AvqaError:
        metrics = None
    app = create_app(service, token=token, max_body=max_body, metrics=metrics)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            limit_concurrency=128, timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024,
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    service.start()

    async def main():
        task = asyncio.ensure_future(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started and ready_cb is not None:
            ready_cb(server)
        if duration_s is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=max(0.0, duration_s - service.elapsed()))
            except asyncio.TimeoutError:
                server.should_exit = True
        await task
    # Ctrl-C / SIGTERM: ask uvicorn for a graceful shutdown (uvicorn re-raises the signal after
    # its own shutdown; a KeyboardInterrupt then would skip asyncio's cleanup and leave
    # non-daemon worker threads that keep the process alive).
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except SystemExit:                                           # uvicorn exits when it cannot bind
        raise AvqaError(f"could not start the HTTP server on {host}:{port} (is the port in use?)") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise AvqaError(f"could not start the HTTP server on {host}:{port} (is the port in use?)")
