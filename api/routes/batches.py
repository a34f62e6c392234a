"""Batches: many files in one request, each judged on its own; progress per batch."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, UploadFile, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api import idempotency, intake
from api.audit import AuditTrailDep
from api.deps import BatchDep, CurrentTenant, SessionDep, SettingsDep, UrlSigner
from api.errors import error_response
from shared.db.queries import scans_of_batch
from shared.db.session import async_write_session
from shared.errors import InputError
from shared.schemas import (
    BatchAccepted,
    BatchOut,
    ErrorBody,
    ErrorResponse,
    RejectedFile,
    batch_links,
    batch_out,
)
from shared.states import JobState

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=BatchAccepted,
             summary="Submit many scans",
             responses={422: {"model": ErrorResponse, "description": "No file was acceptable"},
                        400: {"model": ErrorResponse, "description": "Malformed Idempotency-Key"}})
async def create_batch(
    tenant: CurrentTenant,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="PNG, JPEG or DICOM files")],
    callback_url: Annotated[str | None, Form(description="Webhook when the batch is done")] = None,
    idempotency_key: Annotated[str | None, Header(alias=idempotency.HEADER,
                                                  description=idempotency.DOC)] = None,
) -> BatchAccepted | JSONResponse:
    """Accept the good files and report the bad ones per file; the scans go to the bulk
    queue (single scans overtake them). Files are judged one at a time from the request's
    spooled temporary files, with no database connection held; the good ones are then
    written in one short transaction, so hundreds fit in one request."""
    if len(files) > settings.max_batch_files:
        raise InputError(f"{len(files)} files; a batch takes at most {settings.max_batch_files}.",
                         code="too_many_files", http_status=413)
    key = idempotency.check_key(idempotency_key)
    # The SSRF check resolves the host name: a blocking call, kept off the event loop.
    callback = await run_in_threadpool(intake.check_callback_url, callback_url)
    rejected: list[RejectedFile] = []
    # With a key, what the request asks (api/idempotency.py) is taken in the same pass that
    # judges the files, so each file is read once; an oversized one counts by its name alone
    # (it is refused, never stored). A retry is answered before anything is written.
    asked: list[tuple[str | None, bytes | str]] = []
    with intake.Staging() as staged:
        for upload in files:
            try:
                await upload.seek(0)
                try:
                    data = await intake.read_limited(upload, settings.max_upload_bytes)
                except InputError:
                    if key:
                        asked.append((upload.filename, "too-large"))
                    raise
                if key:
                    asked.append((upload.filename, hashlib.sha256(data).hexdigest()))
                members = await run_in_threadpool(  # a ZIP counts as its files
                    intake.batch_members, data, upload.filename, settings)
            except InputError as exc:
                rejected.append(RejectedFile(filename=upload.filename,
                                             error=ErrorBody(**exc.as_dict())))
                continue
            finally:
                await upload.close()  # frees the spooled temporary file now, not at the end
            for member in members:
                name = member.name or None
                if member.error is not None:
                    rejected.append(RejectedFile(filename=name,
                                                 error=ErrorBody(**member.error.as_dict())))
                    continue
                try:
                    accepted = await run_in_threadpool(
                        intake.accept_upload, member.data, filename=name, frame=None,
                        tenant_id=tenant.id, settings=settings)
                except InputError as exc:
                    rejected.append(RejectedFile(filename=name, error=ErrorBody(**exc.as_dict())))
                    continue
                staged.add(accepted)  # to disk: memory stays one file deep
        print_ = (idempotency.fingerprint("batches", asked, callback_url=callback_url)
                  if key else None)
        if key and print_ and (answer := await idempotency.replay(tenant.id, key, "batches",
                                                                  print_)):
            return answer
        if not len(staged):
            return error_response(
                422, "no_acceptable_files", f"None of the {len(files)} files could be accepted.",
                rejected=[r.model_dump() for r in rejected])
        scan_ids: list[str] = []
        try:
            async with async_write_session() as session:
                batch = intake.new_batch(session, tenant.id, callback)
                batch.total = len(staged)
                for accepted in staged:
                    scan = intake.add_scan(session, tenant.id, accepted, batch_id=batch.id,
                                           callback_url=None)
                    scan_ids.append(scan.id)
                    # Write this file now and let go of its bytes.
                    await session.flush()
                    session.expunge_all()
                body = BatchAccepted(id=batch.id, state=JobState.QUEUED,
                                     scan_ids=scan_ids, rejected=rejected,
                                     links=batch_links(batch.id))
                if key and print_:
                    await idempotency.remember(session, tenant.id, key, "batches", print_,
                                               status.HTTP_202_ACCEPTED, body, settings)
        except IntegrityError:
            # A concurrent request with this key committed first: its batch is the one.
            if key and print_ and (answer := await idempotency.replay(tenant.id, key,
                                                                      "batches", print_)):
                return answer
            raise
    await intake.enqueue(scan_ids, settings, bulk=True)
    return body


@router.get("/{batch_id}", response_model=BatchOut, summary="One batch",
            responses={404: {"model": ErrorResponse, "description": "No such batch"}})
async def read_batch(batch: BatchDep, session: SessionDep, sign_url: UrlSigner,
                     trail: AuditTrailDep) -> BatchOut:
    """Counts per state, whether it is done, and every scan."""
    trail.read("batch", f"batch:{batch.id}")
    scans = list(await session.scalars(scans_of_batch(batch)))
    return batch_out(batch, scans, sign_url)
