"""Serving's guards without a bundle: URL redaction, the one JSON encoder, the
rate-limited reject log, the Host / Origin / Content-Type guard (driven as plain ASGI),
the loopback test, truthful bind errors, and the unknown-word rule."""
import asyncio
import json
import logging
import socket

import pytest

from avqa_edge.errors import ConfigError, QuestionError
from avqa_edge.runtime.redact import redact
from avqa_edge.runtime.text import MAX_UNKNOWN_FRACTION, Vocabulary

SECRETS = ("s3cr3tpw", "t0k3nv")


# ---- redaction ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text,shown", [
    ("rtsp://admin:s3cr3tpw@cam.local/stream", "rtsp://admin:***@cam.local/stream"),
    ("cannot open stream rtsp://admin:s3cr3tpw@10.0.0.2:554/s?channel=1&token=t0k3nv (retrying)",
     "cannot open stream rtsp://admin:***@10.0.0.2:554/s?channel=1&token=*** (retrying)"),
    ("--camera 'http://u:p@s/s3cr3tpw@h/x': not a device", "--camera 'http://u:***@h/x': not a device"),
    ("https://t0k3nv@host/x", "https://***@host/x"),
    ("http://host/x?Password=s3cr3tpw#access_token=t0k3nv", "http://host/x?Password=***#access_token=***"),
    ("video file /data/cam.mp4", "video file /data/cam.mp4"),
    ("rtsp://host/stream?channel=2", "rtsp://host/stream?channel=2"),
])
def test_redact_hides_passwords_and_secret_parameters(text, shown):
    assert redact(text) == shown
    assert redact(redact(text)) == shown                       # idempotent: safe to apply twice
    assert not any(s in redact(text) for s in SECRETS)


# ---- one JSON encoder ----------------------------------------------------------------------------

def test_json_encoder_never_fails_on_client_text():
    np = pytest.importorskip("numpy")
    from avqa_edge.runtime.server import encode_json
    body = {"question": "How many \ud800 are sounding?", "x": float("nan"), "n": np.int64(3), "p": np.float32(0.5),
            "ok": np.bool_(True), "\udfff key": [1.0, float("inf")]}
    out = encode_json(body)
    assert json.loads(out.decode("utf-8")) == {"question": "How many \ufffd are sounding?", "x": None, "n": 3,
                                               "p": 0.5, "ok": True, "\ufffd key": [1.0, None]}


# ---- rate-limited reject log ----------------------------------------------------------------------

def test_reject_log_is_one_line_each_and_rate_limited(caplog):
    from avqa_edge.runtime.server import RejectLog
    now = [0.0]
    log = RejectLog(logging.getLogger("avqa_edge.test_reject"), burst=3, period_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="avqa_edge.test_reject"):
        for i in range(10):
            log("bad_question", 422, "POST", "/ask", "the question contains a lone surrogate \ud800\n")
        now[0] = 10.5
        log("bad_question", 422, "POST", "/ask", "next")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and all("\n" not in m and "\ud800" not in m and "Traceback" not in m for m in lines)
    assert lines[0] == "rejected POST /ask -> 422 (bad_question): the question contains a lone surrogate \\ud800\\n"
    assert "7 more not logged" in lines[3] and all(r.exc_info is None for r in caplog.records)


# ---- hosts ----------------------------------------------------------------------------------------

def test_loopback_means_a_literal_loopback_address_or_localhost():
    from avqa_edge.runtime.server import HostPolicy, host_of, is_loopback
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("127.attacker.example", "127.0.0.1.nip.io", "0.0.0.0", "::", "10.0.0.1", "localhost.example", ""):
        assert not is_loopback(host), host
    assert [host_of(h) for h in ("localhost:8000", "[::1]:8000", "Example.COM", "127.0.0.1")] == [
        "localhost", "::1", "example.com", "127.0.0.1"]
    default = HostPolicy("127.0.0.1")
    assert default.allows("localhost") and default.allows("127.0.0.1") and default.allows("::1")
    assert not default.allows("attacker.example") and not default.allows(None)
    named = HostPolicy("127.0.0.1", ["edge.lan"])
    assert named.allows("edge.lan") and not named.allows("attacker.example")
    assert HostPolicy("192.168.1.5").allows("192.168.1.5") and not HostPolicy("192.168.1.5").allows("evil.example")
    assert HostPolicy("0.0.0.0").allows("anything.example")                 # wildcard bind: the token guards
    assert not HostPolicy("0.0.0.0", ["edge.lan"]).allows("anything.example")
    assert HostPolicy("127.0.0.1", ["*"]).allows("anything.example")


