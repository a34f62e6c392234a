"""Webhooks: URL policy (SSRF), signatures, and delivery with recorded attempts (real PostgreSQL,
a real HTTP receiver on 127.0.0.1)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.db.models import Batch, Scan, Tenant, utcnow
from shared.db.session import sync_session
from shared.db.webhook_models import WebhookDelivery
from shared.errors import InputError
from shared.settings import Settings, get_settings
from shared.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    check_callback_url,
    sign,
    verify,
    webhook_secret,
)
from tests.support.inprocess import migrated_database
from tests.support.webhook_receiver import Receiver

DEV = Settings(environment="development")
PROD = Settings(environment="production", secret_key="9f2c47e1b0a85d36" * 4)


@pytest.mark.parametrize("url", [
    "https://10.0.0.1/hook", "https://169.254.169.254/latest/meta-data", "https://192.168.1.1/x",
    "https://172.16.5.4/x", "https://100.64.0.1/x", "https://[fd00::1]/x", "https://[fe80::1]/x",
    "https://224.0.0.1/x", "https://0.0.0.0/x", "https://[::ffff:10.0.0.1]/x", "https://240.0.0.1/x",
])
def test_private_link_local_multicast_reserved_are_refused(url: str) -> None:
    for settings in (DEV, PROD):
        with pytest.raises(InputError) as err:
            check_callback_url(url, settings)
        assert err.value.code == "invalid_callback_url"


@pytest.mark.parametrize("url", ["http://93.184.216.34/hook", "ftp://93.184.216.34/x",
                                 "https://user:pw@93.184.216.34/x", "/relative", "https:///x",
                                 "https://93.184.216.34/x#frag", "https://[::1/x"])
def test_malformed_or_plain_http_to_a_public_host_is_refused(url: str) -> None:
    with pytest.raises(InputError) as err:
        check_callback_url(url, DEV)
    assert err.value.code == "invalid_callback_url"


def test_loopback_only_outside_production() -> None:
    for url in ("http://127.0.0.1:9/hook", "https://[::1]/hook", "http://localhost:8080/x"):
        assert check_callback_url(url, DEV) is not None
        with pytest.raises(InputError):
            check_callback_url(url, PROD)


def test_allow_private_opens_private_ranges_but_not_multicast() -> None:
    allow = Settings(webhook_allow_private=True)
    assert check_callback_url("https://10.0.0.1/hook", allow).address == "10.0.0.1"
    with pytest.raises(InputError):
        check_callback_url("https://224.0.0.1/x", allow)
    with pytest.raises(InputError):  # still https only
        check_callback_url("http://10.0.0.1/hook", allow)


def test_public_https_is_accepted_and_pinned() -> None:
    checked = check_callback_url("https://93.184.216.34:8443/a/b?c=1", PROD)
    assert checked is not None and checked.pinned_url() == "https://93.184.216.34:8443/a/b?c=1"
    v6 = check_callback_url("https://[2606:4700::1111]/h", PROD)
    assert v6 is not None and v6.pinned_url() == "https://[2606:4700::1111]:443/h"
    assert check_callback_url(None, PROD) is None


def test_signature_roundtrip_and_tamper_and_staleness() -> None:
    secret, body, ts = b"k", b'{"a":1}', int(time.time())
    header = sign(secret, ts, body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify(secret, str(ts), body, header)
    assert not verify(secret, str(ts), body + b" ", header)
    assert not verify(b"other", str(ts), body, header)
    assert not verify(secret, str(ts - 3600), body, sign(secret, ts - 3600, body))
    assert not verify(secret, "soon", body, header)


def test_secret_is_configured_or_derived() -> None:
    assert webhook_secret(Settings(webhook_secret="abc")) == b"abc"
    derived = webhook_secret(Settings(secret_key="s1"))
    assert derived != webhook_secret(Settings(secret_key="s2")) and len(derived) == 64


# --- delivery: the function the Celery task runs, against PostgreSQL and a live receiver ----

@pytest.fixture()
def pg_env(tmp_path: Path) -> Iterator[Settings]:
    with migrated_database("pg", tmp_path, webhook_max_attempts="3",
                           webhook_secret="receiver-shared-secret"):
        yield get_settings()


def _scan(callback_url: str, batch: bool = False) -> tuple[str, str | None]:
    with sync_session() as session:
        tenant = Tenant(name=f"hospital-{uuid.uuid4().hex[:6]}")
        session.add(tenant)
        session.flush()
        batch_id = None
        if batch:
            b = Batch(tenant_id=tenant.id, callback_url=callback_url, total=1, finished_at=utcnow())
            session.add(b)
            session.flush()
            batch_id = b.id
        scan = Scan(tenant_id=tenant.id, batch_id=batch_id, state="succeeded",
                          format="png", size_bytes=10, sha256="0" * 64, label="glioma",
                          confidence=0.9, probabilities={"glioma": 0.9, "meningioma": 0.05,
                                                         "notumor": 0.03, "pituitary": 0.02},
                          callback_url=None if batch else callback_url, finished_at=utcnow(),
                          patient_ref="P-1", study_ref="S-1")
        session.add(scan)
        session.flush()
        return scan.id, batch_id


def _attempts(scan_id: str | None = None, batch_id: str | None = None) -> list[WebhookDelivery]:
    with sync_session() as session:
        column = WebhookDelivery.scan_id if scan_id else WebhookDelivery.batch_id
        return list(session.scalars(select(WebhookDelivery).where(
            column == (scan_id or batch_id)).order_by(WebhookDelivery.attempt)))


def test_delivery_is_signed_and_recorded(pg_env: Settings) -> None:
    from worker.webhook_tasks import deliver

    receiver = Receiver().start()
    try:
        scan_id, _ = _scan(receiver.url)
        assert deliver(scan_id, "scan", attempt=1) == 200
    finally:
        receiver.stop()
    (got,) = receiver.received
    assert verify(b"receiver-shared-secret", got.headers[TIMESTAMP_HEADER], got.body,
                  got.headers[SIGNATURE_HEADER])
    payload = json.loads(got.body)
    assert payload["event"] == "scan.finished" and payload["scan"]["id"] == scan_id
    assert payload["scan"]["prediction"]["label"] == "glioma"
    (row,) = _attempts(scan_id)
    assert (row.attempt, row.status_code, row.error, row.url) == (1, 200, None, receiver.url)


def test_failures_are_retried_then_given_up_and_every_attempt_recorded(pg_env: Settings) -> None:
    from worker.webhook_tasks import DeliveryFailed, deliver

    receiver = Receiver(statuses=[503]).start()
    try:
        scan_id, _ = _scan(receiver.url)
        for attempt in (1, 2):
            with pytest.raises(DeliveryFailed):
                deliver(scan_id, "scan", attempt=attempt)
        assert deliver(scan_id, "scan", attempt=3) == 503  # the last allowed try: give up
    finally:
        receiver.stop()
    rows = _attempts(scan_id)
    assert [(r.attempt, r.status_code, r.error) for r in rows] == [
        (1, 503, "HTTP 503"), (2, 503, "HTTP 503"), (3, 503, "HTTP 503")]


def test_client_errors_are_final_and_unreachable_is_retried(pg_env: Settings) -> None:
    from worker.webhook_tasks import DeliveryFailed, deliver

    receiver = Receiver(statuses=[404]).start()
    scan_id, _ = _scan(receiver.url)
    assert deliver(scan_id, "scan", attempt=1) == 404
    receiver.stop()  # now nothing listens on that port
    with pytest.raises(DeliveryFailed):
        deliver(scan_id, "scan", attempt=2)
    rows = _attempts(scan_id)
    assert rows[0].status_code == 404 and rows[1].status_code is None
    assert rows[1].error and "Connect" in rows[1].error


def test_batch_payload_and_refused_url_at_delivery(pg_env: Settings) -> None:
    from worker.webhook_tasks import deliver

    receiver = Receiver().start()
    try:
        _, batch_id = _scan(receiver.url, batch=True)
        assert batch_id is not None and deliver(batch_id, "batch", attempt=1) == 200
    finally:
        receiver.stop()
    body = json.loads(receiver.received[0].body)
    assert body["event"] == "batch.finished" and body["batch"]["id"] == batch_id
    assert body["batch"]["counts"]["succeeded"] == 1
    # A URL that became unacceptable (e.g. stored before a policy change) is refused, recorded.
    scan_id, _ = _scan("https://169.254.169.254/latest")
    assert deliver(scan_id, "scan", attempt=1) is None
    (row,) = _attempts(scan_id)
    assert row.status_code is None and "link-local" in (row.error or "")
