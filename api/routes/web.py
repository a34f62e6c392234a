"""The clinician's web page: `GET /app` and its static assets under `/app/static/`.

The page is plain HTML, CSS and ES modules from `api/web/`, served by the API itself so that
`make run` is all a clinic needs. It talks to the same `/v1` routes as every other client,
with the API key in an `Authorization` header (never in a URL). The page carries the
vocabulary of `GET /v1/meta` (class names, final states, confidence bands, the disclaimer) as
a JSON data block, filled in here, so its scripts keep no copy of it.
"""

from __future__ import annotations

import hashlib
import html
import mimetypes
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse

from api.routes.meta import vocabulary
from shared.settings import Settings, get_settings

router = APIRouter(include_in_schema=False)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
_CLOUDINARY_HOSTS = ["https://api.cloudinary.com", "https://res.cloudinary.com"]

# Assets are revalidated on every load (cheap with the ETag), so a deploy shows at once.
_CACHE_ASSET = "no-cache"
_CACHE_PAGE = "no-cache, no-store"

# Where index.html receives the vocabulary (a JSON data block) and the disclaimer (text).
VOCABULARY_SLOT = b"<!-- vocabulary -->"
DISCLAIMER_SLOT = b"<!-- disclaimer -->"


@dataclass(frozen=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str


@lru_cache(maxsize=1)
def _assets() -> dict[str, _Asset]:
    """Every file under api/web, read once: only these names can ever be served."""
    found: dict[str, _Asset] = {}
    for path in sorted(WEB_DIR.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        body = path.read_bytes()
        if path.name == "index.html":
            body = fill_page(body)
        media_type = _media_type(path)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        found[path.relative_to(WEB_DIR).as_posix()] = _Asset(body, media_type, etag)
    return found


def fill_page(page: bytes) -> bytes:
    """index.html with the vocabulary and the disclaimer filled in from the server's own."""
    meta = vocabulary()
    # JSON inside <script>: escaping "<" keeps "</script>" and "<!--" out of the block.
    data = meta.model_dump_json().replace("<", "\\u003c").encode()
    for slot in (VOCABULARY_SLOT, DISCLAIMER_SLOT):
        if page.count(slot) != 1:
            raise RuntimeError(f"api/web/index.html must hold {slot.decode()} exactly once")
    return (page.replace(VOCABULARY_SLOT, data)
                .replace(DISCLAIMER_SLOT, html.escape(meta.disclaimer).encode()))


def _media_type(path: Path) -> str:
    # Module scripts must be served as JavaScript, whatever the host's mime.types says.
    explicit = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
                ".svg": "image/svg+xml", ".ico": "image/x-icon"}
    media_type = explicit.get(path.suffix) or mimetypes.guess_type(path.name)[0]
    media_type = media_type or "application/octet-stream"
    return f"{media_type}; charset=utf-8" if media_type.startswith("text/") else media_type


def content_security_policy(settings: Settings) -> str:
    """A strict policy: our own scripts and styles only; images also from the storage host."""
    img_src = ["'self'", "data:", "blob:", *_image_hosts(settings)]
    directives = {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": " ".join(img_src),
        "connect-src": "'self'",
        "font-src": "'self'",
        "object-src": "'none'",
        "base-uri": "'none'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def _image_hosts(settings: Settings) -> list[str]:
    """Origins the signed image links may point at besides this one."""
    hosts: list[str] = []
    cloudinary = settings.cloudinary
    if cloudinary is not None:
        # Authenticated assets are delivered as signed download links from the API host.
        hosts += _CLOUDINARY_HOSTS
        # A private CDN name, when the account has one (cloudinary://…?secure_distribution=…).
        for key in ("secure_distribution", "cname"):
            if cloudinary.get(key):
                hosts.append("https://" + cloudinary[key].strip("/"))
        # Where the SDK sends its calls instead of Cloudinary (a proxy, or a test stand-in).
        prefix = settings.cloudinary_upload_prefix or cloudinary.get("upload_prefix")
        hosts += _origin(prefix)
    hosts += _origin(settings.public_base_url)
    return list(dict.fromkeys(hosts))


def _origin(url: str | None) -> list[str]:
    parsed = urlparse(url or "")
    return [f"{parsed.scheme}://{parsed.netloc}"] if parsed.scheme and parsed.netloc else []


def _security_headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        # Signed image links must not leak to other sites through the Referer header.
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    }


def _send(request: Request, asset: _Asset, cache_control: str, extra: dict[str, str]) -> Response:
    headers = {"Cache-Control": cache_control, "ETag": asset.etag, **extra}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.api_route("/app", methods=["GET", "HEAD"])
def get_app(request: Request) -> Response:
    """The clinician's page."""
    asset = _assets()["index.html"]
    return _send(request, asset, _CACHE_PAGE, _security_headers(get_settings()))


@router.get("/app/")
def redirect_app() -> RedirectResponse:
    """One canonical address, so relative links and bookmarks agree."""
    return RedirectResponse("/app", status_code=308)


@router.api_route("/app/static/{name:path}", methods=["GET", "HEAD"])
def get_asset(name: str, request: Request) -> Response:
    """A script, stylesheet or icon of the page (only files shipped in api/web)."""
    asset = _assets().get(name)
    if asset is None or name == "index.html":
        raise HTTPException(status_code=404, detail="No such file.")
    return _send(request, asset, _CACHE_ASSET, {"X-Content-Type-Options": "nosniff"})
