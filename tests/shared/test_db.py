"""The database layer on real SQLite files and a real PostgreSQL database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from shared.db.migrate import alembic_config, upgrade_to_head
from shared.db.models import Base, Scan, Tenant, User
from shared.db.session import (
    _split_postgres_options,
    create_async_db_engine,
    create_sync_db_engine,
)
from shared.db.tenants import KEY_PREFIX, authenticate, hash_api_key, issue_key
from shared.settings import _with_driver
from tests.support.stack import create_pg_database, drop_pg_database

TABLES = {"tenants", "users", "batches", "scan_results", "scan_uploads", "scan_events"}


@pytest.fixture(params=["sqlite", "postgresql"])
def sync_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind (a PostgreSQL database of its own per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
        return
    url = create_pg_database("nsdbtest")
    try:
        yield _with_driver(url, asyncio=False)
    finally:
        drop_pg_database(url)


def test_migrations_build_exactly_the_models(sync_url: str) -> None:
    upgrade_to_head(sync_url)
    engine = create_sync_db_engine(sync_url)
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) >= TABLES
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    # Tables of later revisions (other features, other models) may exist beside ours.
    assert [d for d in diff if _table_of(d) in TABLES] == []


def _table_of(diff: object) -> str:
    if isinstance(diff, list):  # column changes come as lists of tuples
        return str(diff[0][2])
    assert isinstance(diff, tuple)
    obj = diff[1]
    table = getattr(obj, "table", obj)
    return str(getattr(table, "name", diff[2] if len(diff) > 2 else ""))


def test_migrations_go_down_and_up_again(sync_url: str) -> None:
    upgrade_to_head(sync_url)
    command.downgrade(alembic_config(sync_url), "base")
    engine = create_sync_db_engine(sync_url)
    with engine.connect() as conn:
        assert not TABLES & set(inspect(conn).get_table_names())
    engine.dispose()
    upgrade_to_head(sync_url)


def test_preview_ref_revision_goes_down_without_touching_other_rows(sync_url: str) -> None:
    # A table copy on SQLite would drop scan_results and cascade into uploads and events.
    upgrade_to_head(sync_url)
    engine = create_sync_db_engine(sync_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, created_at) "
                          "VALUES ('t1', 'Down Ward', CURRENT_TIMESTAMP)"))
        conn.execute(text(
            "INSERT INTO scan_results (id, tenant_id, state, format, size_bytes, sha256, "
            "created_at, attempts, preview_ref) VALUES ('s1', 't1', 'succeeded', 'dicom', 3, "
            "'ab', CURRENT_TIMESTAMP, 1, 'local:results/s1-preview.png')"))
        conn.execute(text("INSERT INTO scan_uploads (scan_id, data, media_type) "
                          "VALUES ('s1', :data, 'application/dicom')"), {"data": b"dcm"})
    command.downgrade(alembic_config(sync_url), "0002_webhook_deliveries")
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("scan_results")}
        assert "preview_ref" not in columns and "overlay_ref" in columns
        assert conn.execute(text("SELECT data FROM scan_uploads")).scalar_one() == b"dcm"
    upgrade_to_head(sync_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT preview_ref FROM scan_results")).all() == [(None,)]
    engine.dispose()


async def test_keys_are_stored_hashed_and_authenticate(sync_url: str) -> None:
    upgrade_to_head(sync_url)
    engine = create_sync_db_engine(sync_url)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        first = issue_key(session, "St Elsewhere", "ris")
        second = issue_key(session, "St Elsewhere", "pacs")
    with Session(engine) as session:
        users = session.scalars(select(User).order_by(User.created_at)).all()
        assert session.scalar(select(Tenant.name)) == "St Elsewhere"
    engine.dispose()
    assert first.key.startswith(KEY_PREFIX) and len(first.key) > 40 and first.key != second.key
    assert first.tenant.id == second.tenant.id and len(users) == 2
    assert {u.api_key_hash for u in users} == {hash_api_key(first.key), hash_api_key(second.key)}
    assert all(first.key not in (u.api_key_hash, u.api_key_prefix) for u in users)

    async_engine = create_async_db_engine(_with_driver(sync_url, asyncio=True))
    from sqlalchemy.ext.asyncio import AsyncSession

    async with AsyncSession(async_engine) as session:
        found = await authenticate(session, first.key)
        assert found is not None and found[0].name == "St Elsewhere" and found[1].name == "ris"
        assert found[1].created_at.tzinfo is not None  # UTC back from SQLite too
        assert await authenticate(session, first.key + "x") is None
        assert await authenticate(session, "not-even-prefixed") is None
    await async_engine.dispose()


def test_sqlite_connections_use_wal_and_wait_for_the_write_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade_to_head(url)
    engine = create_sync_db_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    order: list[str] = []

    def second_writer() -> None:
        with Session(create_sync_db_engine(url)) as other, other.begin():
            other.add(Tenant(name="second"))
            other.flush()  # BEGIN IMMEDIATE waits here until the first writer commits
            order.append("second wrote")

    with Session(engine) as session, session.begin():
        session.scalar(select(Tenant.id))  # read first, then write: the SQLite trap
        thread = threading.Thread(target=second_writer)
        thread.start()
        time.sleep(0.3)
        session.add(Tenant(name="first"))
        order.append("first commits")
    thread.join(timeout=10)
    with Session(engine) as session:
        assert sorted(session.scalars(select(Tenant.name))) == ["first", "second"]
    engine.dispose()
    assert order == ["first commits", "second wrote"]


def test_hosted_postgres_url_options_are_translated_for_asyncpg() -> None:
    url = make_url("postgresql+asyncpg://u:p@db.example.org:6543/postgres"
                   "?sslmode=require&pgbouncer=true")
    cleaned, args = _split_postgres_options(url, asyncio=True)
    assert dict(cleaned.query) == {} and args == {"ssl": "require", "statement_cache_size": 0}
    sync_cleaned, sync_args = _split_postgres_options(
        make_url("postgresql+psycopg://u@h/db?sslmode=require&pgbouncer=true"), asyncio=False)
    assert dict(sync_cleaned.query) == {"sslmode": "require"}
    assert sync_args == {"prepare_threshold": None}
    with pytest.raises(ValueError, match="sslmode"):
        _split_postgres_options(make_url("postgresql+asyncpg://h/db?sslmode=bogus"), asyncio=True)


async def test_asyncpg_connects_with_a_libpq_style_url(pg_database_url: str) -> None:
    engine = create_async_db_engine(
        _with_driver(pg_database_url + "?sslmode=disable", asyncio=True))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    await engine.dispose()


def test_scan_ids_are_uuid_strings() -> None:
    column = Scan.__table__.c.id
    assert column.type.length == 36 and column.primary_key
