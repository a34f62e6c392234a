"""A request holds at most one database connection, and overload is a quick 503.

The API runs in this process (httpx's ASGI transport) on real PostgreSQL and SQLite with a
pool of ONE connection and no overflow. A request that took a second connection while holding
the first (the old shape: the auth session held until the response, then a write session)
could never finish with such a pool; here concurrent uploads, reads, batches, reports' 409s
must all succeed (SSE under load: tests/load; httpx's ASGI transport cannot stream). When the one connection is held elsewhere, a request waits
`db_pool_timeout_s` and gets 503 with Retry-After; on SQLite a full writer queue is a 503 too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from shared.db.migrate import upgrade_to_head
from shared.db.session import _writer_queue, async_engine
from shared.db.tenants import issue_key
from shared.settings import get_settings
from tests.support.images import brain_jpeg, brain_png
from tests.support.inprocess import settings_env

POOL_ONE = {"db_pool_size": "1", "db_max_overflow": "0", "overload_retry_after_s": "3"}
# Long enough for 26 requests to take the one connection in turn on a loaded CI machine; a
# request that needs a second connection while holding the first waits it out and fails.
PATIENT = {"db_pool_timeout_s": "20", "sqlite_write_wait_s": "20"}
IMPATIENT = {"db_pool_timeout_s": "1.5", "sqlite_write_wait_s": "1.5"}


@pytest.fixture(params=["sqlite", "pg"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    database = (f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite"
                else request.getfixturevalue("pg_database_url"))
    waits = IMPATIENT if "impatient" in request.fixturenames else PATIENT
    with settings_env(database_url=database, broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}",
                      media_dir=str(tmp_path / "media"), secret_key="conn-test", **POOL_ONE,
                      **waits):
        upgrade_to_head()
        yield request.param


@pytest.fixture()
async def client(env: str) -> AsyncIterator[httpx.AsyncClient]:
    from shared.db.session import sync_session

    with sync_session() as session:
        key = issue_key(session, f"conn-{env}-{time.monotonic_ns()}").key
    from api.main import create_app

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        yield c
    await async_engine().dispose()


async def test_concurrent_requests_succeed_on_a_pool_of_one(client: httpx.AsyncClient) -> None:
    first = await client.post("/v1/scans", files={"file": ("a.png", brain_png(1), "image/png")})
    assert first.status_code == 202, first.text
    scan_id = first.json()["id"]

    async def upload(i: int) -> int:
        r = await client.post("/v1/scans",
                              files={"file": (f"{i}.jpg", brain_jpeg(i % 4), "image/jpeg")})
        return r.status_code

    async def read(path: str) -> int:
        return (await client.get(path)).status_code

    async def batch() -> int:
        files = [("files", (f"b{i}.png", brain_png(i), "image/png")) for i in range(3)]
        return (await client.post("/v1/batches", files=files)).status_code

    started = time.monotonic()
    statuses = await asyncio.gather(
        *(upload(i) for i in range(12)), batch(), batch(),
        *(read(f"/v1/scans/{scan_id}") for _ in range(8)), read("/v1/scans"), read("/v1/me"),
        read(f"/v1/scans/{scan_id}/report.pdf"), read(f"/v1/scans/{scan_id}/fhir"))
    assert statuses[:14] == [202] * 14
    assert statuses[14:-2] == [200] * 10
    assert statuses[-2:] == [409, 200]  # a queued scan has no report yet
    # One connection, taken in turn for milliseconds: nobody waited out the pool timeout.
    assert time.monotonic() - started < 30


@pytest.fixture()
def impatient() -> None:
    """Requested by tests that want short waits (IMPATIENT) instead of PATIENT ones."""


async def test_a_held_pool_is_a_quick_503_with_retry_after(client: httpx.AsyncClient,
                                                           impatient: None) -> None:
    async with async_engine().connect() as held:  # the only connection, taken elsewhere
        await held.exec_driver_sql("SELECT 1")
        started = time.monotonic()
        r = await client.get("/v1/me")
        waited = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "unavailable"
    assert r.headers["retry-after"] == "3"
    assert 1.0 < waited < 10  # db_pool_timeout_s, not SQLAlchemy's default 30 s
    assert (await client.get("/v1/me")).status_code == 200  # and it recovers at once


async def test_sqlite_writes_queue_then_503(client: httpx.AsyncClient, env: str,
                                            impatient: None) -> None:
    if env != "sqlite":
        pytest.skip("the writer queue is SQLite's")
    # Hold the writer's turn in this process (no connection taken): the upload waits
    # sqlite_write_wait_s for its turn, then 503.
    async with _writer_queue(get_settings().async_database_url).turn(3):
        started = time.monotonic()
        r = await client.post("/v1/scans", files={"file": ("a.png", brain_png(2), "image/png")})
        waited = time.monotonic() - started
    assert (r.status_code, r.headers.get("retry-after")) == (503, "3"), r.text
    assert waited < 10
    ok = await client.post("/v1/scans", files={"file": ("a.png", brain_png(2), "image/png")})
    assert ok.status_code == 202
