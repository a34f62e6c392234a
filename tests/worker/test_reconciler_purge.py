"""The retention purge rides the reconciler thread: a worker's thread removes what expired
(a DICOM series finding with its last slice)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from shared.db.dicom_models import DicomInstance, DicomSeries
from shared.db.lifecycle_models import AuditEvent
from shared.db.migrate import upgrade_to_head
from shared.db.models import Scan, Tenant, new_id, utcnow
from shared.db.session import sync_session
from shared.settings import get_settings
from shared.storage import get_storage
from tests.support.inprocess import settings_env


def test_reconciler_thread_purges_expired_scans(tmp_path: Path) -> None:
    with settings_env(database_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
                      media_dir=str(tmp_path / "media"),
                      broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
                      retention_results_days="1", purge_interval_s="3600"):
        from worker.reconciler import Reconciler

        upgrade_to_head()
        storage = get_storage()
        old, fresh = new_id(), new_id()
        long_ago = utcnow() - timedelta(days=3)
        with sync_session() as session:
            tenant = Tenant(id=new_id(), name="purged")
            session.add(tenant)
            session.flush()
            for scan_id, at in ((old, long_ago), (fresh, utcnow())):
                session.add(Scan(
                    id=scan_id, tenant_id=tenant.id, state="succeeded", format="png",
                    sha256="x", created_at=at, finished_at=at,
                    image_ref=storage.put("uploads", f"{scan_id}.png", b"png", "image/png")))
            session.flush()
            # A one-slice series on each scan: the old one's finding goes with its slice.
            for scan_id, at in ((old, long_ago), (fresh, utcnow())):
                series = DicomSeries(tenant_id=tenant.id, series_uid=f"2.25.{scan_id[:8]}",
                                     source="stow-rs", created_at=at, state="succeeded",
                                     label="glioma", probability=0.9, key_scan_id=scan_id)
                session.add(series)
                session.flush()
                session.add(DicomInstance(scan_id=scan_id, series_id=series.id,
                                          sop_uid=f"2.25.{scan_id[9:13]}", instance_number=1))
        thread = Reconciler(producer=None, settings=get_settings())
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while not (tmp_path / "media" / "uploads" / f"{fresh}.png").exists() or \
                    (tmp_path / "media" / "uploads" / f"{old}.png").exists():
                assert time.monotonic() < deadline, "the reconciler did not purge"
                time.sleep(0.2)
        finally:
            thread.stop()
            thread.join(10)
        with sync_session() as session:
            assert set(session.scalars(select(Scan.id))) == {fresh}
            assert set(session.scalars(select(DicomSeries.key_scan_id))) == {fresh}
            assert set(session.scalars(select(DicomInstance.scan_id))) == {fresh}
            purge = session.scalars(select(AuditEvent)).one()
            assert (purge.action, purge.target, purge.detail["scans"]) == (
                "purge", "results", [old])
