"""`GET /v1/audit`: the caller's tenant's audit log as a FHIR R4 Bundle of AuditEvents."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.audit import AuditTrailDep
from api.deps import CurrentTenant, SessionDep
from shared import audit
from shared.errors import InputError

router = APIRouter(prefix="/v1", tags=["audit"])
_MAX_ID = 2**63 - 1  # the column is a 64-bit integer


def _utc(when: datetime | None) -> datetime | None:
    """`since` in UTC (a time without a zone is UTC); a time UTC cannot hold is a 422."""
    if when is None:
        return None
    try:
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise InputError(f"since={when.isoformat()} is out of range.",
                         code="validation_error") from None


@router.get("/audit", summary="Audit log (FHIR AuditEvent Bundle)",
            responses={200: {"content": {"application/fhir+json": {}}}})
async def read_audit(
    request: Request,
    session: SessionDep,
    tenant: CurrentTenant,
    trail: AuditTrailDep,
    since: Annotated[datetime | None, Query(description="Only events at or after this time "
                                                        "(ISO 8601 with a zone)")] = None,
    after: Annotated[int | None, Query(ge=0, le=_MAX_ID, description="Only events after this "
                                       "event id (the `next` link sets it)")] = None,
    count: Annotated[int, Query(ge=1, le=1000, description="Events per page")] = 100,
) -> JSONResponse:
    """Who read, downloaded or deleted which of the tenant's scans, batches, reports, FHIR
    documents and images, oldest first: a FHIR R4 `searchset` Bundle of AuditEvent resources,
    with a `next` link while more remain. Reading the log is itself recorded."""
    since = _utc(since)
    events = list(await session.scalars(audit.events_query(
        tenant.id, since=since, after=after, limit=count)))
    keys = {k: (n, p) for k, n, p in
            (await session.execute(audit.key_names_query(e.key_id for e in events))).all()}
    next_url = None
    if len(events) == count:
        params = {"after": events[-1].id, "count": count}
        if since is not None:
            params["since"] = since.isoformat()
        next_url = f"{str(request.base_url).rstrip('/')}/v1/audit?{urlencode(params)}"
    bundle = await run_in_threadpool(audit.fhir_bundle, events, tenant, keys, next_url=next_url)
    trail.read("audit", "audit", events=len(events))
    return JSONResponse(bundle, media_type=audit.FHIR_MEDIA_TYPE)
