"""A local stand-in for Cloudinary's upload and download API, for the real SDK to talk to.

The SDK is pointed at it with `upload_prefix`. Like the service, it refuses any request whose
signature is not SHA-1 over the sorted parameters plus the API secret (401), refuses expired
download links (401), serves back exactly what was uploaded, and destroys assets on request.

Faults: `fail_uploads` answers the next N uploads with 500 (an outage); `fail_ratio` makes each
upload fail at random with that probability (seeded, `fault_seed`): half of those answer 500
at once, the other half store the asset and then hang for `hang_s` before a 500 (a timeout
whose upload may have happened: the client cannot tell). `injected` counts both kinds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

# Sent with a request but not signed (the SDK adds them after signing).
_UNSIGNED = {"api_key", "signature", "file", "resource_type", "cloud_name"}


def string_to_sign(params: dict[str, str]) -> str:
    """Cloudinary's signature v2: sorted `k=v` joined by `&`, empty values left out, `&` escaped."""
    parts = [f"{k}={v}".replace("&", "%26") for k, v in params.items() if v and k not in _UNSIGNED]
    return "&".join(sorted(parts))


def signature(params: dict[str, str], api_secret: str) -> str:
    return hashlib.sha1((string_to_sign(params) + api_secret).encode()).hexdigest()


@dataclass
class Asset:
    public_id: str
    type: str
    format: str
    data: bytes
    version: int
    uploads: int = 1


@dataclass
class CloudinaryStandIn:
    cloud_name: str = "neuroscan-test"
    api_key: str = "123456789012345"
    api_secret: str = "standin-secret-not-real"
    assets: dict[tuple[str, str], Asset] = field(default_factory=dict)
    rejected: int = 0
    # Answer this many coming uploads with HTTP 500, as during an outage.
    fail_uploads: int = 0
    # Each upload fails with this probability (half at once, half after hanging `hang_s`).
    fail_ratio: float = 0.0
    hang_s: float = 5.0
    fault_seed: int = 13
    injected: dict[str, int] = field(default_factory=lambda: {"errors": 0, "hangs": 0})
    destroyed: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(13))
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cloudinary_url(self) -> str:
        return f"cloudinary://{self.api_key}:{self.api_secret}@{self.cloud_name}"

    @property
    def upload_count(self) -> int:
        return sum(a.uploads for a in self.assets.values())

    def random_faults(self, ratio: float, hang_s: float | None = None) -> None:
        """Fail each coming upload with probability `ratio` (0 switches it off)."""
        with self._lock:
            self._rng = random.Random(self.fault_seed)
            self.fail_ratio = ratio
            if hang_s is not None:
                self.hang_s = hang_s

    def _draw_fault(self) -> str | None:
        """None, "error" or "hang" for the next upload."""
        with self._lock:
            if self.fail_uploads > 0:
                self.fail_uploads -= 1
                return "outage"
            if self.fail_ratio <= 0 or self._rng.random() >= self.fail_ratio:
                return None
            kind = "hangs" if self._rng.random() < 0.5 else "errors"
            self.injected[kind] += 1
            return kind

    def start(self, host: str = "127.0.0.1", port: int = 0) -> CloudinaryStandIn:
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> CloudinaryStandIn:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- what the handler calls -----------------------------------------------------------
    def check(self, params: dict[str, str]) -> str | None:
        if params.get("api_key") != self.api_key:
            return "unknown api_key"
        if params.get("signature") != signature(params, self.api_secret):
            return "Invalid Signature"
        return None

    def store(self, params: dict[str, str], data: bytes, filename: str | None) -> Asset:
        public_id = params.get("public_id") or hashlib.sha1(data).hexdigest()[:16]
        kind = params.get("type") or "upload"
        fmt = params.get("format") or _sniff(data) or (filename or "").rpartition(".")[2] or "bin"
        with self._lock:
            key = (kind, public_id)
            old = self.assets.get(key)
            if old is not None and params.get("overwrite") not in ("1", "true", "True"):
                return old  # Cloudinary keeps the existing asset unless told to overwrite
            asset = Asset(public_id, kind, fmt, data, version=int(time.time()),
                          uploads=(old.uploads + 1) if old else 1)
            self.assets[key] = asset
            return asset

    def destroy(self, params: dict[str, str]) -> str:
        """Cloudinary's answer to a destroy: `ok`, or `not found` (not an error)."""
        with self._lock:
            found = self.assets.pop((params.get("type") or "upload", params.get("public_id", "")),
                                    None)
            if found is not None:
                self.destroyed += 1
        return "ok" if found is not None else "not found"


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[128:132] == b"DICM":
        return "dcm"
    return None


def _handler_for(standin: CloudinaryStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:  # keep test output quiet
            pass

        def _json(self, status: int, body: dict[str, object]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _path_parts(self) -> list[str]:
            # /v1_1/<cloud>/image/<action>
            return [p for p in urlsplit(self.path).path.split("/") if p]

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            parts = self._path_parts()
            if len(parts) != 4 or parts[1] != standin.cloud_name or \
                    parts[3] not in ("upload", "destroy"):
                return self._json(404, {"error": {"message": f"no route {self.path}"}})
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            params, data, filename = _parse_multipart(self.headers.get("Content-Type", ""), body)
            fault = standin._draw_fault() if parts[3] == "upload" else None
            if fault in ("outage", "errors"):
                return self._json(500, {"error": {"message": "stand-in outage"}})
            problem = standin.check(params)
            if problem:
                standin.rejected += 1
                return self._json(401, {"error": {"message": problem}})
            if parts[3] == "destroy":
                return self._json(200, {"result": standin.destroy(params)})
            if data is None:
                return self._json(400, {"error": {"message": "Missing required parameter - file"}})
            asset = standin.store(params, data, filename)
            if fault == "hangs":  # stored, but the answer comes too late for the client
                time.sleep(standin.hang_s)
                with contextlib.suppress(OSError):
                    self._json(500, {"error": {"message": "stand-in timeout"}})
                return None
            self._json(200, {
                "public_id": asset.public_id, "version": asset.version, "format": asset.format,
                "resource_type": parts[2], "type": asset.type, "bytes": len(asset.data),
                "secure_url": f"{standin.url}/{standin.cloud_name}/{parts[2]}/{asset.type}/"
                              f"v{asset.version}/{asset.public_id}.{asset.format}",
            })

        def do_GET(self) -> None:  # noqa: N802
            parts = self._path_parts()
            if len(parts) != 4 or parts[1] != standin.cloud_name or parts[3] != "download":
                return self._json(404, {"error": {"message": f"no route {self.path}"}})
            params = dict(parse_qsl(urlsplit(self.path).query))
            problem = standin.check(params)
            if not problem and int(params.get("expires_at") or 0) < time.time():
                problem = "Link expired"
            if problem:
                standin.rejected += 1
                return self._json(401, {"error": {"message": problem}})
            asset = standin.assets.get((params.get("type") or "upload", params.get("public_id", "")))
            if asset is None or params.get("format") not in (asset.format, None):
                return self._json(404, {"error": {"message": "Resource not found"}})
            self.send_response(200)
            self.send_header("Content-Type", "image/png" if asset.format == "png" else
                             "application/octet-stream")
            self.send_header("Content-Length", str(len(asset.data)))
            self.end_headers()
            self.wfile.write(asset.data)

    return Handler


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], bytes | None, str | None]:
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    params: dict[str, str] = {}
    data: bytes | None = None
    filename: str | None = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "file":
            data, filename = payload, part.get_filename()
        elif name:
            params[str(name)] = payload.decode("utf-8")
    return params, data, filename
