"""Webhooks: which callback URLs we will call (no SSRF), what we send, and how it is signed.

URL policy: https only; plain http only to a loopback host outside production (the embedded
default runs everything on one machine). The host is resolved and every address must be
public: private, loopback, link-local (cloud metadata lives at 169.254.169.254), multicast,
reserved and unspecified addresses are refused unless WEBHOOK_ALLOW_PRIVATE is set (loopback
is also allowed outside production). Delivery connects to the address that was checked (TLS
still verifies the host name), so DNS cannot be switched between check and use, and
redirects are never followed.

Outbox: a webhook is planned in the transaction that makes its result final, as a `pending`
`webhook_deliveries` row (`plan_scan_webhooks`, hooked on every flush, so no code path that
finishes a scan can forget it); the task sent after commit only triggers it, and the reconciler
sends it again if the broker lost it (worker/webhook_tasks.py, worker/reconciler.py). Each
webhook carries `X-NeuroScan-Delivery-Id`, the same on every try: receivers drop repeats.

Signature: `X-NeuroScan-Timestamp: <unix seconds>` and
`X-NeuroScan-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
The secret is the tenant's own (`neuroscan webhook-secret --tenant NAME` shows it); tenants
from before revision 0008 keep the deployment's, WEBHOOK_SECRET or when unset
HMAC-SHA256(SECRET_KEY, "neuroscan/webhook/v1") as hex, until theirs is rotated. Receivers should refuse timestamps more than five minutes old (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import random
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from shared.db.models import Scan, utcnow
from shared.db.webhook_models import WebhookDelivery
from shared.errors import InputError
from shared.settings import Settings, get_settings
from shared.states import JobState

INVALID_CALLBACK_URL = "invalid_callback_url"
SIGNATURE_HEADER = "X-NeuroScan-Signature"
TIMESTAMP_HEADER = "X-NeuroScan-Timestamp"
EVENT_HEADER = "X-NeuroScan-Event"
DELIVERY_ID_HEADER = "X-NeuroScan-Delivery-Id"  # the idempotency id: one per event, every try
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class CheckedURL:
    """A callback URL that passed the policy, with the address to connect to."""

    url: str
    host: str
    address: str
    port: int

    def pinned_url(self) -> str:
        """The same URL with the checked address in place of the host name."""
        parts = urlsplit(self.url)
        host = f"[{self.address}]" if ":" in self.address else self.address
        return urlunsplit((parts.scheme, f"{host}:{self.port}", parts.path or "/", parts.query, ""))


def _refuse(reason: str) -> InputError:
    return InputError(f"callback_url refused: {reason}.", code=INVALID_CALLBACK_URL)


def _forbidden(ip: IPAddress, settings: Settings) -> str | None:
    """Why this address may not be called, or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if settings.environment != "production" or settings.webhook_allow_private \
            else "loopback address"
    if settings.webhook_allow_private:
        return "multicast address" if ip.is_multicast else None
    for reason, bad in (("link-local address", ip.is_link_local), ("multicast address", ip.is_multicast),
                        ("unspecified address", ip.is_unspecified), ("reserved address", ip.is_reserved),
                        ("private address", ip.is_private or not ip.is_global)):
        if bad:
            return reason
    return None


