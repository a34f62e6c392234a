"""Engines and sessions: async for the API, sync for the worker, Alembic and the CLI.

SQLite (the embedded default) is shared by the API and worker processes: WAL lets readers
run beside a writer, `busy_timeout` makes a writer wait for the lock instead of failing, and
write sessions begin with `BEGIN IMMEDIATE`, because a deferred transaction that read first
cannot upgrade to a write lock once another process has committed (SQLITE_BUSY_SNAPSHOT,
which no timeout retries). PostgreSQL needs none of this.

The API's async engine is sized from the settings (`db_pool_size`, `db_max_overflow`,
`db_pool_timeout_s`): every request holds at most one connection at a time, so a full pool
means real saturation, and the wait for a connection is short and ends in a 503. On SQLite the
API's writes also queue in process for the single writer (`async_write_session`): a bounded
queue with a bounded wait, then `ServiceBusy` (503), rather than many connections spinning on
the file lock.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import ServiceBusy
from shared.settings import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
_IMMEDIATE = "sqlite_begin_immediate"

# libpq's sslmode -> asyncpg's `ssl` argument (asyncpg accepts the same words, minus `allow`).
_ASYNCPG_SSL = {"disable": False, "allow": "prefer", "prefer": "prefer", "require": "require",
                "verify-ca": "verify-ca", "verify-full": "verify-full"}


def _sqlite_events(sync_engine: Engine, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver, so we can say BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a lot faster than FULL
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _split_postgres_options(url: URL, *, asyncio: bool) -> tuple[URL, dict[str, Any]]:
    """Hosted PostgreSQL URLs carry libpq options asyncpg does not know; translate them."""
    query = dict(url.query)
    connect_args: dict[str, Any] = {}
    pgbouncer = str(query.pop("pgbouncer", "")).lower() in ("1", "true", "yes")
    if asyncio:
        sslmode = query.pop("sslmode", None)
        if sslmode is not None:
            if sslmode not in _ASYNCPG_SSL:
                raise ValueError(f"unknown sslmode {sslmode!r}")
            connect_args["ssl"] = _ASYNCPG_SSL[str(sslmode)]
        if pgbouncer:  # transaction-mode poolers cannot keep prepared statements
            connect_args["statement_cache_size"] = 0
    elif pgbouncer:
        connect_args["prepare_threshold"] = None
    return url.set(query=query), connect_args


def create_async_db_engine(url: str | None = None) -> AsyncEngine:
    settings = get_settings()
    parsed = make_url(url or settings.async_database_url)
    pool = {"pool_size": settings.db_pool_size, "max_overflow": settings.db_max_overflow,
            "pool_timeout": settings.db_pool_timeout_s}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            pool = {}  # one in-memory database per connection: SQLAlchemy picks its own pool
        # The API waits for a worker's write lock no longer than for its own writer queue.
        busy_ms = int(settings.sqlite_write_wait_s * 1000)
        engine = create_async_engine(parsed, connect_args={"timeout": busy_ms / 1000}, **pool)
        _sqlite_events(engine.sync_engine, busy_timeout_ms=busy_ms)
        return engine
    parsed, connect_args = _split_postgres_options(parsed, asyncio=True)
    return create_async_engine(parsed, connect_args=connect_args, pool_pre_ping=True, **pool)


def create_sync_db_engine(url: str | None = None, *, immediate: bool = True) -> Engine:
    """Sync engine; on SQLite its transactions take the write lock up front (the worker writes)."""
    parsed = make_url(url or get_settings().sync_database_url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _sqlite_events(engine)
        return engine.execution_options(**{_IMMEDIATE: immediate}) if immediate else engine
    parsed, connect_args = _split_postgres_options(parsed, asyncio=False)
    return create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)


# Cached by the resolved URL: `async_engine()` and `async_engine(None)` must be one engine
# (one pool), whatever way a caller spells "the configured database".
def async_engine(url: str | None = None) -> AsyncEngine:
    """The process's async engine for `url` (default: the configured database)."""
    return _async_engine(url or get_settings().async_database_url)


def sync_engine(url: str | None = None) -> Engine:
    return _sync_engine(url or get_settings().sync_database_url)


