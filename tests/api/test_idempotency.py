"""Idempotency-Key on POST /v1/scans and POST /v1/batches (api/idempotency.py), on SQLite and
PostgreSQL: the API in this process (httpx's ASGI transport, or uvicorn in a thread for the
client library's own retries), real databases, a real broker file.

A retry with the same key and request gets the first answer (same ids), never a second scan;
the same key with another request is refused; keys expire; concurrent requests with one key
store one scan."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, update

from shared.db.idempotency_models import IdempotencyKey
from shared.db.models import Base, Batch, Scan, utcnow
from shared.db.session import sync_engine, sync_session
from shared.db.tenants import issue_key
from tests.support.images import brain_png
from tests.support.inprocess import asgi_client, migrated_database
from tests.support.stack import free_port

KEY = "Idempotency-Key"


@pytest.fixture(scope="module", params=["sqlite", "pg"])
def database(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp(f"idem-{request.param}")
    with migrated_database(request.param, root):
        yield request.param


@pytest.fixture(scope="module")
def keys(database: str) -> dict[str, str]:
    with sync_session() as session:
        return {name: issue_key(session, f"{name}-{database}").key for name in ("alpha", "beta")}


@pytest.fixture()
async def api(keys: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(Authorization=f"Bearer {keys['alpha']}") as c:
        yield c


def _count(model: type[Base], **where: object) -> int:
    with sync_session() as session:
        query = select(func.count()).select_from(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return int(session.scalar(query) or 0)


def _scans_named(filename: str) -> int:
    return _count(Scan, filename=filename)


def test_the_migration_builds_the_model(database: str) -> None:
    with sync_engine().connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diff if "idempotency_keys" in str(d)] == []


async def test_a_retried_scan_gets_the_first_answer_and_no_second_scan(
        api: httpx.AsyncClient) -> None:
    key, name = str(uuid.uuid4()), f"retry-{uuid.uuid4().hex[:8]}.png"
    data = brain_png(1)
    first = await api.post("/v1/scans", files={"file": (name, data, "image/png")},
                           headers={KEY: key})
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    # httpx picks a new multipart boundary for every request: the body differs byte for byte.
    again = await api.post("/v1/scans", files={"file": (name, data, "image/png")},
                           headers={KEY: key})
    assert (again.status_code, again.json()) == (202, first.json())
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _scans_named(name) == 1
    # Without a key, the same upload is a new submission.
    other = await api.post("/v1/scans", files={"file": (name, data, "image/png")})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert _scans_named(name) == 2


async def test_a_retried_batch_gets_the_same_batch_and_scan_ids(api: httpx.AsyncClient) -> None:
    key, tag = str(uuid.uuid4()), uuid.uuid4().hex[:8]
    files = [("files", (f"b-{tag}-{i}.png", brain_png(10 + i), "image/png")) for i in range(3)]
    files.append(("files", (f"b-{tag}-bad.png", b"not an image", "image/png")))
    first = await api.post("/v1/batches", files=files, headers={KEY: key})
    assert first.status_code == 202, first.text
    assert len(first.json()["scan_ids"]) == 3 and len(first.json()["rejected"]) == 1
    again = await api.post("/v1/batches", files=files, headers={KEY: key})
    assert (again.status_code, again.json()) == (202, first.json())
    assert again.headers["Idempotent-Replayed"] == "true"
    assert sum(_scans_named(f"b-{tag}-{i}.png") for i in range(3)) == 3
    assert _count(Batch, id=first.json()["id"]) == 1


async def test_the_same_key_for_another_request_is_refused(api: httpx.AsyncClient) -> None:
    key = str(uuid.uuid4())
    name = f"k-{uuid.uuid4().hex[:8]}.png"
    first = await api.post("/v1/scans", files={"file": (name, brain_png(2), "image/png")},
                           headers={KEY: key})
    assert first.status_code == 202
    cases = [  # another file, another field, another route
        ("/v1/scans", {"files": {"file": (name, brain_png(3), "image/png")}}),
        ("/v1/scans", {"files": {"file": (name, brain_png(2), "image/png")},
                       "data": {"callback_url": "https://ris.example.org/hook"}}),
        ("/v1/batches", {"files": [("files", (name, brain_png(2), "image/png"))]}),
    ]
    for path, kwargs in cases:
        r = await api.post(path, headers={KEY: key}, **kwargs)
        assert r.status_code == 422, (path, r.text)
        assert r.json()["error"]["code"] == "idempotency_key_reused"
    assert _scans_named(name) == 1


async def test_keys_belong_to_a_tenant(api: httpx.AsyncClient, keys: dict[str, str]) -> None:
    key, name = str(uuid.uuid4()), f"t-{uuid.uuid4().hex[:8]}.png"
    files = {"file": (name, brain_png(4), "image/png")}
    alpha = await api.post("/v1/scans", files=files, headers={KEY: key})
    beta = await api.post("/v1/scans", files=files,
                          headers={KEY: key, "Authorization": f"Bearer {keys['beta']}"})
    assert alpha.status_code == beta.status_code == 202
    assert alpha.json()["id"] != beta.json()["id"] and _scans_named(name) == 2


async def test_a_malformed_key_is_refused_before_anything_is_stored(
        api: httpx.AsyncClient) -> None:
    name = f"m-{uuid.uuid4().hex[:8]}.png"
    for bad in (b"x" * 256, b"spaces are not allowed", "é".encode()):
        r = await api.post("/v1/scans", files={"file": (name, brain_png(5), "image/png")},
                           headers={KEY: bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_idempotency_key"
    assert _scans_named(name) == 0


async def test_an_expired_key_starts_a_new_submission(api: httpx.AsyncClient) -> None:
    key, name = str(uuid.uuid4()), f"e-{uuid.uuid4().hex[:8]}.png"
    files = {"file": (name, brain_png(6), "image/png")}
    first = await api.post("/v1/scans", files=files, headers={KEY: key})
    with sync_session() as session:
        session.execute(update(IdempotencyKey).where(IdempotencyKey.key == key)
                        .values(expires_at=utcnow() - timedelta(seconds=1)))
    later = await api.post("/v1/scans", files=files, headers={KEY: key})
    assert later.status_code == 202 and "Idempotent-Replayed" not in later.headers
    assert later.json()["id"] != first.json()["id"] and _scans_named(name) == 2
    with sync_session() as session:  # the expired record was replaced, not kept beside
        records = list(session.scalars(select(IdempotencyKey).where(IdempotencyKey.key == key)))
    assert len(records) == 1 and records[0].response["id"] == later.json()["id"]
    assert records[0].expires_at > utcnow() + timedelta(hours=23)


async def test_concurrent_requests_with_one_key_store_one_scan(api: httpx.AsyncClient) -> None:
    key, name = str(uuid.uuid4()), f"c-{uuid.uuid4().hex[:8]}.png"
    data = brain_png(7)
    answers = await asyncio.gather(*[
        api.post("/v1/scans", files={"file": (name, data, "image/png")}, headers={KEY: key})
        for _ in range(8)])
    assert [r.status_code for r in answers] == [202] * 8, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert _scans_named(name) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == 7


# --- the client library retries with the key it chose once ---------------------------------

class _LoseFirstAnswer(httpx.HTTPTransport):
    """A network that delivers the first POST and then drops the connection before the answer
    arrives (the client cannot know whether it was stored). Records each POST's key."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST":
            self.keys.append(request.headers.get(KEY))
            if len(self.keys) == 1:
                response.read()
                response.close()
                raise httpx.ReadError("connection reset before the answer", request=request)
        return response


