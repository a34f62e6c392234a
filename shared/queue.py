"""The task queue's names and Celery configuration, shared by the worker and the API.

The API only sends messages (by task name: it never imports `worker`); the worker app in
`worker/celery_app.py` is built from the same configuration.
"""

from __future__ import annotations

from typing import Any

from shared.settings import Settings

PROCESS_SCANS = "neuroscan.process_scans"
DELIVER_WEBHOOK = "neuroscan.deliver_webhook"
FINALIZE_SERIES = "neuroscan.finalize_series"


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue_name,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # State lives in the database; results would only fill the broker.
        "task_ignore_result": True,
        # Acknowledge after the task ran: a worker that dies mid-task loses nothing...
        "task_acks_late": True,
        # ...and a task whose worker process was killed goes back on the queue.
        "task_reject_on_worker_lost": True,
        # A worker holds only the batch it is processing: others take the rest.
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        "broker_transport_options": _transport_options(settings),
        # Events for Flower: every task is visible from the moment it is sent.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "timezone": "UTC",
        "enable_utc": True,
    }


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.split(":", 1)[0] in ("redis", "rediss", "sentinel"):
        # Redis redelivers an unacknowledged task after this; it must exceed the longest task.
        return {"visibility_timeout": settings.broker_visibility_timeout_s}
    # kombu's SQLAlchemy transport hands its options to create_engine(): none of ours apply.
    return {}


def make_producer(settings: Settings) -> Any:
    """A Celery app that only sends (the API side)."""
    from celery import Celery

    app = Celery("neuroscan-api")
    app.conf.update(celery_config(settings))
    return app


def enqueue_scans(app: Any, scan_ids: list[str], batch_size: int) -> int:
    """Send `process_scans` tasks of up to `batch_size` IDs each; returns the number sent."""
    sent = 0
    for start in range(0, len(scan_ids), batch_size):
        app.send_task(PROCESS_SCANS, args=[scan_ids[start:start + batch_size]])
        sent += 1
    return sent
