"""The task queues' names and Celery configuration, shared by the worker and the API.

The API only sends messages (by task name: it never imports `worker`); the worker app in
`worker/celery_app.py` is built from the same configuration.

Three queues (docs/operations.md, "Queues"), so that urgent work goes first:
- interactive: a single scan (POST /v1/scans, one DICOM instance): someone is waiting;
- bulk: the scans of a batch (and of a multi-instance STOW);
- webhooks: webhook sends, on a light worker without the model (network waits never hold a
  model worker, and a slow receiver never delays a scan).
A model worker consumes interactive and bulk, in that order: with Redis, kombu's "priority"
queue order makes every fetch look at the interactive queue first, and with prefetch 1 a
worker holds no bulk message while it works, so a single scan waits for at most the batch in
hand. Tasks not routed below (series) go to the interactive queue, as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from shared.settings import Settings

PROCESS_SCANS = "neuroscan.process_scans"
DELIVER_WEBHOOK = "neuroscan.deliver_webhook"
FINALIZE_SERIES = "neuroscan.finalize_series"

INTERACTIVE, BULK, WEBHOOKS = "interactive", "bulk", "webhooks"
KINDS = (INTERACTIVE, BULK, WEBHOOKS)  # in the order a worker looks at them
MODEL_KINDS = (INTERACTIVE, BULK)  # what a worker with the model consumes by default


def queue_names(settings: Settings) -> dict[str, str]:
    """{kind: queue name} in priority order (QUEUE_INTERACTIVE, QUEUE_BULK, QUEUE_WEBHOOKS)."""
    return {INTERACTIVE: settings.queue_interactive, BULK: settings.queue_bulk,
            WEBHOOKS: settings.queue_webhooks}


def worker_queues(settings: Settings, kinds: Iterable[str] = MODEL_KINDS) -> list[str]:
    """The names a worker consuming `kinds` passes to `celery worker -Q`, most urgent first
    (the order a Redis worker checks them in)."""
    wanted = set(kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown queue kind(s) {sorted(unknown)}; use {', '.join(KINDS)}")
    return [name for kind, name in queue_names(settings).items() if kind in wanted]


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # Model workers consume these by default; anything not routed goes to interactive.
        "task_default_queue": settings.queue_interactive,
        "task_queues": _queues(settings, MODEL_KINDS),
        "task_routes": {DELIVER_WEBHOOK: {"queue": settings.queue_webhooks}},
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # State lives in the database; results would only fill the broker.
        "task_ignore_result": True,
        # Acknowledge after the task ran: a worker that dies mid-task loses nothing...
        "task_acks_late": True,
        # ...and a task whose worker process was killed goes back on the queue.
        "task_reject_on_worker_lost": True,
        # A worker holds only the batch it is processing: others take the rest, and a single
        # scan queued meanwhile is the next thing it fetches.
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        "broker_transport_options": _transport_options(settings),
        # Events for Flower: every task is visible from the moment it is sent.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "timezone": "UTC",
        "enable_utc": True,
    }


def _queues(settings: Settings, kinds: Sequence[str]) -> list[Any]:
    from kombu import Exchange, Queue

    # As Celery declares a queue it creates on demand: a direct exchange of the same name.
    return [Queue(name, Exchange(name), routing_key=name)
            for name in worker_queues(settings, kinds)]


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.split(":", 1)[0] in ("redis", "rediss", "sentinel"):
        return {
            # Redis redelivers an unacknowledged task after this; it must exceed the longest task.
            "visibility_timeout": settings.broker_visibility_timeout_s,
            # BRPOP names the queues in the order the worker consumes them (-Q), every time;
            # kombu's default round robin would put the interactive queue last after each
            # interactive task.
            "queue_order_strategy": "priority",
        }
    # kombu's SQLAlchemy transport hands its options to create_engine(): none of ours apply.
    # Its polling cycle tries the queue after the last one served first, so with two queues
    # an interactive task waits for at most one bulk task there too.
    return {}


def make_producer(settings: Settings) -> Any:
    """A Celery app that only sends (the API side)."""
    from celery import Celery

    app = Celery("neuroscan-api")
    app.conf.update(celery_config(settings))
    return app


def enqueue_scans(app: Any, scan_ids: list[str], batch_size: int,
                  queue: str | None = None) -> int:
    """Send `process_scans` tasks of up to `batch_size` IDs each to `queue` (None: the default,
    interactive); returns the number sent."""
    sent = 0
    for start in range(0, len(scan_ids), batch_size):
        app.send_task(PROCESS_SCANS, args=[scan_ids[start:start + batch_size]], queue=queue)
        sent += 1
    return sent


def send_scans(app: Any, scan_ids: Sequence[str], batch_size: int,
               settings: Settings | None = None) -> int:
    """Send stored scans again (reconciler, retries), each to the queue of its kind: scans of
    a batch to bulk, the others to interactive. Reads their batch ids from the database."""
    from sqlalchemy import select

    from shared.db.models import Scan
    from shared.db.session import sync_engine
    from shared.settings import get_settings

    settings = settings or get_settings()
    ids = list(scan_ids)
    if not ids:
        return 0
    # A read of its own, never a write lock: callers may hold these rows locked (reconciler).
    with sync_engine().connect() as conn:
        conn.execution_options(sqlite_begin_immediate=False)
        in_batch = set(conn.scalars(select(Scan.id).where(
            Scan.id.in_(ids), Scan.batch_id.is_not(None))))
    bulk = [i for i in ids if i in in_batch]
    single = [i for i in ids if i not in in_batch]
    return (enqueue_scans(app, single, batch_size, settings.queue_interactive)
            + enqueue_scans(app, bulk, batch_size, settings.queue_bulk))
