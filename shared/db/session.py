"""Engines and sessions: async for the API, sync for the worker, Alembic and the CLI.

SQLite (the embedded default) is shared by the API and worker processes: WAL lets readers
run beside a writer, `busy_timeout` makes a writer wait for the lock instead of failing, and
write sessions begin with `BEGIN IMMEDIATE`, because a deferred transaction that read first
cannot upgrade to a write lock once another process has committed (SQLITE_BUSY_SNAPSHOT,
which no timeout retries). PostgreSQL needs none of this.
"""

from __future__ import annotations

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

from shared.settings import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
_IMMEDIATE = "sqlite_begin_immediate"

# libpq's sslmode -> asyncpg's `ssl` argument (asyncpg accepts the same words, minus `allow`).
_ASYNCPG_SSL = {"disable": False, "allow": "prefer", "prefer": "prefer", "require": "require",
                "verify-ca": "verify-ca", "verify-full": "verify-full"}


def _sqlite_events(sync_engine: Engine) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver, so we can say BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
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
    parsed = make_url(url or get_settings().async_database_url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _sqlite_events(engine.sync_engine)
        return engine
    parsed, connect_args = _split_postgres_options(parsed, asyncio=True)
    return create_async_engine(parsed, connect_args=connect_args, pool_pre_ping=True)


def create_sync_db_engine(url: str | None = None, *, immediate: bool = True) -> Engine:
    """Sync engine; on SQLite its transactions take the write lock up front (the worker writes)."""
    parsed = make_url(url or get_settings().sync_database_url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _sqlite_events(engine)
        return engine.execution_options(**{_IMMEDIATE: immediate}) if immediate else engine
    parsed, connect_args = _split_postgres_options(parsed, asyncio=False)
    return create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)


@lru_cache(maxsize=8)
def async_engine(url: str | None = None) -> AsyncEngine:
    """The process's async engine for `url` (default: the configured database)."""
    return create_async_db_engine(url)


@lru_cache(maxsize=8)
def sync_engine(url: str | None = None) -> Engine:
    return create_sync_db_engine(url)


@lru_cache(maxsize=8)
def async_session_factory(url: str | None = None) -> async_sessionmaker[AsyncSession]:
    """Read sessions for the API (deferred transactions: readers never wait on SQLite)."""
    return async_sessionmaker(async_engine(url), expire_on_commit=False)


@lru_cache(maxsize=8)
def async_write_session_factory(url: str | None = None) -> async_sessionmaker[AsyncSession]:
    """Sessions that will write: BEGIN IMMEDIATE on SQLite, plain sessions on PostgreSQL."""
    engine = async_engine(url)
    if engine.dialect.name == "sqlite":
        engine = engine.execution_options(**{_IMMEDIATE: True})
    return async_sessionmaker(engine, expire_on_commit=False)


@lru_cache(maxsize=8)
def sync_session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(sync_engine(url), expire_on_commit=False)


@contextmanager
def sync_session(url: str | None = None) -> Iterator[Session]:
    """A transaction: commits when the block ends, rolls back on error."""
    with sync_session_factory(url).begin() as session:
        yield session


@asynccontextmanager
async def async_write_session(url: str | None = None) -> AsyncIterator[AsyncSession]:
    async with async_write_session_factory(url).begin() as session:
        yield session


def forget_engines() -> None:
    """Drop cached engines and factories (tests that switch databases within one process)."""
    for cached in (async_session_factory, async_write_session_factory, sync_session_factory,
                   async_engine, sync_engine):
        cached.cache_clear()
