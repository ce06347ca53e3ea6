"""Secrets out of anything shown: the one helper that every description of a sensor
source goes through (the start line, state-change lines, logs, HTTP responses).

    redact("rtsp://admin:pass@cam.local/stream?token=abc&ch=1")
    -> "rtsp://admin:***@cam.local/stream?token=***&ch=1"

In every URL found in the text (SCHEME://...): the password of `user:password@` becomes
`***` (a lone `user@` part becomes `***@`: it is often a key), and so do the values of
query or fragment parameters whose name looks like a secret (password, pwd, token,
secret, key, auth, signature, credential, ...). The userinfo ends at the URL's last `@`,
so a password holding `@` or `/` is hidden whole (an `@` later in the URL hides more than
needed, never less). Text without a URL comes back unchanged.
"""
import re

MASK = "***"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*")
_SECRET_NAME = re.compile(r"pass|pwd|token|secret|key|auth|sig|cred", re.IGNORECASE)
_PARAM = re.compile(r"([?&;#])([^=&;#]*)=([^&;#]*)")


def _redact_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    at = rest.rfind("@")
    if at >= 0:
        user, _, password = rest[:at].partition(":")
        rest = (f"{user}:{MASK}" if password or rest[:at].endswith(":") else MASK) + rest[at:]
    rest = _PARAM.sub(lambda m: f"{m[1]}{m[2]}={MASK}" if _SECRET_NAME.search(m[2]) else m[0], rest)
    return f"{scheme}://{rest}"


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by `***` (see the module docstring)."""
    text = str(text)
    if "://" not in text:
        return text
    return _URL.sub(lambda m: _redact_url(m[0]), text)
