"""`GET /metrics`: Prometheus text with request counts and latency by route template."""

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
