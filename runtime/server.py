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
wrong token, 403 a Host (or Origin) header not on the allow-list, 413 body over the limit,
415 POST /ask without `Content-Type: application/json`, 422 unusable question (empty, too
long, control characters or lone surrogates, mostly unknown words, wrong type), 503 not
ready. Every response goes through one JSON encoder (`encode_json`), which cannot fail on
what a client sent. Each rejected request logs one line, rate-limited (`RejectLog`), never
a traceback; nothing a client sends can take the server down or reset its connection.

Security (docs/security.md): binds 127.0.0.1 by default; `serve` refuses any host but a
literal loopback address or `localhost` without a token. The Host header must name the
server (loopback names and addresses, the bound host, `allow_hosts`), which stops DNS
rebinding. With a token every endpoint but `/` and `/livez` needs
`Authorization: Bearer TOKEN` (the page reads the token from its URL fragment,
`/#token=...`, which browsers never send).
"""
import asyncio
import errno
import hmac
import ipaddress
import json
import logging
import math
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional
from urllib.parse import urlsplit

import numpy as np

from avqa_edge.errors import AvqaError, ConfigError

from .service import NotReady, Service
from .text import LONE_SURROGATE

WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_BODY_BYTES = 16 * 1024
OPEN_PATHS = ("/", "/livez", "/favicon.ico")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
log = logging.getLogger("avqa_edge.server")


# ---- responses: one JSON encoder --------------------------------------------------------------

def _plain(obj):
    """A response body -> plain JSON values: lone surrogates -> U+FFFD, NaN/Inf -> null,
    numpy scalars and arrays -> Python numbers and lists, other objects -> their str."""
    if isinstance(obj, str):
        return obj if obj.isascii() else LONE_SURROGATE.sub("\ufffd", obj)
    if isinstance(obj, dict):
        return {_plain(str(k)): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (bool, int)) or obj is None:
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    return _plain(str(obj))


def encode_json(body) -> bytes:
    """The one JSON encoding of every response body (UTF-8; never raises on client input)."""
    return json.dumps(_plain(body), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _json_response(status: int, body, headers: Optional[dict] = None):
    from starlette.responses import Response
    return Response(encode_json(body), status_code=status, headers=headers, media_type="application/json")


# ---- rejected requests: one log line each, rate-limited ----------------------------------------

class RejectLog:
    """Logs one line per rejected request, at most `burst` per `period_s`; the lines over
    that are counted and reported by the next line logged. Also counts rejections in
    /metrics. `clock` returns seconds (time.monotonic)."""

    def __init__(self, logger: logging.Logger = log, metrics=None, burst: int = 20, period_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.logger, self.metrics, self.burst, self.period_s, self.clock = logger, metrics, burst, period_s, clock
        self._lock = threading.Lock()
        self._window_start = -math.inf
        self._logged = 0
        self.suppressed = 0

    def __call__(self, reason: str, status: int, method: str, path: str, message: str, exc_info=None) -> None:
        """One rejected request; `exc_info` only for the server's own errors (500)."""
        if self.metrics is not None:
            self.metrics.reject(reason)
        line = f"rejected {method} {path[:80]} -> {status} ({reason}): {message[:200]}"
        self.line(ascii(line)[1:-1], exc_info)             # control characters and surrogates escaped

    def line(self, text: str, exc_info=None) -> bool:
        """Log `text` unless over the rate; -> whether it was logged."""
        with self._lock:
            now = self.clock()
            if now - self._window_start >= self.period_s:
                self._window_start, self._logged = now, 0
            if self._logged >= self.burst:
                self.suppressed += 1
                return False
            self._logged += 1
            dropped, self.suppressed = self.suppressed, 0
        if dropped:
            text += f" ({dropped} more not logged before this: over {self.burst} per {self.period_s:g} s)"
        self.logger.warning(text, exc_info=exc_info)
        return True


# ---- hosts ---------------------------------------------------------------------------------------

