"""Response shapes built from database rows (no database needed for these)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.db.models import Batch, Scan
from shared.schemas import batch_out

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _scan(i: int, state: str, finished: datetime | None) -> Scan:
    return Scan(id=f"scan-{i}", state=state, filename=f"{i}.png", format="png", size_bytes=10,
                      sha256="0" * 64, batch_id="batch-1", tenant_id="t", created_at=T0,
                      finished_at=finished, attempts=1)


def test_a_batch_whose_scans_are_all_final_reports_when_it_finished() -> None:
    """Between the worker's commit of the last scan and its recording of the batch's end, a
    reader sees `done`; `finished_at` then comes from the last scan, never null."""
    batch = Batch(id="batch-1", created_at=T0, total=2, finished_at=None, tenant_id="t")
    last = T0 + timedelta(seconds=9)
    scans = [_scan(1, "succeeded", T0 + timedelta(seconds=4)), _scan(2, "failed", last)]
    out = batch_out(batch, scans, sign_url=lambda ref: ref)
    assert out.done and out.finished_at == last

    recorded = T0 + timedelta(seconds=10)
    batch.finished_at = recorded
    assert batch_out(batch, scans, sign_url=lambda ref: ref).finished_at == recorded

    running = [_scan(1, "succeeded", last), _scan(2, "processing", None)]
    batch.finished_at = None
    out = batch_out(batch, running, sign_url=lambda ref: ref)
    assert not out.done and out.finished_at is None
