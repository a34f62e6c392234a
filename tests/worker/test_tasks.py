"""The Celery task around the pipeline (worker/tasks.py), in a real worker process: what
happens when a transient failure outlasts its retries (`_ScanTask.on_failure`)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, select

from shared.db.models import ScanEvent
from tests.support.images import brain_png
from tests.support.stack import LiveStack, wait_for_scan

pytestmark = pytest.mark.slow

MAX_RETRIES = 1


@pytest.fixture(scope="module")
def stack(live_stack) -> LiveStack:
    """PostgreSQL, Redis and Cloudinary (the stand-in), with one retry and one upload try."""
    return live_stack("pg", port_range=(17700, 17799),
                      env={"TASK_MAX_RETRIES": str(MAX_RETRIES), "STORAGE_MAX_ATTEMPTS": "1"})


def test_retries_exhausted_fail_the_scan_with_the_reason(stack: LiveStack) -> None:
    """Storage is down for longer than the task's retries: the task gives up, and on_failure
    marks the scan failed (`processing_error`, with how many retries were made) and records
    one terminal event, instead of leaving it queued or processing."""
    assert stack.standin is not None
    stack.standin.fail_uploads = 10**6  # an outage that outlasts every retry
    try:
        with stack.client() as client:
            r = client.post("/v1/scans", files={"file": ("outage.png", brain_png(72), "image/png")})
            assert r.status_code == 202, r.text
            body = wait_for_scan(client, r.json()["id"], timeout_s=90.0)
    finally:
        stack.standin.fail_uploads = 0
    assert body["state"] == "failed" and body["prediction"] is None
    assert body["error"]["code"] == "processing_error"
    assert body["error"]["message"].startswith(f"Processing failed after {MAX_RETRIES} retries: ")
    assert body["attempts"] == MAX_RETRIES + 1  # the first try and each retry claimed it
    engine = create_engine(stack.sync_database_url)
    try:
        with engine.connect() as conn:
            states = conn.scalars(select(ScanEvent.state).where(ScanEvent.scan_id == body["id"])
                                  .order_by(ScanEvent.id)).all()
    finally:
        engine.dispose()
    assert states[0] == "queued" and states[-1] == "failed" and states.count("failed") == 1
