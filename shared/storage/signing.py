"""HMAC-signed, expiring links for files the API serves itself (local storage).

A link names the tenant it was made for (`t`) and the API key it was handed to (`k`, empty
for links the service made itself, as in webhooks); both are signed with the path and the
expiry. The media route refuses a link without a tenant and serves a file only when it
belongs to a scan of that tenant, so a link is bound to its tenant: it cannot be replayed for
another path, another tenant, or by a tenant that does not own the file. The key id lets the
route write who downloaded the file in the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
import time

_VERSION = b"neuroscan-media-v2"


def sign(path: str, expires: int, secret_key: str, *, tenant_id: str = "",
         key_id: str = "") -> str:
    message = b"\n".join([_VERSION, tenant_id.encode(), key_id.encode(), path.encode(),
                          str(expires).encode()])
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def expiry(ttl_s: int, now: float | None = None) -> int:
    return int(now if now is not None else time.time()) + int(ttl_s)


def verify(path: str, expires: int, signature: str, secret_key: str,
           now: float | None = None, *, tenant_id: str = "", key_id: str = "") -> str | None:
    """None when the link is good; otherwise the reason (`invalid_signature`, `link_expired`)."""
    try:
        expected = sign(path, expires, secret_key, tenant_id=tenant_id, key_id=key_id).encode()
        # compare_digest takes str of ASCII only; a client's signature may be anything.
        given = signature.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates in a client's parameters
        return "invalid_signature"
    if not hmac.compare_digest(expected, given):
        return "invalid_signature"
    if expires < (now if now is not None else time.time()):
        return "link_expired"
    return None
