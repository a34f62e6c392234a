"""The door: the API key and the body's size are checked before any route, or the multipart
parser, sees the request.

A pure ASGI middleware, so no byte of the body is read for a caller without a good key: a
`/v1` request without one is answered 401 from its headers alone; a body declared larger than
allowed is answered 413 unread; a chunked body is cut off, 413, as soon as it passes the limit.
The key's lookup takes a pooled connection for one indexed query and gives it back before the
request goes on (one connection per request at most); routes find the caller in
`request.state.principal`. An expired or revoked key is answered 401 with its own code
(`key_expired`, `key_revoked`); a key past its budget per minute, or with all its event
streams open, 429 with Retry-After (api/ratelimit.py) — all before the body is read.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import Principal
from api.errors import error_response, unavailable_response
from api.ratelimit import Refusal, key_limiter
from shared.db.session import async_session_factory, async_write_session
from shared.db.tenants import KeyCheck, check_key, last_use_due, record_last_use
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Multipart framing around one file: `POST /v1/scans` may carry max_upload_bytes plus this.
MULTIPART_SLACK = 64 * 1024


def body_limit(scope: Scope, settings: Settings) -> int:
    """The most bytes this request's body may have."""
    if scope["path"].rstrip("/") == "/v1/scans":
        return settings.max_upload_bytes + MULTIPART_SLACK
    return settings.max_request_bytes


def _needs_key(scope: Scope) -> bool:
    path: str = scope["path"]
    # CORS preflights carry no credentials by design; the CORS middleware answers them.
    return ((path == "/v1" or path.startswith(("/v1/", "/dicomweb/")))
            and scope["method"] != "OPTIONS")


def _is_stream(scope: Scope) -> bool:
    return scope["method"] == "GET" and scope["path"].rstrip("/").endswith("/events")


def _unauthorized(code: str, message: str) -> Any:
    return error_response(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def _too_many(refusal: Refusal) -> Any:
    # No `Connection: close`, as for the 401: answered from the headers, a close could reach
    # the client while it is still sending the body, and it would see a reset, not the 429.
    return error_response(429, refusal.code, refusal.message, headers={
        "Retry-After": str(refusal.retry_after_s), "RateLimit-Limit": str(refusal.limit)})


async def _lookup(token: str) -> KeyCheck:
    """The key's check, in a session of its own that is closed (its connection back in the
    pool) before this returns: authentication never holds a connection."""
    async with async_session_factory()() as session:
        return await check_key(session, token)


# Last-use stamps in flight (one per key at a time) and the tasks writing them.
_stamping: set[str] = set()
_stamp_tasks: set[asyncio.Task[None]] = set()


async def _stamp_last_use(key_id: str) -> None:
    try:
        async with async_write_session() as session:
            await record_last_use(session, key_id)
    except Exception as exc:  # busy or down: the stamp waits for the key's next request
        log.debug("last use of key %s not recorded: %s", key_id, exc)
    finally:
        _stamping.discard(key_id)


def _schedule_last_use(key_id: str) -> None:
    """Stamp `last_used_at` after the request, never in its way."""
    if key_id in _stamping:
        return
    _stamping.add(key_id)
    task = asyncio.create_task(_stamp_last_use(key_id))
    _stamp_tasks.add(task)
    task.add_done_callback(_stamp_tasks.discard)


def _too_large(limit: int) -> Any:
    return error_response(413, "file_too_large",
                          f"The request body is larger than the limit of {limit} bytes.",
                          headers={"Connection": "close"})


class RequestGuard:
    """Authenticate `/v1` requests and cap every request body, before the app runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        headers = Headers(scope=scope)
        limit = body_limit(scope, settings)
        declared = headers.get("content-length")
        principal: Principal | None = None
        if _needs_key(scope):
            answer = await self._authenticate(scope, headers, settings)
            if answer is not None:
                await answer(scope, receive, send)
                return
            principal = scope["state"]["principal"]
            refusal = await key_limiter(settings).hit(principal.user.id, scope["method"])
            if refusal is not None:
                await _too_many(refusal)(scope, receive, send)
                return
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                too_large = True  # a malformed length is not a length we can trust
            if too_large:
                await _too_large(limit)(scope, receive, send)
                return
        if principal is not None and _is_stream(scope):
            async with key_limiter(settings).stream_slot(principal.user.id) as refusal:
                if refusal is not None:
                    await _too_many(refusal)(scope, receive, send)
                    return
                await self._capped(scope, receive, send, limit)
            return
        await self._capped(scope, receive, send, limit)

    async def _authenticate(self, scope: Scope, headers: Headers, settings: Settings) -> Any:
        """None when the caller is known (and recorded in the scope); else the answer to send."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized("unauthorized", "Send an API key as `Authorization: Bearer <key>`.")
        try:
            found = await _lookup(token.strip())
        except Exception as exc:  # pool exhausted or database down: a clear 503, never a 500
            answer = unavailable_response(exc, settings)
            if answer is None:
                raise
            return answer
        if found.problem is not None:
            return _unauthorized(found.problem, found.message)
        assert found.tenant is not None and found.user is not None
        if last_use_due(found.user):
            _schedule_last_use(found.user.id)
        scope.setdefault("state", {})["principal"] = Principal(found.tenant, found.user)
        return None

    async def _capped(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        cut = False
        started = False

        async def capped_receive() -> Message:
            nonlocal received, cut
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    cut = True
                    if not started:
                        await _too_large(limit)(scope, receive, send)
                    # The parser sees the client go away and stops reading.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if cut:
                return  # our 413 went out; the app's answer to the cut-off body is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, capped_receive, guarded_send)
