"""Reports of a scan or a batch: the PDF for people, FHIR R4 for hospital systems."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.audit import AuditTrailDep
from api.deps import BatchDep, ScanDep, SessionDep, StorageDep, UrlSigner
from shared.audit import shares_filenames_async
from shared.db.models import Scan, ScanUpload
from shared.db.queries import scans_of_batch
from shared.db.session import release
from shared.fhir import FHIR_MEDIA_TYPE, scan_to_fhir
from shared.reports.pdf import render_batch_report, render_scan_report
from shared.reports.preview import preview_png
from shared.reports.wording import read_model_card
from shared.schemas import ErrorResponse, batch_out, scan_out
from shared.states import JobState
from shared.storage import Storage

router = APIRouter(tags=["reports"])

_PDF = {"content": {"application/pdf": {}}, "description": "The PDF report"}
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such scan or batch"},
    409: {"model": ErrorResponse, "description": "Not finished yet"}}


def _pdf(data: bytes, name: str) -> Response:
    return Response(data, media_type="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


async def _original(session: SessionDep, storage: Storage, scan: Scan) -> bytes | None:
    """The worker's PNG rendition (DICOM: no re-decoding here), else the stored original
    (already de-identified), else the accepted upload's bytes. The session's connection is
    given back before storage is read: storage and rendering need no database."""
    await release(session)
    for ref in (scan.preview_ref, scan.image_ref):
        if ref:
            try:
                return await run_in_threadpool(storage.get, ref)
            except Exception:  # a report without the picture beats no report
                pass
    upload = await session.scalar(select(ScanUpload.data).where(ScanUpload.scan_id == scan.id))
    await release(session)
    return bytes(upload) if upload is not None else None


@router.get("/v1/scans/{scan_id}/report.pdf", response_class=Response, summary="PDF report",
            responses={200: _PDF, **_ERRORS})
async def scan_report(scan: ScanDep, session: SessionDep, storage: StorageDep,
                      sign_url: UrlSigner, trail: AuditTrailDep) -> Response:
    """Result, original and Grad-CAM overlay, probabilities, model and references as a PDF.
    The client's file name is in it only if the tenant opted in (`neuroscan privacy`)."""
    if not JobState(scan.state).is_final:
        raise HTTPException(409, detail={"code": "scan_not_finished",
                                         "message": f"The scan is {scan.state}; try again when it "
                                                    "has succeeded or failed."})
    with_name = await shares_filenames_async(session, scan.tenant_id)
    original = await _original(session, storage, scan)
    overlay = (await run_in_threadpool(storage.get, scan.overlay_ref)) if scan.overlay_ref else None
    out = scan_out(scan, sign_url)
    card = read_model_card(scan.model_name) if scan.model_name else read_model_card()
    pdf = await run_in_threadpool(_render_scan, out, original, scan.frame, overlay, card,
                                  with_name)
    trail.download("report_pdf", f"scan:{scan.id}")
    return _pdf(pdf, f"neuroscan-{scan.id}.pdf")


def _render_scan(out: Any, original: bytes | None, frame: int | None, overlay: bytes | None,
                 card: dict[str, Any] | None, with_name: bool) -> bytes:
    return render_scan_report(out, preview_png(original, frame), overlay, card,
                              include_filename=with_name)


@router.get("/v1/batches/{batch_id}/report.pdf", response_class=Response,
            summary="PDF batch summary", responses={200: _PDF, **_ERRORS})
async def batch_report(batch: BatchDep, session: SessionDep, sign_url: UrlSigner,
                       trail: AuditTrailDep) -> Response:
    """One row per scan: state, prediction, confidence band, references, error."""
    scans = list(await session.scalars(scans_of_batch(batch)))
    with_names = await shares_filenames_async(session, batch.tenant_id)
    await release(session)
    if any(not JobState(s.state).is_final for s in scans):
        raise HTTPException(409, detail={"code": "batch_not_finished",
                                         "message": "Some scans of the batch are still queued or "
                                                    "processing."})
    out = batch_out(batch, scans, sign_url)
    pdf = await run_in_threadpool(partial(render_batch_report, include_filenames=with_names),
                                  out, out.scans)
    trail.download("batch_report_pdf", f"batch:{batch.id}")
    return _pdf(pdf, f"neuroscan-batch-{batch.id}.pdf")


@router.get("/v1/scans/{scan_id}/fhir", summary="FHIR R4 DiagnosticReport",
            responses={200: {"content": {"application/fhir+json": {}}}, **_ERRORS})
async def scan_fhir(scan: ScanDep, request: Request, sign_url: UrlSigner,
                    trail: AuditTrailDep) -> JSONResponse:
    """The scan as a FHIR R4 DiagnosticReport with one Observation per class probability."""
    trail.read("fhir", f"scan:{scan.id}")
    doc = scan_to_fhir(scan_out(scan, sign_url), base_url=str(request.base_url))
    return JSONResponse(doc, media_type=FHIR_MEDIA_TYPE)
