"""Per-key rate limits, the cap on open event streams, and forwarded headers believed only from
configured proxies.

The API runs as `neuroscan api` processes (the real command, uvicorn's real proxy handling):
embedded (counters in memory, SQLite) and two processes sharing Redis counters (PostgreSQL is
not needed for the door; the broker is Redis, as in the full stack). No worker runs, so an
uploaded scan stays queued and its event stream stays open for as long as we hold it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from shared.db.migrate import upgrade_to_head
from shared.db.session import create_sync_db_engine
from shared.settings import _with_driver
from tests.support.asgi import post_chunks
from tests.support.images import brain_png
from tests.support.inprocess import settings_env
from tests.support.stack import REDIS_BASE_URL

REPO = Path(__file__).resolve().parents[2]
SECRET = "rate-limit-test-secret-0123456789abcdef"
LIMITS = {"RATE_LIMIT_UPLOADS_PER_MIN": "4", "RATE_LIMIT_READS_PER_MIN": "6",
          "SSE_STREAMS_PER_KEY": "2"}
JUNK = {"file": ("junk.png", b"not an image", "image/png")}  # a cheap 4xx, still counted


@dataclass
class Api:
    base_url: str
    root: Path
    sync_url: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def new_key(self, tenant: str) -> str:
        from sqlalchemy.orm import Session

        from shared.db.tenants import issue_key

        engine = create_sync_db_engine(self.sync_url)
        try:
            with Session(engine) as session, session.begin():
                return issue_key(session, tenant).key
        finally:
            engine.dispose()

    def client(self, key: str, index: int = 0, **headers: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.urls[index], timeout=30,
                                 headers={"Authorization": f"Bearer {key}", **headers})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(root: Path, env: dict[str, str], processes: int = 1) -> Api:
    root.mkdir(parents=True, exist_ok=True)
    db = f"sqlite+aiosqlite:///{root / 'api.db'}"
    full = {k: v for k, v in os.environ.items() if not k.startswith(("RATE_LIMIT", "SSE_"))}
    full.update({"ENVIRONMENT": "test", "SECRET_KEY": SECRET, "DATABASE_URL": db,
                 "BROKER_URL": f"sqla+sqlite:///{root / 'broker.db'}",
                 "MEDIA_DIR": str(root / "media"), "VAR_DIR": str(root / "var"),
                 "QUEUE_NAME": f"nsrl-{uuid.uuid4().hex[:8]}", "LOG_LEVEL": "WARNING",
                 "PYTHONPATH": str(REPO), **LIMITS, **env})
    sync_url = _with_driver(full["DATABASE_URL"], asyncio=False)
    upgrade_to_head(sync_url)
    api = Api(base_url="", root=root, sync_url=sync_url, env=full)
    for i in range(processes):
        port = _free_port()
        with open(root / f"api{i}.log", "ab") as log:
            api.procs.append(subprocess.Popen(
                [sys.executable, "-m", "cli.main", "api", "--port", str(port)], cwd=root,
                env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        api.urls.append(f"http://127.0.0.1:{port}")
    api.base_url = api.urls[0]
    for url, proc in zip(api.urls, api.procs, strict=True):
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (root / "api0.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
    return api


def _stop(api: Api) -> None:
    for proc in api.procs:
        proc.terminate()
    for proc in api.procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """Counters in memory; forwarded headers believed from 127.0.0.1 (where our tests are)."""
    api = _start(tmp_path_factory.mktemp("rl-embedded"), {"TRUSTED_PROXIES": "127.0.0.1"})
    yield api
    _stop(api)


@pytest.fixture(scope="module")
def untrusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The default: no proxy is trusted."""
    api = _start(tmp_path_factory.mktemp("rl-default"), {})
    yield api
    _stop(api)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """Two API processes with a Redis broker: counters and stream slots live in that Redis."""
    url = f"{REDIS_BASE_URL}/1"
    api = _start(tmp_path_factory.mktemp("rl-redis"), {"BROKER_URL": url}, processes=2)
    yield api
    _stop(api)
    client = redis.Redis.from_url(url)
    queue = api.env["QUEUE_NAME"]
    for name in client.scan_iter(f"*{queue}*"):
        client.delete(name)
    client.close()


async def _upload_budget(api: Api, key: str) -> list[httpx.Response]:
    answers = []
    for i in range(5):  # spread over the processes when there are several
        async with api.client(key, i % len(api.urls)) as c:
            answers.append(await c.post("/v1/scans", files=JUNK))
    return answers


