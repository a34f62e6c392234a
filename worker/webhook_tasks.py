"""Webhook delivery from the outbox: the Celery task `neuroscan.deliver_webhook` and the plain
functions it runs.

`webhook_deliveries` is the outbox (shared/webhooks.py, migration 0010): a scan's first try is
planned (`pending`) in the transaction that makes it final; a finished batch's when the batch is
decided finished (by the task, or by the reconciler if the worker died first). The pipeline sends
the task by name with `[scan_id_or_batch_id, kind]` after commit; that message is only a trigger.
A try:

1. claims the target's next due `pending` row (`pending -> sending`, row locked, SKIP LOCKED):
   a second message for the same webhook finds nothing to claim and does nothing, so a
   duplicate trigger never makes a duplicate POST;
2. POSTs the signed result with `X-NeuroScan-Delivery-Id` (the same on every try);
3. records the answer on the row (`done`) and, when it is worth repeating (network errors, 5xx,
   408, 429) and tries are left (WEBHOOK_MAX_ATTEMPTS), plans the next try in the same
   transaction, due after `backoff_s`, then sends the task again with that countdown.

If the broker is down at step 3 or after a result was written, the reconciler re-sends pending
rows WEBHOOK_RESEND_AGE_S after they were due; a `sending` row whose worker died mid-try is
counted as a try by the reconciler and the next one planned (worker/reconciler.py). So the
guarantee is at-least-once (a worker that dies after the receiver answered but before the row
was written repeats that POST, with the same delivery id), and in every other case exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.audit import shares_filenames
from shared.db.models import Batch, Scan, utcnow
from shared.db.queries import scans_of_batch
from shared.db.session import sync_session
from shared.db.webhook_models import WebhookDelivery
from shared.errors import InputError
from shared.queue import DELIVER_WEBHOOK
from shared.schemas import batch_out, scan_out
from shared.settings import Settings, get_settings
from shared.storage import get_storage
from shared.webhooks import (
    DONE,
    PENDING,
    SENDING,
    backoff_s,
    build_payload,
    check_callback_url,
    delivery_id,
    pending_delivery,
    post,
    retryable,
    signed_headers,
)
from worker.celery_app import app

log = logging.getLogger(__name__)
# A task may arrive a moment before its row is due (clock steps, a countdown rounded down).
_EARLY_S = 1.0


class DeliveryFailed(Exception):
    """A try that is worth repeating (the receiver was down, busy or broken); the next try is
    planned `retry_in_s` from now."""

    def __init__(self, message: str, retry_in_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_in_s = retry_in_s


@dataclass(frozen=True)
class _Claim:
    row_id: int
    tenant_id: str
    url: str
    attempt: int


def _signer(settings: Settings, tenant_id: str) -> Any:
    storage = get_storage(settings)
    base = (settings.public_base_url or f"http://{settings.host}:{settings.port}").rstrip("/")

    def sign(ref: str) -> str:  # bound to the tenant; made by the service, so no key id
        url = storage.url(ref, settings.signed_url_ttl_s, tenant_id=tenant_id)
        return base + url if url.startswith("/") else url

    return sign


def _body(target_id: str, kind: str, settings: Settings) -> tuple[dict[str, Any], bool]:
    """The scan or batch as the API would show it, and whether its tenant lets client file
    names into webhooks (`neuroscan privacy`)."""
    with sync_session() as session:
        if kind == "scan":
            scan = session.get(Scan, target_id)
            if scan is None:
                raise LookupError(f"no scan {target_id}")
            return (scan_out(scan, _signer(settings, scan.tenant_id)).model_dump(mode="json"),
                    shares_filenames(session, scan.tenant_id))
        batch = session.get(Batch, target_id)
        if batch is None:
            raise LookupError(f"no batch {target_id}")
        scans = list(session.scalars(scans_of_batch(batch)))
        return (batch_out(batch, scans, _signer(settings, batch.tenant_id)).model_dump(mode="json"),
                shares_filenames(session, batch.tenant_id))


def _column(kind: str) -> Any:
    if kind == "scan":
        return WebhookDelivery.scan_id
    if kind == "batch":
        return WebhookDelivery.batch_id
    raise ValueError(f"unknown webhook kind {kind!r}")


def _first_row(session: Session, target_id: str, kind: str, attempt: int | None,
               state: str, now: datetime | None = None) -> WebhookDelivery | None:
    """A new row for a target that has none (none numbered `attempt`, if given), if it is
    due a webhook: a finished scan or batch with a callback URL. The target row is locked
    first, so that two callers (a task and the reconciler) never both create it."""
    model = Scan if kind == "scan" else Batch
    target = session.scalars(select(model).where(model.id == target_id).with_for_update()).first()
    if target is None or not target.callback_url:
        return None
    final = target.finished_at is not None if kind == "batch" else target.state in (
        "succeeded", "failed")
    if not final:
        return None
    same = () if attempt is None else (WebhookDelivery.attempt == attempt,)
    if session.scalar(select(WebhookDelivery.id).where(_column(kind) == target_id, *same)
                      .limit(1)) is not None:
        return None  # planned or made already
    ids = {"scan_id": target_id} if kind == "scan" else {"batch_id": target_id}
    row = pending_delivery(target.tenant_id, target.callback_url, attempt=attempt or 1,
                           now=now, **ids)
    row.state = state
    session.add(row)
    return row


def plan_batch_webhook(session: Session, batch_id: str, now: datetime | None = None) -> bool:
    """Plan a finished batch's first try if it has none yet (the reconciler calls this for
    batches whose trigger was lost); True if one was planned."""
    return _first_row(session, batch_id, "batch", 1, PENDING, now) is not None


def _claim(target_id: str, kind: str, attempt: int | None) -> _Claim | None:
    """`pending -> sending` on the target's next due try (or the try numbered `attempt`);
    None when there is nothing to send (done, in flight elsewhere, or not due)."""
    now = utcnow()
    with sync_session() as session:
        query = select(WebhookDelivery).where(_column(kind) == target_id,
                                              WebhookDelivery.state == PENDING)
        if attempt is not None:
            query = query.where(WebhookDelivery.attempt == attempt)
        row = session.scalars(query.order_by(WebhookDelivery.attempt).limit(1)
                              .with_for_update(skip_locked=True)).first()
        if row is None:
            # Done, or being sent by another worker; or no row at all: a target finished
            # before the outbox existed, a batch whose first try this task plans, or a
            # caller naming a try that was never planned (tests).
            row = _first_row(session, target_id, kind, attempt, SENDING)
            if row is None:
                return None
        elif attempt is None and row.due_at is not None \
                and (row.due_at - now).total_seconds() > _EARLY_S:
            return None  # its own countdown message, or the reconciler, sends it later
        row.state, row.claimed_at = SENDING, now
        session.flush()
        return _Claim(row.id, row.tenant_id, row.url, row.attempt)


def _finish(claim: _Claim, status_code: int | None, error: str | None,
            retry_in_s: float | None) -> None:
    """Record the try's outcome and, when another is due, plan it: one transaction."""
    with sync_session() as session:
        row = session.get(WebhookDelivery, claim.row_id, with_for_update=True)
        if row is None:  # purged meanwhile (the scan was deleted)
            return
        row.state, row.status_code = DONE, status_code
        row.error = (error or None) and error[:500]
        if retry_in_s is not None:
            session.add(pending_delivery(row.tenant_id, row.url, scan_id=row.scan_id,
                                         batch_id=row.batch_id, attempt=row.attempt + 1,
                                         due_in_s=retry_in_s))


