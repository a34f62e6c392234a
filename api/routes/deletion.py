"""Deletion on request: a scan or a whole batch, its bytes in storage, its rows and events,
and a DICOM series finding once its last slice is deleted.

Bytes first, rows second (shared/lifecycle.py): if storage fails the answer is 503 and nothing
was forgotten, so the same request can be sent again. The storage names are removed once more
after the rows are gone, for a worker that stored a result in between; a worker finishing
later finds no row, writes nothing and removes what it stored (`lifecycle.settle_results`).
Every deletion is recorded in `audit_events` with the key that asked and the request id.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.deps import BatchDep, CurrentPrincipal, ScanDep, SessionDep, StorageDep
from shared import lifecycle
from shared.db.models import Scan
from shared.db.session import async_write_session, release
from shared.schemas import ErrorResponse
from shared.storage import Storage, StorageError

log = logging.getLogger(__name__)
router = APIRouter(tags=["deletion"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such scan or batch"},
    503: {"model": ErrorResponse, "description": "Storage unreachable; nothing was deleted"}}


def request_id_of(request: Request) -> str | None:
    """The client's X-Request-ID, as the audit log keeps it (64 characters at most)."""
    return (request.headers.get("x-request-id") or "")[:64] or None


async def _remove(storage: Storage, assets: list[lifecycle.Asset], *, strict: bool) -> None:
    try:
        await run_in_threadpool(lifecycle.remove_assets, storage, assets)
    except StorageError as exc:
        if strict:
            raise HTTPException(503, detail={"code": "storage_unavailable", "message":
                                             "Storage did not answer; nothing was deleted. "
                                             "Try again."}) from exc
        log.warning("second removal after delete failed: %s", exc)


async def _delete(principal: CurrentPrincipal, storage: Storage, request: Request,
                  scans: list[tuple[str, str]], target: str, batch_id: str | None) -> Response:
    assets = [a for scan_id, fmt in scans for a in lifecycle.scan_assets(scan_id, fmt)]
    await _remove(storage, assets, strict=True)
    ids = [scan_id for scan_id, _ in scans]
    async with async_write_session() as session:
        series_ids = list(await session.scalars(lifecycle.series_of(ids)))
        for statement in lifecycle.delete_scan_rows(ids, series_ids):
            await session.execute(statement)
        if batch_id is not None:
            for statement in lifecycle.delete_batch_rows(batch_id):
                await session.execute(statement)
        session.add(lifecycle.audit(principal.tenant.id, "delete", target,
                                    key_id=principal.user.id, request_id=request_id_of(request),
                                    detail={"scans": ids, "series": series_ids}))
    await _remove(storage, assets, strict=False)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/v1/scans/{scan_id}", status_code=204, response_class=Response,
               responses=_RESPONSES, summary="Delete a scan")
async def delete_scan(scan: ScanDep, session: SessionDep, principal: CurrentPrincipal,
                      storage: StorageDep, request: Request) -> Response:
    """Remove the scan's images from storage, its result, events and upload; then it is a 404
    and its signed links stop working. Safe while a worker is processing it."""
    scans = [(scan.id, scan.format)]
    await release(session)
    return await _delete(principal, storage, request, scans, f"scan:{scan.id}", None)


@router.delete("/v1/batches/{batch_id}", status_code=204, response_class=Response,
               responses=_RESPONSES, summary="Delete a batch and its scans")
async def delete_batch(batch: BatchDep, session: SessionDep, principal: CurrentPrincipal,
                       storage: StorageDep, request: Request) -> Response:
    """Remove every scan of the batch as `DELETE /v1/scans/{id}` does, then the batch."""
    scans = [(scan_id, fmt) for scan_id, fmt in (await session.execute(
        select(Scan.id, Scan.format).where(
            Scan.batch_id == batch.id, Scan.tenant_id == batch.tenant_id))).all()]
    await release(session)
    return await _delete(principal, storage, request, scans, f"batch:{batch.id}", batch.id)
