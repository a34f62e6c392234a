"""Run Alembic migrations from code (`neuroscan migrate`, `serve`, the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.settings import get_settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(sync_url: str | None = None) -> Config:
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.attributes["database_url"] = sync_url or get_settings().sync_database_url
    cfg.attributes["configure_logging"] = False  # keep the caller's logging as it is
    return cfg


def upgrade_to_head(sync_url: str | None = None) -> None:
    """`alembic upgrade heads` against `sync_url` (default: the configured database).

    "heads", not "head": a branch that adds a migration beside another one still upgrades;
    a merge revision joins them before a release.
    """
    url = sync_url or get_settings().sync_database_url
    if url.startswith("sqlite:///"):
        # The embedded default lives under ./var, which may not exist yet on a fresh clone.
        db_path = url.removeprefix("sqlite:///")
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "heads")
