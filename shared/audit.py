"""The audit log of reads: who read or downloaded which result, report, FHIR document or image.

One table, `audit_events` (revision 0006; append-only since 0009: triggers refuse UPDATE and
DELETE on PostgreSQL and SQLite), holds every audited act: deletions and purges
(`shared/lifecycle.py`) and, from here, reads. A read is one row per request:

| route | action | target | detail.kind |
|---|---|---|---|
| `GET /v1/scans/{id}` | read | `scan:{id}` | `result` |
| `GET /v1/scans` | read | `scans` | `history` (+ `scans`: the ids on the page) |
| `GET /v1/batches/{id}` | read | `batch:{id}` | `batch` |
| `GET /v1/scans/{id}/report.pdf` | download | `scan:{id}` | `report_pdf` |
| `GET /v1/batches/{id}/report.pdf` | download | `batch:{id}` | `batch_report_pdf` |
| `GET /v1/scans/{id}/fhir` | read | `scan:{id}` | `fhir` |
| `GET /v1/series/{id}` | read | `series:{id}` | `series` |
| `GET /v1/series` | read | `series` | `series_list` (+ `series`: the ids listed) |
| `GET /media/{folder}/{name}` | download | `scan:{id}` | `image` (+ `file`) |
| `GET /v1/audit` | read | `audit` | `audit` |

`key_id` is the API key's `users.id` (for a media link: the key that was given the link; None
for links the service made itself, in webhooks). `request_id` is the request's `X-Request-ID`
(or one made up for it when the client sent none or an unusable one).

Rows are written after the response has been sent (a background task of the request, one
INSERT in its own short transaction): the read never waits for it, and on SQLite it takes its
turn in the writer queue like any write. A row that cannot be written is logged at ERROR with
everything it held, so that the log's gaps can be filled from the service log.

`fhir_bundle` turns rows into a FHIR R4 Bundle of AuditEvent resources (validated with
fhir.resources' R4B models, as `shared/fhir.py` does): `GET /v1/audit` and
`neuroscan audit export`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from shared.db.lifecycle_models import AuditEvent
from shared.db.models import Tenant, User, utcnow
from shared.db.privacy_models import TenantPrivacy
from shared.db.session import async_write_session

log = logging.getLogger(__name__)

READ = "read"
DOWNLOAD = "download"
REQUEST_ID_HEADER = "X-Request-ID"
# What a client may send as its request id: bounded, no spaces or control characters.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,64}$")

FHIR_MEDIA_TYPE = "application/fhir+json; fhirVersion=4.0"
KEY_SYSTEM = "urn:neuroscan:api-key"
TENANT_SYSTEM = "urn:neuroscan:tenant"
OBJECT_SYSTEM = "urn:neuroscan:object"
_EVENT_TYPES = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_REST = "http://hl7.org/fhir/restful-interaction"
_SECURITY = {"system": _DCM, "code": "110137", "display": "User Security Attributes Changed"}
# action -> (AuditEvent.action code, type, subtype or None)
_FHIR_ACTIONS: dict[str, tuple[str, dict[str, str], dict[str, str] | None]] = {
    READ: ("R", {"system": _EVENT_TYPES, "code": "rest", "display": "RESTful Operation"},
           {"system": _REST, "code": "read", "display": "read"}),
    DOWNLOAD: ("R", {"system": _EVENT_TYPES, "code": "rest", "display": "RESTful Operation"},
               {"system": _REST, "code": "read", "display": "read"}),
    "delete": ("D", {"system": _EVENT_TYPES, "code": "rest", "display": "RESTful Operation"},
               {"system": _REST, "code": "delete", "display": "delete"}),
    "purge": ("D", {"system": _DCM, "code": "110110", "display": "Patient Record"}, None),
    "retention": ("U", {"system": _DCM, "code": "110100", "display": "Application Activity"},
                  None),
    "privacy": ("U", {"system": _DCM, "code": "110100", "display": "Application Activity"}, None),
    "export": ("R", {"system": _DCM, "code": "110106", "display": "Export"}, None),
    "import": ("C", {"system": _DCM, "code": "110107", "display": "Import"}, None),
    "key_create": ("C", _SECURITY, None),
    "key_revoke": ("D", _SECURITY, None),
    "key_rotate": ("U", _SECURITY, None),
    "webhook_secret_rotate": ("U", _SECURITY, None),
}
# Done by an operator on the command line: the row's key id names the object, not the actor.
_OPERATOR_ACTIONS = {"retention", "privacy", "import", "key_create", "key_revoke", "key_rotate",
                     "webhook_secret_rotate"}
_FALLBACK_ACTION = ("E", {"system": _DCM, "code": "110100", "display": "Application Activity"},
                    None)
# target prefix -> the FHIR resource type a reader would look the object up as
_OBJECT_TYPES = {"scan": "DiagnosticReport", "batch": "List", "series": "ImagingStudy",
                 "tenant": "Organization"}


def clean_request_id(value: str | None) -> str | None:
    """The client's request id if it is one we can store as it is, else None."""
    value = (value or "").strip()
    return value if _REQUEST_ID.match(value) else None


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Read:
    """One audited read, ready to be written."""

    tenant_id: str
    key_id: str | None
    action: str
    target: str
    request_id: str | None
    detail: dict[str, Any]
    at: datetime

    def row(self) -> AuditEvent:
        return AuditEvent(tenant_id=self.tenant_id, key_id=self.key_id, action=self.action,
                          target=self.target[:100], at=self.at, request_id=self.request_id,
                          detail=self.detail)


