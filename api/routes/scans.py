"""Single scans: upload one image, read its result, list the tenant's history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, UploadFile, status
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api import idempotency, intake
from api.audit import AuditTrailDep
from api.deps import CurrentTenant, ScanDep, SessionDep, SettingsDep, UrlSigner
from shared.db.models import Scan
from shared.db.session import async_write_session
from shared.errors import InputError
from shared.labels import CLASSES
from shared.schemas import ErrorResponse, ScanAccepted, ScanOut, ScanPage, scan_links, scan_out
from shared.states import JobState

router = APIRouter(prefix="/v1/scans", tags=["scans"])

_UPLOAD_ERRORS = {
    status.HTTP_413_CONTENT_TOO_LARGE: {"model": ErrorResponse, "description": "File too large"},
    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE: {"model": ErrorResponse,
                                             "description": "Not a PNG, JPEG or DICOM file"},
    status.HTTP_422_UNPROCESSABLE_CONTENT: {"model": ErrorResponse,
                                            "description": "Undecodable or bad dimensions"},
    status.HTTP_401_UNAUTHORIZED: {"model": ErrorResponse, "description": "No or bad API key"},
    status.HTTP_400_BAD_REQUEST: {"model": ErrorResponse, "description": "Malformed Idempotency-Key"},
}


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=ScanAccepted,
             responses=_UPLOAD_ERRORS, summary="Submit one scan")
async def create_scan(
    tenant: CurrentTenant,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="A PNG, JPEG or DICOM brain MRI slice")],
    callback_url: Annotated[str | None, Form(description="Webhook for the result")] = None,
    frame: Annotated[int | None, Form(ge=0, description="Frame of a multi-frame DICOM")] = None,
    idempotency_key: Annotated[str | None, Header(alias=idempotency.HEADER,
                                                  description=idempotency.DOC)] = None,
) -> ScanAccepted | JSONResponse:
    """Check and store the image, queue it for analysis (the interactive queue: ahead of
    batches); poll `links.self` or follow `links.events` for the result. The body's size and
    the key were checked before it was read (`api.guard`); the one connection this takes is
    the write's, after the checks."""
    key = idempotency.check_key(idempotency_key)
    data = await intake.read_limited(file, settings.max_upload_bytes)
    print_ = idempotency.fingerprint("scans", [(file.filename, data)],
                                     callback_url=callback_url, frame=frame)
    if key and (answer := await idempotency.replay(tenant.id, key, "scans", print_)):
        return answer
    # The SSRF check resolves the host name: a blocking call, kept off the event loop.
    callback = await run_in_threadpool(intake.check_callback_url, callback_url)
    accepted = await run_in_threadpool(intake.accept_upload, data, filename=file.filename,
                                       frame=frame, tenant_id=tenant.id, settings=settings)
    try:
        async with async_write_session() as session:
            scan = intake.add_scan(session, tenant.id, accepted, callback_url=callback)
            body = ScanAccepted(id=scan.id, state=JobState.QUEUED,
                                links=scan_links(scan.id))
            if key:
                await idempotency.remember(session, tenant.id, key, "scans", print_,
                                           status.HTTP_202_ACCEPTED, body, settings)
    except IntegrityError:
        # A concurrent request with this key committed first: its scan is the one.
        if key and (answer := await idempotency.replay(tenant.id, key, "scans", print_)):
            return answer
        raise
    await intake.enqueue([scan.id], settings, bulk=False)
    return body


@router.get("/{scan_id}", response_model=ScanOut, summary="One scan",
            responses={404: {"model": ErrorResponse, "description": "No such scan"}})
async def read_scan(scan: ScanDep, sign_url: UrlSigner, trail: AuditTrailDep) -> ScanOut:
    """State, prediction with the four probabilities, signed image/heatmap links, model, timings."""
    trail.read("result", f"scan:{scan.id}")
    return scan_out(scan, sign_url)


@router.get("", response_model=ScanPage, summary="Scan history")
async def list_scans(
    session: SessionDep,
    tenant: CurrentTenant,
    sign_url: UrlSigner,
    trail: AuditTrailDep,
    state: Annotated[JobState | None, Query(description="Only scans in this state")] = None,
    label: Annotated[str | None, Query(description=f"Only this label: {', '.join(CLASSES)}")] = None,
    batch_id: Annotated[str | None, Query(description="Only scans of this batch")] = None,
    # Bounded so that the offset fits the database's 64-bit integers (a 422, never a 500).
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ScanPage:
    """The tenant's scans, newest first."""
    if label is not None and label not in CLASSES:
        raise InputError(f"Unknown label {label!r}; use one of {', '.join(CLASSES)}.",
                         code="validation_error")
    query = select(Scan).where(Scan.tenant_id == tenant.id)
    if state is not None:
        query = query.where(Scan.state == state.value)
    if label is not None:
        query = query.where(Scan.label == label)
    if batch_id is not None:
        query = query.where(Scan.batch_id == batch_id)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(Scan.created_at.desc(), Scan.id)
                                 .offset((page - 1) * page_size).limit(page_size))
    items = [scan_out(r, sign_url) for r in rows]
    trail.read("history", "scans", scans=[item.id for item in items])
    return ScanPage(items=items, page=page, page_size=page_size, total=int(total or 0))
