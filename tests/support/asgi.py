"""Drive an ASGI app by hand, to see what it does before (or without) reading a body."""

from __future__ import annotations

from typing import Any


async def post_chunks(app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes],
                      path: str = "/v1/scans") -> tuple[int, int]:
    """POST `chunks` as a streamed body: (the response status, how many chunks it pulled)."""
    pulled = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1],
                    "more_body": pulled < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": headers, "http_version": "1.1", "scheme": "http",
             "server": ("testserver", 80), "client": ("127.0.0.1", 1234), "root_path": ""}
    await app(scope, receive, send)
    return status, pulled