def _assert_rate_limited(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["ratelimit-limit"] in ("4", "6")


@pytest.mark.parametrize("deployment", ["embedded", "shared_redis"])
async def test_each_key_has_its_own_upload_and_read_budget(
        deployment: str, request: pytest.FixtureRequest) -> None:
    api: Api = request.getfixturevalue(deployment)
    key, other = api.new_key(f"busy-{uuid.uuid4().hex[:6]}"), api.new_key("quiet")
    answers = await _upload_budget(api, key)
    assert all(400 <= r.status_code < 500 and r.status_code != 429 for r in answers[:4]), answers
    _assert_rate_limited(answers[4])
    # Reads have a budget of their own, and another key is not touched by this one's.
    for i in range(6):
        async with api.client(key, i % len(api.urls)) as c:
            assert (await c.get("/v1/me")).status_code == 200
    async with api.client(key) as c:
        _assert_rate_limited(await c.get("/v1/me"))
    async with api.client(other, len(api.urls) - 1) as c:
        assert (await c.get("/v1/me")).status_code == 200
        assert (await c.post("/v1/scans", files=JUNK)).status_code != 429
    # Refused before the body is read: a large upload over budget is answered at once.
    async with api.client(key) as c:
        started = time.monotonic()
        r = await c.post("/v1/scans", files={"file": ("big.png", b"\0" * (30 << 20), "image/png")})
        assert r.status_code == 429 and time.monotonic() - started < 5


async def test_the_limit_follows_the_key_not_the_address(embedded: Api) -> None:
    """Behind a trusted proxy every request says where it came from; a key that cycles through
    addresses still has one budget, and two keys behind one address have two."""
    key = embedded.new_key("roaming")
    statuses = []
    for i in range(5):
        async with embedded.client(key, **{"X-Forwarded-For": f"198.51.100.{i + 1}"}) as c:
            statuses.append((await c.post("/v1/scans", files=JUNK)).status_code)
    assert statuses[:4].count(429) == 0 and statuses[4] == 429, statuses
    nat = {"X-Forwarded-For": "203.0.113.7"}
    for tenant in ("ward-a", "ward-b"):
        async with embedded.client(embedded.new_key(tenant), **nat) as c:
            assert [(await c.get("/v1/me")).status_code for _ in range(6)] == [200] * 6


@asynccontextmanager
async def _stream(client: httpx.AsyncClient, scan_id: str) -> AsyncIterator[httpx.Response]:
    async with client.stream("GET", f"/v1/scans/{scan_id}/events") as r:
        if r.status_code == 200:
            # Wait for the first event: the stream is open and holds its slot.
            lines = r.aiter_lines()
            while not (await asyncio.wait_for(anext(lines), 10)).startswith("event:"):
                pass
        yield r


@pytest.mark.parametrize("deployment", ["embedded", "shared_redis"])
async def test_open_event_streams_are_capped_per_key(
        deployment: str, request: pytest.FixtureRequest) -> None:
    api: Api = request.getfixturevalue(deployment)
    key = api.new_key(f"watcher-{uuid.uuid4().hex[:6]}")
    async with api.client(key) as c:
        accepted = await c.post("/v1/scans", files={"file": ("s.png", brain_png(1), "image/png")})
        assert accepted.status_code == 202, accepted.text
    scan_id = accepted.json()["id"]
    last = len(api.urls) - 1
    c0, c1, c2 = api.client(key, 0), api.client(key, last), api.client(key, 0)
    async with c0, c1, c2:
        async with _stream(c0, scan_id) as s0, _stream(c1, scan_id) as s1:
            assert (s0.status_code, s1.status_code) == (200, 200)
            async with _stream(c2, scan_id) as third:
                assert third.status_code == 429
                await third.aread()
                assert third.json()["error"]["code"] == "too_many_streams"
                assert int(third.headers["retry-after"]) > 0
            # Another key's streams are not counted against this one.
            async with api.client(api.new_key("other-watcher")) as other:
                accepted = await other.post(
                    "/v1/scans", files={"file": ("o.png", brain_png(2), "image/png")})
                async with _stream(other, accepted.json()["id"]) as theirs:
                    assert theirs.status_code == 200
        # Both closed: their slots are free again (the server notices the client leaving).
        for _ in range(50):
            async with _stream(c2, scan_id) as again:
                if again.status_code == 200:
                    break
            await asyncio.sleep(0.2)
        assert again.status_code == 200


async def test_forwarded_headers_are_believed_only_from_trusted_proxies(
        untrusting: Api, embedded: Api) -> None:
    """A redirect's Location is built from the scheme the API believes: X-Forwarded-Proto
    from an untrusted peer is ignored (the default), from a trusted proxy it is honoured."""
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.10"}
    for api, scheme in ((untrusting, "http"), (embedded, "https")):
        async with api.client(api.new_key("proxied"), **forwarded) as c:
            r = await c.get("/v1/scans/", follow_redirects=False)
        assert r.status_code == 307, r.text
        assert r.headers["location"].startswith(f"{scheme}://"), r.headers["location"]


async def test_over_budget_uploads_are_refused_before_the_body(tmp_path: Path) -> None:
    """In this process, driving the app by hand: the 429 pulls no chunk of the body."""
    from api.main import create_app
    from shared.db.session import sync_session
    from shared.db.tenants import issue_key

    env = {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
           "broker_url": f"sqla+sqlite:///{tmp_path / 'b.db'}", "media_dir": str(tmp_path / "m"),
           "secret_key": SECRET, "rate_limit_uploads_per_min": "1"}
    with settings_env(**env):
        upgrade_to_head()
        with sync_session() as session:
            key = issue_key(session, "door").key
        app = create_app()
        headers = [(b"authorization", f"Bearer {key}".encode()),
                   (b"content-type", b"multipart/form-data; boundary=x")]
        first, _ = await post_chunks(app, headers, [b"--x--\r\n"])  # spends the budget of one
        assert 400 <= first < 500 and first != 429
        assert await post_chunks(app, headers, [b"x" * 65536] * 8) == (429, 0)


async def test_an_unreachable_redis_opens_the_door_instead_of_closing_it() -> None:
    """Counters in a Redis that is not there (a port nobody listens on): requests go through,
    quickly, and the limiter stops asking for a while instead of waiting on every request."""
    from api.ratelimit import KeyLimiter
    from shared.settings import Settings

    limiter = KeyLimiter(Settings(environment="test", secret_key=SECRET,
                                  rate_limit_storage_url=f"redis://127.0.0.1:{_free_port()}/0",
                                  rate_limit_uploads_per_min=1, sse_streams_per_key=1))
    assert limiter.backend == "redis"
    started = time.monotonic()
    assert [await limiter.hit("key-1", "POST") for _ in range(3)] == [None] * 3
    async with limiter.stream_slot("key-1") as first, limiter.stream_slot("key-1") as second:
        assert first is None and second is None
    assert time.monotonic() - started < 3.0