@pytest.fixture()
async def server(database: str) -> AsyncIterator[str]:
    """uvicorn serving the app on this test's event loop (asyncpg connections belong to the
    loop that opened them), for a synchronous client run in a thread."""
    import uvicorn

    from api.main import create_app

    port = free_port(19700, 19749)
    srv = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port,
                                        log_level="warning"))
    task = asyncio.create_task(srv.serve())
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("route", ["scans", "batches"])
async def test_the_client_retries_a_lost_answer_with_the_same_key(
        server: str, keys: dict[str, str], tmp_path: Path, route: str) -> None:
    from neuroscan.client import Client

    name = f"client-{route}-{uuid.uuid4().hex[:8]}.png"
    path = tmp_path / name
    path.write_bytes(brain_png(8))
    network = _LoseFirstAnswer()

    def submit() -> list[str]:
        with Client(server, keys["alpha"], transport=network, retries=3) as client:
            if route == "scans":
                return [client.submit_scan(path).id]
            return client.submit_batch([path]).scan_ids

    ids = await asyncio.to_thread(submit)
    assert len(network.keys) == 2 and network.keys[0] == network.keys[1]
    uuid.UUID(str(network.keys[0]))  # one fresh UUID for the submission
    assert _scans_named(name) == 1
    with sync_session() as session:
        assert session.scalar(select(Scan.id).where(Scan.filename == name)) == ids[0]
