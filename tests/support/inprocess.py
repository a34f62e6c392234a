"""Point this test process's settings (and everything cached from them) somewhere else."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest


def reset_caches() -> None:
    """Forget settings, engines, storage and the API's producer, so the next use re-reads."""
    from api import intake
    from shared import storage
    from shared.db.session import forget_engines
    from shared.settings import get_settings

    get_settings.cache_clear()
    forget_engines()
    storage._configured_storage.cache_clear()
    intake.producer.cache_clear()


@contextlib.contextmanager
def settings_env(**env: str) -> Iterator[None]:
    """Run a block with these settings (environment variables), then restore everything."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name.upper(), value)
        reset_caches()
        try:
            yield
        finally:
            reset_caches()
    reset_caches()


@contextlib.contextmanager
def embedded_settings(root: Path, **extra: str) -> Iterator[None]:
    """Settings of a fresh embedded deployment under `root` (SQLite data and broker, local
    disk), migrated; `extra` adds or overrides settings."""
    from shared.db.migrate import upgrade_to_head

    env = {"database_url": f"sqlite+aiosqlite:///{root / 'db.sqlite'}",
           "broker_url": f"sqla+sqlite:///{root / 'broker.db'}", "media_dir": str(root / "media"),
           "secret_key": "in-process-test-secret", **extra}
    with settings_env(**env):
        upgrade_to_head()
        yield


@contextlib.asynccontextmanager
async def asgi_client(**headers: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API app of the current settings, in this process (httpx's ASGI transport)."""
    from api.main import create_app

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=headers) as c:
        yield c


@contextlib.contextmanager
def migrated_database(kind: str, root: Path, **extra: str) -> Iterator[str]:
    """Settings of a fresh, migrated database of `kind` ("sqlite" or "pg"), with the embedded
    broker and local disk under `root`; yields the database URL. A PostgreSQL database is
    dropped afterwards. `extra` adds or overrides settings."""
    from shared.db.migrate import upgrade_to_head
    from tests.support.stack import create_pg_database, drop_pg_database

    url = f"sqlite+aiosqlite:///{root / 'db.sqlite'}" if kind == "sqlite" else create_pg_database()
    env = {"database_url": url, "broker_url": f"sqla+sqlite:///{root / 'broker.db'}",
           "media_dir": str(root / "media"), "var_dir": str(root / "var"),
           "secret_key": "in-process-test-secret-" + "0123456789abcdef" * 2, **extra}
    try:
        with settings_env(**env):
            upgrade_to_head()
            yield url
    finally:
        if kind == "pg":
            drop_pg_database(url)
