"""The reconciler: the database is the source of truth, the queue only a trigger.

Every worker process runs `Reconciler`, a thread that calls `reconcile_once` every
RECONCILE_INTERVAL_S (and once at start). A pass:

1. takes back `processing` scans whose lease ran out (their worker died, hung or lost the
   database): counts the loss, and fails the scan with `poison_input` once it reaches
   SCAN_MAX_LOST_LEASES, alone; otherwise re-sends it in a task of its own, so that an
   input that kills its worker cannot take its batch-mates down with it again;
2. re-sends scans that are accepted but not claimed (queued, or released by a failed task)
   and were last sent more than RECONCILE_AGE_S ago: the broker was down when the API
   committed them, or the message was lost.

3. webhooks (the outbox, worker/webhook_tasks.py): re-sends the task of every delivery still
   `pending` WEBHOOK_RESEND_AGE_S after it was due (the broker was down when the result was
   written, or the retry's countdown message was lost); counts a `sending` try whose worker
   never reported back within WEBHOOK_TIMEOUT_S + WEBHOOK_RESEND_AGE_S as made (error
   `interrupted`) and plans the next within WEBHOOK_MAX_ATTEMPTS; and decides batches whose
   scans are all final but whose worker died before it marked the batch finished, planning
   their webhook (and that of a finished batch whose first try was never planned).

Every PURGE_INTERVAL_S (and at start) the same thread also runs one bounded pass of the
retention purge (`shared.lifecycle.purge_once`).

A thread in the worker rather than Celery beat: it needs no extra process in either
deployment (`neuroscan serve`, compose), it runs wherever work can be done, and any number of
workers may run it at once: rows are locked with SKIP LOCKED (SQLite serialises writers) and
`enqueued_at` records each re-send, so two reconcilers never send the same scan twice in one
period. A duplicate message is harmless anyway: claiming skips final and leased scans.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Select, exists, func, or_, select
from sqlalchemy.orm import Session

from shared.db.models import Batch, Scan, utcnow
from shared.db.session import sync_session
from shared.db.webhook_models import WebhookDelivery
from shared.lifecycle import purge_once
from shared.queue import DELIVER_WEBHOOK, send_scans
from shared.settings import Settings, get_settings
from shared.states import JobState
from shared.webhooks import DONE, PENDING, SENDING, pending_delivery
from worker import pipeline
from worker.leases import alive_owners
from worker.webhook_tasks import plan_batch_webhook

log = logging.getLogger(__name__)

# One pass touches at most this many scans of each kind; the next pass takes the rest.
PASS_LIMIT = 1000
POISON_MESSAGE = ("This scan stopped the worker processing it {n} times (an input that crashes "
                  "a decoder, say); it was not retried again.")

Send = Callable[[list[str], int], object]  # (scan ids, batch size): sends the tasks
SendWebhook = Callable[[str, str], object]  # (scan or batch id, "scan" | "batch")
# Batches older than this are never decided or planned by the reconciler: a batch from before
# the outbox existed must not get a webhook days late.
WEBHOOK_HORIZON = timedelta(days=1)
INTERRUPTED = "interrupted: the worker was lost during this try"


@dataclass
class PassReport:
    poisoned: list[str] = field(default_factory=list)
    retried_alone: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    webhooks: list[str] = field(default_factory=list)  # scan or batch ids whose task was re-sent

    def __bool__(self) -> bool:
        return bool(self.poisoned or self.retried_alone or self.resent or self.webhooks)


def reconcile_once(send: Send, settings: Settings | None = None, *,
                   age_s: float | None = None, notify: pipeline.Notify | None = None,
                   now: datetime | None = None,
                   send_webhook: SendWebhook | None = None) -> PassReport:
    """One pass (see the module docstring); webhooks only with `send_webhook`. `send` raising
    leaves the rows as they were, so the next pass tries again."""
    settings = settings or get_settings()
    now = now or utcnow()
    report = PassReport()
    _take_back_expired(settings, now, report, send, notify)
    _resend_unclaimed(settings, now, age_s if age_s is not None else settings.reconcile_age_s,
                      report, send)
    if send_webhook is not None:
        _reconcile_webhooks(settings, now, report, send_webhook)
    return report


def _target(row: WebhookDelivery) -> tuple[str, str]:
    return (row.scan_id, "scan") if row.scan_id else (str(row.batch_id), "batch")


def _reconcile_webhooks(settings: Settings, now: datetime, report: PassReport,
                        send: SendWebhook) -> None:
    cutoff = now - timedelta(seconds=settings.webhook_resend_age_s)
    due: list[tuple[str, str]] = []
    with sync_session() as session:
        # Tries in flight on a worker that died: made, as far as we know; plan the next.
        stuck = session.scalars(select(WebhookDelivery).where(
            WebhookDelivery.state == SENDING,
            WebhookDelivery.claimed_at < cutoff - timedelta(seconds=settings.webhook_timeout_s))
            .order_by(WebhookDelivery.id).limit(PASS_LIMIT).with_for_update(skip_locked=True)).all()
        for row in stuck:
            row.state, row.error = DONE, INTERRUPTED
            if row.attempt < settings.webhook_max_attempts:
                session.add(pending_delivery(row.tenant_id, row.url, scan_id=row.scan_id,
                                             batch_id=row.batch_id, attempt=row.attempt + 1,
                                             now=now))
                due.append(_target(row))
        # Planned tries whose trigger was lost.
        overdue = session.scalars(select(WebhookDelivery).where(
            WebhookDelivery.state == PENDING, WebhookDelivery.due_at < cutoff,
            or_(WebhookDelivery.enqueued_at.is_(None), WebhookDelivery.enqueued_at < cutoff))
            .order_by(WebhookDelivery.id).limit(PASS_LIMIT).with_for_update(skip_locked=True)).all()
        for row in overdue:
            row.enqueued_at = now
            due.append(_target(row))
        due += [(batch_id, "batch") for batch_id in _plan_lost_batches(session, now, cutoff)]
        # Inside the transaction: if the broker is down, nothing is marked and the next pass
        # finds the same rows.
        for target_id, kind in dict.fromkeys(due):
            send(target_id, kind)
    report.webhooks = [target_id for target_id, _ in dict.fromkeys(due)]


def _plan_lost_batches(session: Session, now: datetime, cutoff: datetime) -> list[str]:
    """Batches with a callback whose webhook was never planned: all scans final but not marked
    finished (the worker died between the results and the batch decision), or finished with no
    delivery row (the task was lost). Both at least WEBHOOK_RESEND_AGE_S old."""
    horizon = now - WEBHOOK_HORIZON
    unfinished = exists().where(Scan.batch_id == Batch.id,
                                Scan.state.in_((JobState.QUEUED.value,
                                                      JobState.PROCESSING.value)))
    planned = exists().where(WebhookDelivery.batch_id == Batch.id)
    ids = list(session.scalars(select(Batch.id).where(
        Batch.callback_url.is_not(None), Batch.created_at > horizon, ~planned,
        or_((Batch.finished_at.is_(None)) & (Batch.created_at < cutoff) & ~unfinished,
            (Batch.finished_at < cutoff)),
    ).order_by(Batch.id).limit(PASS_LIMIT)))
    planned_now = []
    for batch_id in ids:
        batch = session.scalars(select(Batch).where(Batch.id == batch_id)
                                .with_for_update(skip_locked=True)).first()
        if batch is None:
            continue
        if batch.finished_at is None:
            batch.finished_at = now
        if plan_batch_webhook(session, batch_id, now):
            planned_now.append(batch_id)
    return planned_now


def _expired(now: datetime) -> Select[tuple[Scan]]:
    query = select(Scan).where(
        Scan.state == JobState.PROCESSING.value, Scan.lease_expires_at < now)
    if alive := alive_owners():  # a task running here is alive, however late its heartbeat
        query = query.where(Scan.lease_owner.not_in(alive))
    return query.order_by(Scan.id).limit(PASS_LIMIT).with_for_update(skip_locked=True)


def _take_back_expired(settings: Settings, now: datetime, report: PassReport, send: Send,
                       notify: pipeline.Notify | None) -> None:
    last_chance = settings.scan_max_lost_leases - 1
    # First the scans out of chances: failed alone, whatever the broker's state.
    with sync_session() as session:
        rows = session.scalars(_expired(now).where(Scan.lost_leases >= last_chance)).all()
        for row in rows:
            row.lost_leases += 1
            pipeline.fail_row(session, row, "poison_input", POISON_MESSAGE.format(n=row.lost_leases))
        poisoned = [(r.id, r.callback_url, r.batch_id) for r in rows]
    if poisoned:
        report.poisoned = [scan_id for scan_id, _, _ in poisoned]
        log.error("failed %d scans as poison_input: %s", len(poisoned), report.poisoned)
        pipeline.announce(poisoned, notify)
    with sync_session() as session:
        rows = session.scalars(_expired(now).where(Scan.lost_leases < last_chance)).all()
        for row in rows:
            row.lost_leases += 1
            row.lease_owner = row.lease_expires_at = None
            row.enqueued_at = now
        if rows:
            # Inside the transaction: if the broker is down, nothing is marked and the next
            # pass finds the same rows (their lease still expired).
            send([r.id for r in rows], 1)
            report.retried_alone = [r.id for r in rows]


def _resend_unclaimed(settings: Settings, now: datetime, age_s: float, report: PassReport,
                      send: Send) -> None:
    cutoff = now - timedelta(seconds=age_s)
    last_sent = func.coalesce(Scan.enqueued_at, Scan.started_at, Scan.created_at)
    with sync_session() as session:
        rows = session.scalars(select(Scan).where(
            or_(Scan.state == JobState.QUEUED.value,
                (Scan.state == JobState.PROCESSING.value)
                & Scan.lease_expires_at.is_(None)),
            last_sent < cutoff,
        ).order_by(Scan.created_at, Scan.id).limit(PASS_LIMIT)
            .with_for_update(skip_locked=True)).all()
        if not rows:
            return
        for row in rows:
            row.enqueued_at = now
        # Never lost by a worker: they may share tasks; a scan ever lost runs alone.
        fresh = [r.id for r in rows if r.lost_leases == 0]
        lost = [r.id for r in rows if r.lost_leases > 0]
        if fresh:
            send(fresh, settings.worker_batch_size)
        if lost:
            send(lost, 1)
        report.resent = fresh + lost
    log.warning("re-sent %d scans whose message may be lost", len(report.resent))


class Reconciler(threading.Thread):
    """Runs `reconcile_once` now and then every RECONCILE_INTERVAL_S until `stop()`."""

    def __init__(self, producer: object, notify: pipeline.Notify | None = None,
                 settings: Settings | None = None) -> None:
        super().__init__(name="reconciler", daemon=True)
        self._settings = settings or get_settings()
        self._producer, self._notify = producer, notify
        self._stop_event = threading.Event()

    def _send(self, scan_ids: Sequence[str], batch_size: int) -> object:
        # Each scan to its kind's queue: a batch's scans to bulk, single scans to interactive.
        return send_scans(self._producer, list(scan_ids), batch_size, self._settings)

    def _send_webhook(self, target_id: str, kind: str) -> object:
        return self._producer.send_task(DELIVER_WEBHOOK, args=[target_id, kind])  # type: ignore[attr-defined]

    def run(self) -> None:
        last_purge: float | None = None
        while True:
            try:
                report = reconcile_once(self._send, self._settings, notify=self._notify,
                                        send_webhook=self._send_webhook)
                if report:
                    log.warning("reconciler: %d poison, %d retried alone, %d re-sent, "
                                "%d webhooks re-sent", len(report.poisoned),
                                len(report.retried_alone), len(report.resent),
                                len(report.webhooks))
            except Exception:  # database or broker down: the next pass tries again
                log.warning("reconciler pass failed", exc_info=True)
            if last_purge is None or (time.monotonic() - last_purge
                                      >= self._settings.purge_interval_s):
                last_purge = time.monotonic()
                self._purge()
            if self._stop_event.wait(self._settings.reconcile_interval_s):
                return

    def _purge(self) -> None:
        """Retention rides this thread's schedule (shared/lifecycle.py): one bounded pass."""
        try:
            purge_once(self._settings)
        except Exception:  # storage or database down: the next period tries again
            log.warning("retention purge failed", exc_info=True)

    def stop(self) -> None:
        self._stop_event.set()