def read_event(tenant_id: str, key_id: str | None, kind: str, target: str, *,
               request_id: str | None, action: str = READ,
               detail: dict[str, Any] | None = None) -> Read:
    return Read(tenant_id=tenant_id, key_id=key_id, action=action, target=target,
                request_id=request_id, detail={"kind": kind, **(detail or {})}, at=utcnow())


async def write(reads: Sequence[Read], *, attempts: int = 3) -> None:
    """Append these rows in one transaction, trying again after a busy or unreachable database
    (0.25 s, then 0.5 s); a final failure is logged (with the rows), not raised: the response
    has already gone out."""
    if not reads:
        return
    for attempt in range(1, attempts + 1):
        try:
            async with async_write_session() as session:
                session.add_all([r.row() for r in reads])
            return
        except Exception:
            if attempt < attempts:
                await asyncio.sleep(0.25 * 2 ** (attempt - 1))
                continue
            log.exception("audit: %d read events NOT written: %s", len(reads),
                          [(r.tenant_id, r.key_id, r.action, r.target, r.request_id,
                            r.at.isoformat()) for r in reads])


# --- the file-name opt-in -------------------------------------------------------------------

def _privacy(tenant_id: str) -> Select[tuple[bool]]:
    return select(TenantPrivacy.share_filenames).where(TenantPrivacy.tenant_id == tenant_id)


def shares_filenames(session: Session, tenant_id: str) -> bool:
    """Whether the tenant opted in to client file names in reports and webhooks."""
    return bool(session.scalar(_privacy(tenant_id)))


async def shares_filenames_async(session: AsyncSession, tenant_id: str) -> bool:
    return bool(await session.scalar(_privacy(tenant_id)))


def set_share_filenames(session: Session, tenant_id: str, share: bool) -> None:
    row = session.get(TenantPrivacy, tenant_id) or TenantPrivacy(tenant_id=tenant_id)
    row.share_filenames = share
    row.updated_at = utcnow()
    session.add(row)


# --- reading the log back -------------------------------------------------------------------

def events_query(tenant_id: str, *, since: datetime | None = None, after: int | None = None,
                 limit: int | None = None) -> Select[tuple[AuditEvent]]:
    """The tenant's events, oldest first (id order), from `since` and after event `after`."""
    query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if after is not None:
        query = query.where(AuditEvent.id > after)
    query = query.order_by(AuditEvent.id)
    return query.limit(limit) if limit is not None else query


