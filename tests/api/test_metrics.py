"""`GET /metrics`: Prometheus text with request counts and latency by route template; and the
X-Request-ID every answer carries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.db.migrate import upgrade_to_head
from tests.support.inprocess import settings_env


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("metrics")
    with settings_env(database_url=f"sqlite+aiosqlite:///{root / 'db.sqlite'}",
                      broker_url=f"sqla+sqlite:///{root / 'broker.db'}",
                      media_dir=str(root / "media"), secret_key="metrics-test-secret"):
        upgrade_to_head()
        yield root


async def test_metrics_count_requests_by_route_template(root: Path) -> None:
    from api.main import create_app

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/healthz")).status_code == 200
        # Unauthenticated: a 401 is counted under the route's template, not the scan id.
        assert (await client.get("/v1/scans/0b6c8d9e-1234-4abc-8def-000000000000")).status_code == 401
        r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'http_requests_total{handler="/healthz",method="GET",status="2xx"} 1.0' in text
    assert "0b6c8d9e" not in text
    assert "http_request_duration_seconds_bucket" in text


async def test_every_answer_carries_a_request_id(root: Path) -> None:
    """X-Request-ID: the caller's when it is a plain token, else a new one; on 401s too."""
    from api.main import create_app

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        mine = await client.get("/healthz", headers={"X-Request-ID": "ris-42.7"})
        refused = await client.get("/v1/me", headers={"X-Request-ID": "ris-43"})
        made = await client.get("/metrics")
        forged = await client.get("/healthz", headers={"X-Request-ID": "a\tb"})
    assert mine.headers["x-request-id"] == "ris-42.7"
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "ris-43"
    assert len(made.headers["x-request-id"]) == 32  # made here: a UUID4 in hex
    assert forged.headers["x-request-id"] not in ("a\tb", made.headers["x-request-id"])
