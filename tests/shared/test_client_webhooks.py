"""neuroscan.client.verify_webhook: the signature the worker sends (shared.webhooks)."""

from __future__ import annotations

import hashlib
import hmac
import time

from neuroscan.client import verify_webhook


def _sign(secret: bytes, ts: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()


def test_good_signature_passes_and_tampering_or_replay_fails() -> None:
    secret, body, ts = b"s3cret", b'{"event":"scan.finished"}', str(int(time.time()))
    headers = {"X-NeuroScan-Timestamp": ts, "X-NeuroScan-Signature": _sign(secret, ts, body)}
    assert verify_webhook(secret, headers, body)
    assert not verify_webhook(secret, headers, body + b" ")
    assert not verify_webhook(b"other", headers, body)
    assert not verify_webhook(secret, headers, body, now=time.time() + 3600)
    assert not verify_webhook(secret, {}, body)


def test_verifies_what_the_service_signs() -> None:
    from shared.settings import Settings
    from shared.webhooks import signed_headers

    body = b'{"event":"batch.finished"}'
    headers = signed_headers(body, "batch", Settings(webhook_secret="per-deployment"))
    assert verify_webhook("per-deployment", headers, body)