def key_names_query(key_ids: Iterable[str | None]) -> Select[tuple[str, str, str]]:
    ids = sorted({k for k in key_ids if k})
    return select(User.id, User.name, User.api_key_prefix).where(User.id.in_(ids))


def _instant(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds")


def _entity(event: AuditEvent) -> dict[str, Any]:
    prefix, _, ident = event.target.partition(":")
    what: dict[str, Any] = {"identifier": {"system": OBJECT_SYSTEM, "value": event.target}}
    if ident and prefix in _OBJECT_TYPES:
        what["type"] = _OBJECT_TYPES[prefix]
    entity: dict[str, Any] = {
        "what": what,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                 "code": "2", "display": "System Object"},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                 "code": "4", "display": "Domain Resource"},
    }
    details = [{"type": "action", "valueString": event.action}]
    for name, value in sorted((event.detail or {}).items()):
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        if text:
            details.append({"type": name, "valueString": text})
    if event.request_id:
        details.append({"type": REQUEST_ID_HEADER, "valueString": event.request_id})
    entity["detail"] = details
    return entity


def fhir_audit_event(event: AuditEvent, tenant: Tenant,
                     keys: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """One row as a FHIR R4 AuditEvent (dict; validated with the bundle)."""
    code, kind, subtype = _FHIR_ACTIONS.get(event.action, _FALLBACK_ACTION)
    tenant_ref = {"identifier": {"system": TENANT_SYSTEM, "value": tenant.id},
                  "display": tenant.name}
    if event.action in _OPERATOR_ACTIONS:
        agent: dict[str, Any] = {"who": {"display": "NeuroScan operator (command line)"},
                                 "requestor": True}
    elif event.key_id:
        name, prefix = keys.get(event.key_id, ("(removed key)", ""))
        agent = {
            "who": {"identifier": {"system": KEY_SYSTEM, "value": event.key_id,
                                   "assigner": tenant_ref}, "display": name},
            "requestor": True}
        if prefix:
            agent["altId"] = prefix
    else:
        agent = {"who": {"display": "NeuroScan service"}, "requestor": False}
    doc: dict[str, Any] = {
        "resourceType": "AuditEvent", "id": str(event.id), "type": kind, "action": code,
        "recorded": _instant(event.at), "outcome": "0", "agent": [agent],
        "source": {"site": tenant.name, "observer": {"display": "NeuroScan"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                             "code": "4", "display": "Application Server"}]},
        "entity": [_entity(event)],
    }
    if subtype:
        doc["subtype"] = [subtype]
    return doc


def fhir_bundle(events: Sequence[AuditEvent], tenant: Tenant, keys: dict[str, tuple[str, str]],
                *, next_url: str | None = None) -> dict[str, Any]:
    """A FHIR R4 Bundle (`searchset`) of AuditEvents, validated against fhir.resources' R4B
    Bundle and AuditEvent models; with `next_url`, a `next` link to the following page."""
    from fhir.resources.R4B.bundle import Bundle

    doc: dict[str, Any] = {
        "resourceType": "Bundle", "type": "searchset", "total": len(events),
        "timestamp": _instant(utcnow()),
        "entry": [{"fullUrl": f"urn:neuroscan:audit:{e.id}",
                   "resource": fhir_audit_event(e, tenant, keys),
                   "search": {"mode": "match"}} for e in events],
    }
    if next_url:
        doc["link"] = [{"relation": "next", "url": next_url}]
    return Bundle.model_validate(doc).model_dump(mode="json", by_alias=True, exclude_none=True)


def export_tenant_bundle(session: Session, tenant_name: str, *,
                         since: datetime | None = None) -> dict[str, Any]:
    """`neuroscan audit export`: every event of the tenant (from `since`) as one Bundle."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        raise LookupError(f"no tenant named {tenant_name!r}")
    events = list(session.scalars(events_query(tenant.id, since=since)))
    keys = {k: (n, p) for k, n, p in session.execute(key_names_query(e.key_id for e in events))}
    return fhir_bundle(events, tenant, keys)