def async_session_factory(url: str | None = None) -> async_sessionmaker[AsyncSession]:
    """Read sessions for the API (deferred transactions: readers never wait on SQLite)."""
    return _async_session_factory(url or get_settings().async_database_url)


def async_write_session_factory(url: str | None = None) -> async_sessionmaker[AsyncSession]:
    """Sessions that will write: BEGIN IMMEDIATE on SQLite, plain sessions on PostgreSQL."""
    return _async_write_session_factory(url or get_settings().async_database_url)


def sync_session_factory(url: str | None = None) -> sessionmaker[Session]:
    return _sync_session_factory(url or get_settings().sync_database_url)


@lru_cache(maxsize=8)
def _async_engine(url: str) -> AsyncEngine:
    return create_async_db_engine(url)


@lru_cache(maxsize=8)
def _sync_engine(url: str) -> Engine:
    return create_sync_db_engine(url)


@lru_cache(maxsize=8)
def _async_session_factory(url: str) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(_async_engine(url), expire_on_commit=False)


@lru_cache(maxsize=8)
def _async_write_session_factory(url: str) -> async_sessionmaker[AsyncSession]:
    engine = _async_engine(url)
    if engine.dialect.name == "sqlite":
        engine = engine.execution_options(**{_IMMEDIATE: True})
    return async_sessionmaker(engine, expire_on_commit=False)


@lru_cache(maxsize=8)
def _sync_session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(_sync_engine(url), expire_on_commit=False)


@contextmanager
def sync_session(url: str | None = None) -> Iterator[Session]:
    """A transaction: commits when the block ends, rolls back on error."""
    with sync_session_factory(url).begin() as session:
        yield session


class _SQLiteWriterQueue:
    """The API process's writers, one at a time, in arrival order, for a bounded time.

    SQLite serialises writers anyway; doing it here keeps all but one of the API's writes
    off the file lock (and out of the connection pool), refuses at once when `limit` are
    already waiting, and turns a long wait into a 503 instead of a lock timeout."""

    def __init__(self, limit: int, wait_s: float) -> None:
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._limit = limit
        self._wait_s = wait_s

    @asynccontextmanager
    async def turn(self, retry_after_s: int) -> AsyncIterator[None]:
        if self._waiting >= self._limit:
            raise ServiceBusy(f"{self._waiting} writes are already waiting for the database; "
                              "try again shortly.", retry_after_s=retry_after_s)
        self._waiting += 1
        try:
            await asyncio.wait_for(self._lock.acquire(), self._wait_s)
        except TimeoutError:
            raise ServiceBusy("The database is busy; try again shortly.",
                              retry_after_s=retry_after_s) from None
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()


# One queue per event loop and database: asyncio locks belong to the loop that made them.
_writer_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                          dict[str, _SQLiteWriterQueue]] = \
    weakref.WeakKeyDictionary()


def _writer_queue(url: str) -> _SQLiteWriterQueue:
    settings = get_settings()
    per_loop = _writer_queues.setdefault(asyncio.get_running_loop(), {})
    if url not in per_loop:
        per_loop[url] = _SQLiteWriterQueue(settings.sqlite_write_queue,
                                           settings.sqlite_write_wait_s)
    return per_loop[url]


@asynccontextmanager
async def async_write_session(url: str | None = None) -> AsyncIterator[AsyncSession]:
    """A write transaction: commits when the block ends, rolls back on error. On SQLite it
    first takes its turn in the process's writer queue (ServiceBusy when that is full)."""
    factory = async_write_session_factory(url)
    if async_engine(url).dialect.name != "sqlite":
        async with factory.begin() as session:
            yield session
        return
    queue = _writer_queue(url or get_settings().async_database_url)
    async with queue.turn(get_settings().overload_retry_after_s), factory.begin() as session:
        yield session


async def release(session: AsyncSession) -> None:
    """Give a request's session's connection back to the pool now (its loaded objects stay
    readable), before slow work that needs no database: rendering, streaming, uploads."""
    await session.close()


def forget_engines() -> None:
    """Drop cached engines and factories (tests that switch databases within one process)."""
    for cached in (_async_session_factory, _async_write_session_factory, _sync_session_factory,
                   _async_engine, _sync_engine):
        cached.cache_clear()
    _writer_queues.clear()