def _bare(host: str) -> str:
    host = host.strip().lower()
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(host: str) -> bool:
    """A literal loopback address (127.0.0.0/8, ::1) or `localhost`; any other name, even
    one that starts with "127." or resolves to loopback today, is not."""
    host = _bare(host)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """A Host header value ("name:port", "[::1]:port", "name") -> the bare lower-case name."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _origin_host(origin: str) -> Optional[str]:
    """An Origin header ("http://name:port", "null") -> its host name, None if it has none."""
    try:
        return urlsplit(origin).hostname
    except ValueError:                                      # e.g. "http://[::1"
        return None


class HostPolicy:
    """Which names the Host header may carry: loopback names and addresses, the bound host
    and `extra` names; "*" in `extra` (or a wildcard bind without extra names) allows any."""

    def __init__(self, bind_host: str = "127.0.0.1", extra: Iterable[str] = ()):
        extra = [_bare(h) for h in extra if h.strip()]
        self.any = "*" in extra or (_bare(bind_host) in WILDCARD_HOSTS and not extra)
        self.names = {_bare(bind_host), *extra} - set(WILDCARD_HOSTS) - {"*"}

    def allows(self, name: Optional[str]) -> bool:
        if self.any:
            return True
        return bool(name) and (is_loopback(name) or _bare(name) in self.names)

    def describe(self) -> str:
        return "any" if self.any else ", ".join(["localhost", "loopback addresses", *sorted(self.names)])


# ---- the guard ---------------------------------------------------------------------------------

class GuardMiddleware:
    """Pure ASGI, before any handler: the Host (and Origin) allow-list, the bearer token,
    `Content-Type: application/json` on POST /ask, the body size limit (Content-Length, and
    the bytes actually received for chunked bodies). Outermost, it also keeps an exception
    after a complete response from reaching uvicorn (which would close the keep-alive
    connection) and answers one before any response with a JSON 500."""

    def __init__(self, app, token: Optional[str], max_body: int, reject: RejectLog,
                 hosts: Optional[HostPolicy] = None):
        self.app, self.token, self.max_body, self.reject = app, token, max_body, reject
        self.hosts = hosts or HostPolicy()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False, "complete": False}

        async def tracked_send(msg):
            if msg["type"] == "http.response.start":
                state["started"] = True
            elif msg["type"] == "http.response.body" and not msg.get("more_body", False):
                state["complete"] = True
            await send(msg)
        try:
            await self._guarded(scope, receive, tracked_send)
        except Exception as e:
            if state["complete"]:
                return                                  # answered (and logged) already: keep the connection
            if state["started"]:
                raise                                   # half a response: uvicorn must close the connection
            message = f"internal error ({type(e).__name__})"
            self.reject("error", 500, scope.get("method", ""), scope.get("path", ""), message, exc_info=e)
            await _json_response(500, {"error": message})(scope, receive, tracked_send)

    async def _refuse(self, scope, receive, send, status: int, reason: str, message: str, headers=None):
        self.reject(reason, status, scope.get("method", ""), scope.get("path", ""), message)
        return await _json_response(status, {"error": message}, headers)(scope, receive, send)

    async def _guarded(self, scope, receive, send):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refuse = self._refuse
        host = headers.get("host")
        if not self.hosts.allows(host_of(host) if host else None):
            return await refuse(scope, receive, send, 403, "bad_host",
                                f"Host header {host!r} is not allowed (allowed: {self.hosts.describe()}); "
                                "serve with --allow-host NAME to add a name")
        origin = headers.get("origin")
        if origin is not None and scope.get("method") not in ("GET", "HEAD") and not self.hosts.allows(_origin_host(origin)):
            return await refuse(scope, receive, send, 403, "bad_origin", f"cross-origin request from {origin!r} refused")
        if self.token and scope.get("path") not in OPEN_PATHS:
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode()):
                return await refuse(scope, receive, send, 401, "unauthorized",
                                    "missing or wrong token: send 'Authorization: Bearer TOKEN'",
                                    {"WWW-Authenticate": "Bearer"})
        if scope.get("method") == "POST" and scope.get("path") == "/ask":
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return await refuse(scope, receive, send, 415, "unsupported_media_type",
                                    f"POST /ask needs 'Content-Type: application/json' (got {ctype or 'none'!r})")
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return await refuse(scope, receive, send, 400, "bad_request", "bad Content-Length header")
            if too_big:
                return await refuse(scope, receive, send, 413, "too_large", f"request body over {self.max_body} bytes")
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
                return await refuse(scope, receive, send, 413, "too_large", f"request body over {self.max_body} bytes")
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


def create_app(service: Service, token: Optional[str] = None, max_body: int = MAX_BODY_BYTES, metrics=None,
               hosts: Optional[HostPolicy] = None, reject: Optional[RejectLog] = None):
    """The FastAPI app around a started Service, inside its GuardMiddleware."""
    try:
        from fastapi import FastAPI, Request
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException
        from starlette.responses import HTMLResponse, Response
    except ImportError as e:
        raise AvqaError(f"the HTTP server needs fastapi and uvicorn ({e}): pip install 'avqa-edge[serve]'") from None

    app = FastAPI(title="avqa-edge", docs_url=None, redoc_url=None, openapi_url=None)
    service.metrics = metrics
    reject = reject or RejectLog(metrics=metrics)

    def refuse(request, status: int, reason: str, message: str, body: Optional[Dict] = None, headers=None):
        reject(reason, status, request.method, request.url.path, message)
        return _json_response(status, dict(body or {}, error=message), headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc):                    # 404, 405: the same JSON errors
        return refuse(request, exc.status_code, "not_found" if exc.status_code == 404 else "bad_request",
                      str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):                    # never a traceback to the client
        message = f"internal error ({type(exc).__name__})"
        reject("error", 500, request.method, request.url.path, message, exc_info=exc)
        return _json_response(500, {"error": message})

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/livez")
    async def livez():
        return _json_response(200, {"live": True, "uptime_s": round(service.elapsed(), 2)})

    @app.get("/readyz")
    async def readyz():
        status = await run_in_threadpool(service.status)
        body = {"ready": status["ready"], "reason": status["readiness"], "mode": status["mode"],
                "sensors": status["sensors"], "window": status["window"], "uptime_s": status["uptime_s"]}
        return _json_response(200 if status["ready"] else 503, body)

    @app.get("/status")
    async def status():
        return _json_response(200, await run_in_threadpool(service.status))

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
            return refuse(request, e.status, "bad_request", str(e))
        try:
            body = await run_in_threadpool(service.ask, req["question"], req["top_k"])
        except AvqaError as e:
            return refuse(request, e.http_status, "bad_question", str(e))
        except NotReady as e:
            return refuse(request, 503, "not_ready", str(e), {"retry_after_s": e.retry_after_s},
                          {"Retry-After": str(int(np.ceil(e.retry_after_s)))})
        return _json_response(200, body)

    return GuardMiddleware(app, token, max_body, reject, hosts)


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


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (not listening yet), or a ConfigError that says why
    not: a name that does not resolve, an address this machine does not have, a port in
    use, a privileged port."""
    try:
        infos = socket.getaddrinfo(_bare(host) or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: cannot resolve this name ({e.strerror})") from None
    family, kind, proto, _, addr = min(infos, key=lambda i: i[0] != socket.AF_INET)    # IPv4 first ("localhost")
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            why = f"port {port} is already in use (another server?): pick another --port, or --port 0 for a free one"
        elif e.errno == errno.EADDRNOTAVAIL:
            why = f"{addr[0]} is not an address of this machine (cannot assign it)"
        elif e.errno == errno.EACCES:
            why = f"no permission to bind port {port} (ports below 1024 need privileges)"
        else:
            why = e.strerror or str(e)
        raise ConfigError(f"cannot serve on {host}:{port}: {why}") from None
    return sock


def run_server(service: Service, host: str = "127.0.0.1", port: int = 8000, token: Optional[str] = None,
               max_body: int = MAX_BODY_BYTES, duration_s: Optional[float] = None,
               ready_cb=None, allow_hosts: Iterable[str] = ()) -> None:
    """Serve until Ctrl-C (or `duration_s`). Refuses a non-loopback host without a token;
    binds first, so that a bad host or a busy port is a clean ConfigError. Starts the
    service's sensors (if not started) only once the app is built, so that the imports
    (which hold the GIL for a while) cannot starve the sensor threads."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"--host {host} is not a loopback address (127.0.0.1, ::1, localhost), so it may expose "
                          "the server beyond this machine: give --token (clients then send 'Authorization: Bearer "
                          "TOKEN')")
    try:
        import uvicorn
    except ImportError as e:
        raise AvqaError(f"the HTTP server needs uvicorn ({e}): pip install 'avqa-edge[serve]'") from None
    from .metrics import Metrics
    try:
        metrics = Metrics()
    except AvqaError:
        metrics = None
    app = create_app(service, token=token, max_body=max_body, metrics=metrics, hosts=HostPolicy(host, allow_hosts))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            limit_concurrency=128, timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024,
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    sock = bind_socket(host, port)
    service.start()

    async def main():
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
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
    except SystemExit:                                           # uvicorn exits when it cannot start
        raise AvqaError(f"the HTTP server on {host}:{port} could not start (see the lines above)") from None
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise AvqaError(f"the HTTP server on {host}:{port} could not start (see the lines above)")