def check_callback_url(url: str | None, settings: Settings | None = None, *,
                       resolve: bool = True) -> CheckedURL | None:
    """The URL if we may call it (None for no URL); InputError(invalid_callback_url) if not."""
    if not url:
        return None
    settings = settings or get_settings()
    if len(url) > 2000:
        raise _refuse("longer than 2000 characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise _refuse("not a valid URL") from exc
    host = (parts.hostname or "").rstrip(".").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise _refuse("it must be an absolute https URL")
    if parts.username or parts.password:
        raise _refuse("credentials in the URL are not accepted")
    if parts.fragment:
        raise _refuse("a fragment is not sent to the server")
    if parts.scheme == "http" and (settings.environment == "production"
                                   or not _is_loopback_host(host)):
        raise _refuse("plain http is only allowed to a loopback host outside production")
    addresses = _resolve(host, port) if resolve else []
    for ip in addresses:
        if reason := _forbidden(ip, settings):
            raise _refuse(f"{host} resolves to a {reason}")
    address = str(addresses[0]) if addresses else host
    return CheckedURL(url=url, host=host, address=address, port=port)


def _is_loopback_host(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _refuse(f"the host {host} does not resolve") from exc
    found: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in found:
            found.append(ip)
    if not found:
        raise _refuse(f"the host {host} does not resolve")
    return found


def webhook_secret(settings: Settings | None = None, tenant_id: str | None = None) -> bytes:
    """The tenant's own secret (`tenants.webhook_secret`, made with the tenant, rotated by
    `neuroscan webhook-secret --rotate`); for tenants from before 0008, and without a tenant,
    the deployment's: WEBHOOK_SECRET, or one derived from SECRET_KEY."""
    if tenant_id is not None:
        from shared.db.session import sync_session
        from shared.db.tenants import tenant_webhook_secret

        with sync_session() as session:
            own = tenant_webhook_secret(session, tenant_id)
        if own:
            return own.encode()
    settings = settings or get_settings()
    if settings.webhook_secret:
        return settings.webhook_secret.encode()
    derived = hmac.new(settings.secret_key.encode(), b"neuroscan/webhook/v1",
                       hashlib.sha256).hexdigest()
    return derived.encode()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, *,
           tolerance_s: int = 300, now: float | None = None) -> bool:
    """What a receiver does: constant-time compare, and refuse stale timestamps."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


def build_payload(kind: str, body: dict[str, Any], *, include_filenames: bool = False) -> bytes:
    """`{"event": "scan.finished", "scan": {...}}` or the batch equivalent, compact JSON.

    Client file names (which often name the patient) are left out, every `filename` at any
    depth, unless the tenant opted in (`shared.audit.shares_filenames`)."""
    if not include_filenames:
        body = _without_filenames(body)
    return json.dumps({"event": f"{kind}.finished", kind: body}, separators=(",", ":"),
                      sort_keys=True, default=str).encode()


def _without_filenames(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_filenames(v) for k, v in value.items() if k != "filename"}
    if isinstance(value, list):
        return [_without_filenames(v) for v in value]
    return value


def signed_headers(body: bytes, kind: str, settings: Settings | None = None,
                   timestamp: int | None = None, delivery_id: str | None = None,
                   tenant_id: str | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    secret = webhook_secret(settings, tenant_id)
    headers = {"Content-Type": "application/json", "User-Agent": "NeuroScan-Webhook/1",
               TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(secret, ts, body),
               EVENT_HEADER: f"{kind}.finished"}
    if delivery_id:
        headers[DELIVERY_ID_HEADER] = delivery_id
    return headers


def retryable(status_code: int | None) -> bool:
    """Network errors, 5xx, 408 and 429 are worth another try; other answers are final."""
    return status_code is None or status_code >= 500 or status_code in (408, 429)


def post(checked: CheckedURL, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POST to the checked address (Host and TLS name stay the original host); the status code."""
    import httpx

    request_headers = dict(headers)
    request_headers["Host"] = checked.host if checked.port in (80, 443) else \
        f"{checked.host}:{checked.port}"
    with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        response = client.post(checked.pinned_url(), content=body, headers=request_headers,
                               extensions={"sni_hostname": checked.host})
    return response.status_code


# --- the outbox ------------------------------------------------------------------------------

def delivery_id(kind: str, target_id: str) -> str:
    """The idempotency id of a webhook: a scan or batch finishes once, so one id per target,
    the same on every try and every re-send (a UUID derived from the kind and the id)."""
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{kind}.finished:{target_id}"))


def backoff_s(attempt: int, settings: Settings | None = None) -> float:
    """How long after try `attempt` the next one is due: 2^(attempt-1) s, capped at
    WEBHOOK_BACKOFF_MAX_S, with jitter (half to all of it) so that receivers coming back are
    not hit by every retry at once."""
    settings = settings or get_settings()
    full = min(float(2 ** max(attempt - 1, 0)), settings.webhook_backoff_max_s)
    return full * random.uniform(0.5, 1.0)


def pending_delivery(tenant_id: str, url: str, *, scan_id: str | None = None,
                     batch_id: str | None = None, attempt: int = 1,
                     due_in_s: float = 0.0, now: datetime | None = None) -> WebhookDelivery:
    """A planned try, due `due_in_s` from now; its task counts as sent now."""
    now = now or utcnow()
    return WebhookDelivery(tenant_id=tenant_id, scan_id=scan_id, batch_id=batch_id, url=url,
                           attempt=attempt, state=PENDING, created_at=now,
                           due_at=now + timedelta(seconds=due_in_s), enqueued_at=now)


def plan_scan_webhooks(session: Session, _flush_context: object = None,
                       _instances: object = None) -> None:
    """Before a flush: every scan with a callback URL that this flush makes final gets its
    first try planned, in the same transaction as its result (registered for every Session,
    sync or async, below)."""
    for obj in list(session.dirty):
        if not isinstance(obj, Scan) or not obj.callback_url:
            continue
        history = inspect(obj).attrs.state.history
        if not history.added or history.added[0] not in _FINAL:
            continue
        if any(old in _FINAL for old in history.deleted or ()):
            continue  # was final already (cannot happen: transitions refuse it)
        session.add(pending_delivery(obj.tenant_id, obj.callback_url, scan_id=obj.id))


PENDING, SENDING, DONE = "pending", "sending", "done"
_FINAL = (JobState.SUCCEEDED.value, JobState.FAILED.value)
_DELIVERY_NAMESPACE = uuid.UUID("5b0c9d0e-4c1f-4d7a-9a57-2f3c8d6e1a10")
event.listen(Session, "before_flush", plan_scan_webhooks)
