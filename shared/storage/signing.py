"""HMAC-signed, expiring links for files the API serves itself (local storage)."""

from __future__ import annotations

import hashlib
import hmac
import time


def sign(path: str, expires: int, secret_key: str) -> str:
    message = f"{path}\n{expires}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def expiry(ttl_s: int, now: float | None = None) -> int:
    return int(now if now is not None else time.time()) + int(ttl_s)


def verify(path: str, expires: int, signature: str, secret_key: str,
           now: float | None = None) -> str | None:
    """None when the link is good; otherwise the reason (`invalid_signature`, `link_expired`)."""
    # compare_digest takes str of ASCII only; a client's signature may be anything.
    if not hmac.compare_digest(sign(path, expires, secret_key).encode(),
                               signature.encode("utf-8", "surrogateescape")):
        return "invalid_signature"
    if expires < (now if now is not None else time.time()):
        return "link_expired"
    return None
