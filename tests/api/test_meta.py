"""`GET /v1/meta`: the vocabulary clients show scans with, from the server's own definitions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from shared.db.session import sync_session
from shared.db.tenants import issue_key
from shared.labels import CLASSES
from shared.reports.wording import DISCLAIMER, confidence_band
from tests.support.inprocess import asgi_client, embedded_settings


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_settings(tmp_path_factory.mktemp("meta")):
        with sync_session() as session:
            issued = issue_key(session, "meta-hospital").key
            session.commit()
        yield issued


@pytest.fixture()
async def client(key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client() as c:
        yield c


async def test_meta_needs_a_key_like_every_v1_route(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/meta")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


async def test_meta_is_the_servers_vocabulary(client: httpx.AsyncClient, key: str) -> None:
    r = await client.get("/v1/meta", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    meta = r.json()
    assert [c["label"] for c in meta["classes"]] == list(CLASSES)
    assert {c["label"]: c["name"] for c in meta["classes"]}["notumor"] == "No tumour"
    assert [c["label"] for c in meta["classes"] if not c["tumour"]] == ["notumor"]
    assert meta["states"] == {"all": ["queued", "processing", "succeeded", "failed"],
                              "final": ["succeeded", "failed"]}
    assert meta["disclaimer"] == DISCLAIMER
    assert meta["gate_error_codes"] == ["not_brain_mri"] and meta["browser_formats"] == ["png", "jpeg"]


@pytest.mark.parametrize("confidence", [0.0, 0.5, 0.6999, 0.7, 0.85, 0.8999, 0.9, 1.0])
async def test_bands_read_as_the_reports_read_them(client: httpx.AsyncClient, key: str,
                                                   confidence: float) -> None:
    """A client that picks the first band whose lowest bound the confidence reaches says what
    the PDF and FHIR report say."""
    bands = (await client.get("/v1/meta", headers={"Authorization": f"Bearer {key}"})).json()["confidence_bands"]
    assert [b["lowest"] for b in bands] == sorted((b["lowest"] for b in bands), reverse=True)
    chosen = next(b for b in bands if confidence >= b["lowest"])
    assert chosen["name"] == confidence_band(confidence)


async def test_meta_is_in_the_openapi_schema(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "/v1/meta" in schema["paths"]
