"""Migration 0006 on both databases: duplicate blobs of finished scans go, the rest stay."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from shared.db.migrate import alembic_config
from tests.support.stack import create_pg_database, drop_pg_database


@pytest.fixture(params=["sqlite", "pg"])
def empty_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    url = create_pg_database()
    try:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        drop_pg_database(url)


def test_0006_moves_stored_originals_out(empty_url: str) -> None:
    cfg = alembic_config(empty_url)
    command.upgrade(cfg, "0005_dicom_series")
    engine = create_engine(empty_url)
    scans = {"done": ("succeeded", "local:uploads/done.png"),
             "undecodable": ("failed", None), "waiting": ("queued", None)}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, created_at) "
                          "VALUES ('t', 'T', CURRENT_TIMESTAMP)"))
        for scan_id, (state, ref) in scans.items():
            conn.execute(text(
                "INSERT INTO scan_results (id, tenant_id, state, format, size_bytes, sha256, "
                "created_at, attempts, image_ref, lost_leases) VALUES (:id, 't', :state, 'png', "
                "3, 'x', CURRENT_TIMESTAMP, 0, :ref, 0)"), {"id": scan_id, "state": state, "ref": ref})
            conn.execute(text("INSERT INTO scan_uploads (scan_id, data, media_type) "
                              "VALUES (:id, :data, 'image/png')"), {"id": scan_id, "data": b"abc"})
    command.upgrade(cfg, "head")
    with engine.connect() as conn:
        left = set(conn.execute(text("SELECT scan_id FROM scan_uploads")).scalars())
        assert left == {"undecodable", "waiting"}
        assert conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one() == 0
    engine.dispose()
