"""The door: the API key and the body's size are checked before any route, or the multipart
parser, sees the request.

A pure ASGI middleware, so no byte of the body is read for a caller without a good key: a
`/v1` request without one is answered 401 from its headers alone; a body declared larger than
allowed is answered 413 unread; a chunked body is cut off, 413, as soon as it passes the limit.
The key's lookup takes a pooled connection for one indexed query and gives it back before the
request goes on (one connection per request at most, issue 18); routes find the caller in
`request.state.principal`.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import Principal, lookup_principal, unauthorized_response
from api.errors import error_response, unavailable_response
from shared.settings import Settings, get_settings

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
        if _needs_key(scope):
            answer = await self._authenticate(scope, headers, settings)
            if answer is not None:
                await answer(scope, receive, send)
                return
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                too_large = True  # a malformed length is not a length we can trust
            if too_large:
                await _too_large(limit)(scope, receive, send)
                return
        await self._capped(scope, receive, send, limit)

    async def _authenticate(self, scope: Scope, headers: Headers, settings: Settings) -> Any:
        """None when the caller is known (and recorded in the scope); else the answer to send."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return unauthorized_response("Send an API key as `Authorization: Bearer <key>`.")
        try:
            principal: Principal | None = await lookup_principal(token.strip())
        except Exception as exc:  # pool exhausted or database down: a clear 503, never a 500
            answer = unavailable_response(exc, settings)
            if answer is None:
                raise
            return answer
        if principal is None:
            return unauthorized_response("The API key is unknown or revoked.")
        scope.setdefault("state", {})["principal"] = principal
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
