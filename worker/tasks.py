"""Thin Celery tasks: IDs in, plain functions from `worker.pipeline` do the work.

Batching: the API sends one task per single upload and tasks of up to WORKER_BATCH_SIZE scan
IDs for a batch upload, so one model pass serves many scans while a single scan never waits
for others to arrive. With prefetch 1 and late acks, each worker holds one batch at a time.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, signals
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.queue import DELIVER_WEBHOOK, PROCESS_SCANS, enqueue_scans
from shared.settings import get_settings
from shared.storage import StorageError
from worker import pipeline
from worker.celery_app import app

log = logging.getLogger(__name__)

# Worth another try: the storage service or the database was unreachable or busy.
TRANSIENT_ERRORS = (StorageError, OperationalError, InterfaceError)
# Scans still queued this long at worker start may have lost their message.
STALE_QUEUED_S = 600


def _notify(target_id: str, kind: str) -> None:
    app.send_task(DELIVER_WEBHOOK, args=[target_id, kind])


class _ScanTask(Task):
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        """Out of retries, or a bug: the scans get a clear `failed`, never stay processing."""
        scan_ids = args[0] if args else kwargs.get("scan_ids", [])
        transient = isinstance(exc, TRANSIENT_ERRORS)
        code = "processing_error" if transient else "internal_error"
        message = (f"Processing failed after {self.request.retries} retries: {exc}"
                   if transient else f"Processing failed: {type(exc).__name__}: {exc}")
        try:
            pipeline.fail_unfinished(scan_ids, code, message, notify=_notify)
        except Exception:  # the database may be what failed; the sweep will find them
            log.exception("could not mark scans %s failed", scan_ids)


@app.task(name=PROCESS_SCANS, base=_ScanTask, autoretry_for=TRANSIENT_ERRORS,
          retry_backoff=2, retry_backoff_max=300, retry_jitter=True,
          max_retries=get_settings().task_max_retries)
def process_scans(scan_ids: list[str]) -> int:
    """Classify and explain these scans (one batched model pass); returns how many finished."""
    return len(pipeline.process_scans(scan_ids, notify=_notify))


@signals.worker_ready.connect
def _requeue_stale(**_kwargs: Any) -> None:
    """At worker start, resend scans whose message may be lost (e.g. the broker was down
    when the API committed them). A duplicate is harmless: claiming skips final scans."""
    s = get_settings()
    try:
        stale = pipeline.stale_scan_ids(STALE_QUEUED_S, s.broker_visibility_timeout_s)
    except Exception:
        log.exception("stale-scan sweep failed")
        return
    if stale:
        log.warning("re-enqueueing %d stale scans", len(stale))
        enqueue_scans(app, stale, s.worker_batch_size)