def _asgi_call(app, method: str, path: str, headers, body: bytes = b""):
    """One request through an ASGI app -> (status, JSON body or raw bytes)."""
    sent, received = [], [False]

    async def receive():
        if not received[0]:
            received[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)
    scope = {"type": "http", "method": method, "path": path, "headers": [(k.lower().encode(), v.encode())
                                                                         for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], (json.loads(data) if data[:1] == b"{" else data)


def test_guard_checks_host_origin_and_content_type_before_any_handler():
    pytest.importorskip("starlette", reason="needs the serve extra")
    from avqa_edge.runtime.server import GuardMiddleware, HostPolicy, RejectLog
    reached = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"frame"})
    rejects = []
    guard = GuardMiddleware(app, None, 1024, RejectLog(logging.getLogger("avqa_edge.test_guard")), HostPolicy())
    guard.reject = lambda reason, status, *_: rejects.append((status, reason))
    js = {"Content-Type": "application/json"}
    assert _asgi_call(guard, "GET", "/preview.jpg", {"Host": "localhost:8000"}) == (200, b"frame")
    code, body = _asgi_call(guard, "GET", "/preview.jpg", {"Host": "attacker.example:8000"})     # DNS rebinding
    assert code == 403 and "not allowed" in body["error"] and "--allow-host" in body["error"]
    assert _asgi_call(guard, "GET", "/livez", {})[0] == 403                                       # no Host at all
    code, body = _asgi_call(guard, "POST", "/ask", {"Host": "127.0.0.1:8000", "Content-Type": "text/plain"}, b"{}")
    assert code == 415 and "application/json" in body["error"]
    assert _asgi_call(guard, "POST", "/ask", {"Host": "127.0.0.1:8000"}, b"{}")[0] == 415
    code, body = _asgi_call(guard, "POST", "/ask", {"Host": "127.0.0.1:8000", "Origin": "http://attacker.example",
                                                    **js}, b"{}")
    assert code == 403 and "cross-origin" in body["error"]
    for origin in ("null", "http://[::1", "not a url"):
        assert _asgi_call(guard, "POST", "/ask", {"Host": "127.0.0.1:8000", "Origin": origin, **js}, b"{}")[0] == 403
    assert _asgi_call(guard, "POST", "/ask", {"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:8000",
                                              "Content-Type": "application/json; charset=utf-8"}, b"{}")[0] == 200
    assert reached == ["/preview.jpg", "/ask"]
    assert rejects == [(403, "bad_host"), (403, "bad_host"), (415, "unsupported_media_type"),
                       (415, "unsupported_media_type")] + [(403, "bad_origin")] * 4      # one log line each


def test_guard_keeps_the_connection_after_an_error_behind_a_complete_response():
    """An exception raised after the response was sent (Starlette re-raises after its 500
    handler) must not reach uvicorn, which would close the keep-alive connection."""
    pytest.importorskip("starlette", reason="needs the serve extra")
    from avqa_edge.runtime.server import GuardMiddleware, RejectLog

    async def after(scope, receive, send):
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b'{"error": "x"}'})
        raise RuntimeError("re-raised after the response")

    async def before(scope, receive, send):
        raise RuntimeError("before any response")
    quiet = RejectLog(logging.getLogger("avqa_edge.test_guard"))
    host = {"Host": "127.0.0.1"}
    assert _asgi_call(GuardMiddleware(after, None, 1024, quiet), "GET", "/status", host)[0] == 500   # no raise
    code, body = _asgi_call(GuardMiddleware(before, None, 1024, quiet), "GET", "/status", host)
    assert code == 500 and body == {"error": "internal error (RuntimeError)"}


# ---- binding ----------------------------------------------------------------------------------------

def test_bind_errors_say_what_went_wrong():
    from avqa_edge.runtime.server import bind_socket
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(ConfigError, match="already in use"):
            bind_socket("127.0.0.1", busy.getsockname()[1])
    finally:
        busy.close()
    with pytest.raises(ConfigError, match="cannot resolve this name"):
        bind_socket("127.attacker.example", 0)
    with pytest.raises(ConfigError, match="not an address of this machine"):
        bind_socket("192.0.2.1", 0)                              # TEST-NET-1: never assigned here
    sock = bind_socket("127.0.0.1", 0)
    assert sock.getsockname()[0] == "127.0.0.1"
    sock.close()


# ---- unknown words ----------------------------------------------------------------------------------

def test_mostly_unknown_questions_are_refused():
    v = Vocabulary(["how", "many", "instruments", "are", "sounding", "is", "the", "piano", "playing"])
    assert v.check_known("How many instruments are sounding?") == []
    assert v.check_known("How many zzqx are sounding?") == ["zzqx"]
    assert MAX_UNKNOWN_FRACTION == 0.5
    assert v.check_known("is the zzqx blorfle") == ["zzqx", "blorfle"]        # exactly half: answered
    with pytest.raises(QuestionError, match="4 of the question's 6 words are unknown") as e:
        v.check_known("How many zzqx blorfle wibble frobnicate?")
    assert e.value.http_status == 422
    with pytest.raises(QuestionError, match="none of the question's words"):
        v.check_known("zzz qqq")
