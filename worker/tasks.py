"""Thin Celery tasks: IDs in, plain functions from `worker.pipeline` do the work.

Batching: the API sends one task per single upload and tasks of up to WORKER_BATCH_SIZE scan
IDs for a batch upload, so one model pass serves many scans while a single scan never waits
for others to arrive. With prefetch 1 and late acks, each worker holds one batch at a time.

The queue is only a trigger: a scan whose message is lost, or whose worker died, is found
in the database and sent again by the reconciler every worker runs (`worker/reconciler.py`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, signals
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.queue import (
    DELIVER_WEBHOOK,
    MODEL_KINDS,
    PROCESS_SCANS,
    make_producer,
    send_scans,
    worker_queues,
)
from shared.settings import get_settings
from shared.storage import StorageError, topology_problem
from worker import pipeline
from worker.celery_app import app
from worker.reconciler import Reconciler

log = logging.getLogger(__name__)

# Worth another try: the storage service or the database was unreachable or busy.
DATABASE_ERRORS = (OperationalError, InterfaceError)
TRANSIENT_ERRORS = (StorageError, *DATABASE_ERRORS)

_reconciler: Reconciler | None = None


def _notify(target_id: str, kind: str) -> None:
    # Routed to the webhooks queue (shared/queue.py, task_routes): never sent from here.
    app.send_task(DELIVER_WEBHOOK, args=[target_id, kind])


class _ScanTask(Task):
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        """Out of retries, or a bug. Never leaves a scan lost: the database still has it."""
        scan_ids = list(args[0] if args else kwargs.get("scan_ids", []))
        if isinstance(exc, DATABASE_ERRORS):
            # Nothing can be written now; the scans are queued or their lease runs out, and
            # the reconciler sends them again once the database answers.
            log.error("database unreachable for scans %s; left to the reconciler", scan_ids)
            return
        if not isinstance(exc, TRANSIENT_ERRORS) and len(scan_ids) > 1:
            # One bad input must not sink its batch-mates: each runs alone, where only the
            # scan that raises again fails.
            log.error("batch of %d failed (%s: %s); retrying each scan alone", len(scan_ids),
                      type(exc).__name__, exc)
            try:
                send_scans(app, scan_ids, 1)  # each to its kind's queue
                return
            except Exception:  # the broker too: the reconciler re-sends them (lease released)
                log.exception("could not re-send scans %s", scan_ids)
                return
        transient = isinstance(exc, TRANSIENT_ERRORS)
        code = "processing_error" if transient else "internal_error"
        message = (f"Processing failed after {self.request.retries} retries: {exc}"
                   if transient else f"Processing failed: {type(exc).__name__}: {exc}")
        try:
            pipeline.fail_unfinished(scan_ids, code, message, notify=_notify)
        except Exception:  # the database may be what failed; the reconciler will find them
            log.exception("could not mark scans %s failed", scan_ids)


@app.task(name=PROCESS_SCANS, base=_ScanTask, bind=True, autoretry_for=TRANSIENT_ERRORS,
          retry_backoff=2, retry_backoff_max=300, retry_jitter=True,
          max_retries=get_settings().task_max_retries)
def process_scans(self: Task, scan_ids: list[str]) -> int:
    """Classify and explain these scans (one batched model pass); returns how many finished."""
    settings = get_settings()
    # An interactive task gathers only other single scans: someone is waiting for this pass.
    routing_key = (self.request.delivery_info or {}).get("routing_key")
    interactive = routing_key == settings.queue_interactive
    return len(pipeline.process_scans(scan_ids, notify=_notify, owner=self.request.id,
                                      gather=settings.worker_max_batch, resend=_resend_alone,
                                      singles_only=interactive))


def _resend_alone(scan_ids: list[str]) -> None:
    send_scans(app, scan_ids, 1)  # gathered scans may be of either kind


def _consumes_model_queues(worker: Any) -> bool:
    """Whether this worker was started for scans (-Q with interactive or bulk, or no -Q),
    rather than as the light webhooks worker, which never loads the model."""
    try:
        consumed = set(worker.app.amqp.queues.consume_from)
    except AttributeError:  # not a worker we know how to read: load, as before
        return True
    return bool(consumed & set(worker_queues(get_settings(), MODEL_KINDS)))


@signals.worker_init.connect
def _load_model_or_exit(sender: Any = None, **_kwargs: Any) -> None:
    """Fail fast: load and hash-check the model before consuming anything. A worker whose
    weights are missing or differ from their card exits non-zero, so it never reports ready
    (compose health check, Flower) and never claims a scan it cannot process. The same for
    storage that other hosts could not read (`topology_problem`)."""
    problem = topology_problem(get_settings())
    if problem:
        log.critical("refusing to start: %s", problem)
        raise SystemExit(1)
    if sender is not None and not _consumes_model_queues(sender):
        log.info("no scan queue consumed (webhooks only): the model is not loaded")
        return
    try:
        pipeline.get_model()
    except Exception:
        log.critical("cannot load the model; this worker exits", exc_info=True)
        raise SystemExit(1) from None


@signals.worker_ready.connect
def _start_reconciler(**_kwargs: Any) -> None:
    """Every worker reconciles (see worker/reconciler.py): no extra process to deploy."""
    global _reconciler
    if _reconciler is None:
        _reconciler = Reconciler(make_producer(get_settings()), notify=_notify)
        _reconciler.start()


@signals.worker_shutdown.connect
def _stop_reconciler(**_kwargs: Any) -> None:
    if _reconciler is not None:
        _reconciler.stop()
