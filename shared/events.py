"""State changes of a scan: made and recorded together.

`transition` changes a scan's state and adds its `scan_events` row to the same session, so
the change and its event commit (or roll back) as one; the event's id is the SSE event id.
Works with sync and async sessions alike (`add` is synchronous on both).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from shared.db.models import Scan, ScanEvent, utcnow
from shared.states import JobState, can_transition


class _Adds(Protocol):
    def add(self, instance: object) -> None: ...


class InvalidTransition(RuntimeError):
    pass


def transition(session: _Adds, scan: Scan, new: JobState,
               at: datetime | None = None) -> ScanEvent | None:
    """Move `scan` to `new` and record it; None when the state does not change (a retry)."""
    current = JobState(scan.state) if scan.state else None
    if current is not None and not can_transition(current, new):
        raise InvalidTransition(f"scan {scan.id}: {current} -> {new} is not allowed")
    if current == new:
        return None
    when = at or utcnow()
    scan.state = new.value
    if new is JobState.PROCESSING:
        scan.started_at = when
    elif new.is_final:
        scan.finished_at = when
    event = ScanEvent(tenant_id=scan.tenant_id, scan_id=scan.id, batch_id=scan.batch_id,
                      state=new.value, created_at=when)
    session.add(event)
    return event


def event_payload(event: ScanEvent, scan: Scan | None = None) -> dict[str, Any]:
    """The JSON an SSE subscriber receives for one event (a summary once the scan is final)."""
    data: dict[str, Any] = {
        "event_id": event.id,
        "scan_id": event.scan_id,
        "batch_id": event.batch_id,
        "state": event.state,
        "at": event.created_at.isoformat(),
    }
    if scan is not None and event.state == JobState.SUCCEEDED and scan.state == event.state:
        data["prediction"] = {"label": scan.label, "confidence": scan.confidence}
    if scan is not None and event.state == JobState.FAILED and scan.state == event.state:
        data["error"] = {"code": scan.error_code, "message": scan.error_message}
    return data
