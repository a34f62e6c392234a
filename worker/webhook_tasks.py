"""Webhook delivery: the Celery task `neuroscan.deliver_webhook` and the plain function it runs.

The pipeline sends the task by name with `[scan_id_or_batch_id, kind]` (kind "scan" or
"batch") after a scan or a whole batch with a callback URL reached a final state. Each try is
recorded in `webhook_deliveries`; network errors, 5xx, 408 and 429 are retried with
exponential backoff up to WEBHOOK_MAX_ATTEMPTS tries; other answers and refused URLs are final.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from shared.db.hospital_models import WebhookDelivery
from shared.db.models import Batch, ScanResult
from shared.db.session import sync_session
from shared.errors import InputError
from shared.queue import DELIVER_WEBHOOK
from shared.schemas import batch_out, scan_out
from shared.settings import Settings, get_settings
from shared.storage import get_storage
from shared.webhooks import build_payload, check_callback_url, post, retryable, signed_headers
from worker.celery_app import app

log = logging.getLogger(__name__)


class DeliveryFailed(Exception):
    """A try that is worth repeating (the receiver was down, busy or broken)."""


def _signer(settings: Settings) -> Any:
    storage = get_storage(settings)
    base = (settings.public_base_url or f"http://{settings.host}:{settings.port}").rstrip("/")

    def sign(ref: str) -> str:
        url = storage.url(ref, settings.signed_url_ttl_s)
        return base + url if url.startswith("/") else url

    return sign


def _target(target_id: str, kind: str, settings: Settings) -> tuple[str, str | None, dict[str, Any]]:
    """(tenant_id, callback_url, body) for the scan or batch, as the API would show it."""
    sign = _signer(settings)
    with sync_session() as session:
        if kind == "scan":
            scan = session.get(ScanResult, target_id)
            if scan is None:
                raise LookupError(f"no scan {target_id}")
            return scan.tenant_id, scan.callback_url, scan_out(scan, sign).model_dump(mode="json")
        if kind == "batch":
            batch = session.get(Batch, target_id)
            if batch is None:
                raise LookupError(f"no batch {target_id}")
            scans = list(session.scalars(select(ScanResult).where(ScanResult.batch_id == batch.id)
                                         .order_by(ScanResult.created_at, ScanResult.id)))
            return batch.tenant_id, batch.callback_url, batch_out(batch, scans, sign).model_dump(
                mode="json")
    raise ValueError(f"unknown webhook kind {kind!r}")


def _record(tenant_id: str, target_id: str, kind: str, url: str, attempt: int,
            status_code: int | None, error: str | None) -> None:
    with sync_session() as session:
        session.add(WebhookDelivery(
            tenant_id=tenant_id, scan_id=target_id if kind == "scan" else None,
            batch_id=target_id if kind == "batch" else None, url=url, attempt=attempt,
            status_code=status_code, error=(error or None) and error[:500]))


def deliver(target_id: str, kind: str, attempt: int, settings: Settings | None = None) -> int | None:
    """One try: POST the signed result; returns the status code (None: no answer).

    Raises DeliveryFailed when another try is due."""
    s = settings or get_settings()
    tenant_id, url, body = _target(target_id, kind, s)
    if not url:
        return None
    status_code: int | None = None
    error: str | None = None
    try:
        # Checked again at delivery: DNS may now point somewhere we must not call.
        checked = check_callback_url(url, s)
        assert checked is not None
        payload = build_payload(kind, body)
        status_code = post(checked, payload,
                           signed_headers(payload, kind, s, tenant_id=tenant_id),
                           s.webhook_timeout_s)
    except InputError as exc:
        _record(tenant_id, target_id, kind, url, attempt, None, exc.message)
        log.warning("webhook for %s %s refused: %s", kind, target_id, exc.code)
        return None
    except Exception as exc:  # httpx errors, TLS, timeouts: the receiver is unreachable
        error = f"{type(exc).__name__}: {exc}"
    if status_code is not None and not 200 <= status_code < 300:
        error = f"HTTP {status_code}"
    _record(tenant_id, target_id, kind, url, attempt, status_code, error)
    if error and retryable(status_code) and attempt < s.webhook_max_attempts:
        raise DeliveryFailed(error)
    log.info("webhook for %s %s: attempt %d, %s", kind, target_id, attempt, error or status_code)
    return status_code


@app.task(name=DELIVER_WEBHOOK, bind=True, autoretry_for=(DeliveryFailed,), retry_backoff=True,
          retry_backoff_max=600, retry_jitter=True,
          max_retries=max(get_settings().webhook_max_attempts - 1, 0))
def deliver_webhook(self: Any, target_id: str, kind: str) -> int | None:
    """Deliver the result of a finished scan or batch to its callback URL."""
    return deliver(target_id, kind, attempt=self.request.retries + 1)