def _send(claim: _Claim, target_id: str, kind: str, settings: Settings) -> int | None:
    """POST once; returns the status code (None: no answer or refused). Raises DeliveryFailed
    after planning the next try when one is worth making."""
    status_code: int | None = None
    error: str | None = None
    try:
        body, with_names = _body(target_id, kind, settings)
        # Checked again at delivery: DNS may now point somewhere we must not call.
        checked = check_callback_url(claim.url, settings)
        assert checked is not None
        payload = build_payload(kind, body, include_filenames=with_names)
        headers = signed_headers(payload, kind, settings, delivery_id=delivery_id(kind, target_id),
                                 tenant_id=claim.tenant_id)
        status_code = post(checked, payload, headers, settings.webhook_timeout_s)
    except InputError as exc:
        _finish(claim, None, exc.message, None)
        log.warning("webhook for %s %s refused: %s", kind, target_id, exc.code)
        return None
    except LookupError as exc:  # deleted meanwhile: nothing to tell
        _finish(claim, None, str(exc), None)
        return None
    except Exception as exc:  # httpx errors, TLS, timeouts: the receiver is unreachable
        error = f"{type(exc).__name__}: {exc}"
    if status_code is not None and not 200 <= status_code < 300:
        error = f"HTTP {status_code}"
    again = bool(error) and retryable(status_code) and claim.attempt < settings.webhook_max_attempts
    retry_in_s = backoff_s(claim.attempt, settings) if again else None
    _finish(claim, status_code, error, retry_in_s)
    if retry_in_s is not None:
        raise DeliveryFailed(error or "", retry_in_s)
    log.info("webhook for %s %s: attempt %d, %s", kind, target_id, claim.attempt,
             error or status_code)
    return status_code


def deliver(target_id: str, kind: str, attempt: int | None = None,
            settings: Settings | None = None) -> int | None:
    """One try: the target's next due one, or the one numbered `attempt` (made if missing).
    Returns the status code (None: nothing sent, no answer, or refused); raises
    DeliveryFailed when another try was planned."""
    settings = settings or get_settings()
    claim = _claim(target_id, kind, attempt)
    if claim is None:
        return None
    return _send(claim, target_id, kind, settings)


@app.task(name=DELIVER_WEBHOOK, bind=True, max_retries=None)
def deliver_webhook(self: Any, target_id: str, kind: str) -> int | None:
    """Deliver the result of a finished scan or batch to its callback URL (from the outbox)."""
    try:
        return deliver(target_id, kind)
    except DeliveryFailed as exc:
        # The next try is planned in the database; this message is its trigger. If the
        # broker refuses it, the reconciler sends it once it is overdue.
        try:
            self.retry(countdown=exc.retry_in_s, max_retries=None, throw=False)
        except Exception:
            log.warning("could not schedule the next webhook try for %s %s; left to the "
                        "reconciler", kind, target_id, exc_info=True)
        return None
