"""The clinician's page and its assets (api/routes/web.py), served in this process."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from shared.reports.wording import DISCLAIMER
from tests.support.inprocess import asgi_client, embedded_settings


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with embedded_settings(tmp_path_factory.mktemp("web"),
                           cloudinary_url="cloudinary://key:secret@demo?secure_distribution=img.example.org",
                           public_base_url="https://neuroscan.example.org/base"):
        yield


@pytest.fixture()
async def client(settings: None) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client() as c:
        yield c


async def test_page_carries_the_servers_vocabulary_and_disclaimer(client: httpx.AsyncClient) -> None:
    from api.routes.meta import vocabulary

    r = await client.get("/app")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    block = re.search(r'<script type="application/json" id="vocabulary">(.*?)</script>', r.text, re.S)
    assert block is not None
    assert json.loads(block.group(1)) == json.loads(vocabulary().model_dump_json())
    footer = re.search(r'<footer class="disclaimer" id="disclaimer">(.*?)</footer>', r.text, re.S)
    assert footer is not None and footer.group(1) == DISCLAIMER
    assert "<!-- vocabulary -->" not in r.text and "<!-- disclaimer -->" not in r.text


async def test_page_headers_lock_it_down(client: httpx.AsyncClient) -> None:
    r = await client.get("/app")
    assert r.headers["cache-control"] == "no-cache, no-store"
    assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
    csp = dict(part.split(" ", 1) for part in r.headers["content-security-policy"].split("; "))
    assert csp["script-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    img = csp["img-src"].split()
    # The storage's delivery hosts, the account's own CDN name and the public origin (no path).
    assert {"https://res.cloudinary.com", "https://img.example.org",
            "https://neuroscan.example.org"} <= set(img)


async def test_assets_revalidate_with_their_etag(client: httpx.AsyncClient) -> None:
    r = await client.get("/app/static/dom.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert r.headers["cache-control"] == "no-cache" and "export function h(" in r.text
    again = await client.get("/app/static/dom.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    head = await client.head("/app")
    assert head.status_code == 200


@pytest.mark.parametrize("name", ["nope.js", "index.html", "../routes/web.py", "%2e%2e/main.py"])
async def test_only_shipped_assets_are_served(client: httpx.AsyncClient, name: str) -> None:
    r = await client.get(f"/app/static/{name}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_trailing_slash_redirects_to_the_one_address(client: httpx.AsyncClient) -> None:
    r = await client.get("/app/")
    assert r.status_code == 308 and r.headers["location"] == "/app"


def test_a_page_without_its_slots_is_refused() -> None:
    from api.routes.web import fill_page

    with pytest.raises(RuntimeError, match="vocabulary"):
        fill_page(b"<html><!-- disclaimer --></html>")
