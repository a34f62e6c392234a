"""A tenant's own export: `GET /v1/export` streams a ZIP of every scan, batch and series.

The ZIP holds what `neuroscan export` writes to a folder (`shared/export.py`): the same layout
and the same manifest with every file's SHA-256, so `neuroscan import --from FILE.zip` restores
it. It is produced one scan at a time while it is sent (memory holds one scan's files), in a
thread; the request is recorded in `audit_events` (action `export`, the key that asked, the
request id, the number of scans) before the first byte goes out. A failure half-way (storage
unreachable) cuts the stream short: the archive then lacks its central directory and manifest,
so no client can mistake it for a whole export.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select

from api.deps import CurrentPrincipal, SessionDep, SettingsDep, StorageDep
from api.routes.deletion import request_id_of
from shared import export as tenant_export
from shared import lifecycle
from shared.db.models import Scan, utcnow
from shared.db.session import async_write_session, release

router = APIRouter(tags=["export"])


@router.get("/v1/export", response_class=StreamingResponse, summary="Export the tenant's data",
            responses={200: {"content": {"application/zip": {}},
                             "description": "A ZIP: manifest.json, scans/<id>/…, series/<id>/…"}})
async def export_zip(principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep,
                     storage: StorageDep, request: Request) -> StreamingResponse:
    """Every scan of the caller's tenant (result JSON, FHIR, PDF report, original and
    Grad-CAM images), its batches and DICOM series findings, with `manifest.json`."""
    tenant = principal.tenant
    scans = await session.scalar(select(func.count()).select_from(Scan).where(
        Scan.tenant_id == tenant.id))
    await release(session)
    async with async_write_session() as write:
        write.add(lifecycle.audit(tenant.id, "export", f"tenant:{tenant.id}",
                                  key_id=principal.user.id, request_id=request_id_of(request),
                                  detail={"scans": scans, "via": "api"}))
    name = f"neuroscan-export-{utcnow():%Y%m%dT%H%M%SZ}.zip"
    return StreamingResponse(
        tenant_export.iter_export_zip(tenant.id, settings, storage),
        media_type="application/zip",
        # identity: the archive's parts are compressed already; the GZip middleware leaves
        # a response that names its encoding alone.
        headers={"Content-Disposition": f'attachment; filename="{name}"',
                 "Content-Encoding": "identity"})
