"""State changes and their events, recorded together in a real (SQLite) database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.migrate import upgrade_to_head
from shared.db.models import Scan, ScanEvent, Tenant
from shared.db.session import create_sync_db_engine
from shared.events import InvalidTransition, event_payload, transition
from shared.states import JobState

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    upgrade_to_head(url)
    engine = create_sync_db_engine(url)
    with Session(engine) as s:
        yield s
    engine.dispose()


def _scan(session: Session) -> Scan:
    tenant = Tenant(name="events-hospital")
    session.add(tenant)
    session.flush()
    scan = Scan(tenant_id=tenant.id, format="png", sha256="0" * 64)
    session.add(scan)
    session.commit()
    return scan


def test_each_change_commits_with_its_event(session: Session) -> None:
    scan = _scan(session)
    first = transition(session, scan, JobState.PROCESSING, at=AT)
    second = transition(session, scan, JobState.SUCCEEDED, at=AT)
    session.commit()
    events = session.scalars(select(ScanEvent).where(ScanEvent.scan_id == scan.id).order_by(ScanEvent.id)).all()
    assert [e.state for e in events] == ["processing", "succeeded"] and events == [first, second]
    assert events[0].id < events[1].id  # the SSE event id orders them
    assert scan.started_at == AT and scan.finished_at == AT and scan.state == "succeeded"


def test_a_retry_into_the_same_state_records_nothing(session: Session) -> None:
    scan = _scan(session)
    transition(session, scan, JobState.PROCESSING)
    assert transition(session, scan, JobState.PROCESSING) is None
    session.commit()
    assert len(session.scalars(select(ScanEvent).where(ScanEvent.scan_id == scan.id)).all()) == 1


def test_an_illegal_change_is_refused_and_records_nothing(session: Session) -> None:
    scan = _scan(session)
    with pytest.raises(InvalidTransition, match="queued -> succeeded"):
        transition(session, scan, JobState.SUCCEEDED)
    session.commit()
    assert scan.state == "queued"
    assert session.scalars(select(ScanEvent).where(ScanEvent.scan_id == scan.id)).all() == []


def test_a_rolled_back_change_leaves_no_event(session: Session) -> None:
    scan = _scan(session)
    transition(session, scan, JobState.PROCESSING)
    session.rollback()
    assert session.get(Scan, scan.id).state == "queued"
    assert session.scalars(select(ScanEvent)).all() == []


def test_payload_carries_the_summary_once_final(session: Session) -> None:
    scan = _scan(session)
    processing = transition(session, scan, JobState.PROCESSING, at=AT)
    scan.label, scan.confidence = "glioma", 0.93
    done = transition(session, scan, JobState.SUCCEEDED, at=AT)
    session.commit()
    assert event_payload(processing, scan) == {"event_id": processing.id, "scan_id": scan.id,
                                               "batch_id": None, "state": "processing",
                                               "at": AT.isoformat()}
    assert event_payload(done, scan)["prediction"] == {"label": "glioma", "confidence": 0.93}
    assert "prediction" not in event_payload(done)  # without the scan row: no summary


def test_failed_payload_carries_the_error(session: Session) -> None:
    scan = _scan(session)
    transition(session, scan, JobState.PROCESSING)
    scan.error_code, scan.error_message = "not_brain_mri", "Not a brain MRI."
    failed = transition(session, scan, JobState.FAILED)
    session.commit()
    payload = event_payload(failed, scan)
    assert payload["error"] == {"code": "not_brain_mri", "message": "Not a brain MRI."}
    assert "prediction" not in payload
