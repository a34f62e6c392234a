"""Thin Celery tasks for series: finalise (after the settle time) and deliver to the PACS."""

from __future__ import annotations

from celery import Task

from shared.queue import FINALIZE_SERIES
from worker import series
from worker.celery_app import app

DELIVER_SERIES = "neuroscan.deliver_series"


@app.task(name=FINALIZE_SERIES, bind=True, ignore_result=True)
def finalize_series(self: Task, series_id: str) -> None:
    """Make the finding when the series is complete and final; else look again later."""
    wait = series.finalize(series_id)
    if wait is None:
        return
    if wait < 0:
        deliver_series.delay(series_id)
        return
    finalize_series.apply_async(args=[series_id], countdown=wait)


@app.task(name=DELIVER_SERIES, bind=True, ignore_result=True,
          autoretry_for=(series.DeliveryError,), retry_backoff=2, retry_backoff_max=300,
          retry_jitter=True, max_retries=6)
def deliver_series(self: Task, series_id: str) -> None:
    """SR, overlay and PDF to the tenant's destination, under the original study."""
    try:
        series.deliver(series_id)
    except series.DeliveryError as exc:
        if self.request.retries >= (self.max_retries or 0):
            series._mark(series_id, "failed", str(exc))
        raise
