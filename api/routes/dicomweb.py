"""DICOMweb STOW-RS: `POST /dicomweb/studies` takes a PACS's instances the hospital's way.

`multipart/related; type="application/dicom"`, one Part 10 instance per part, authenticated
with the tenant's API key (`Authorization: Bearer`). Each instance goes through the same
checks, de-identification and queue as an upload (`api.series_intake`); slices are grouped
into series. The answer is PS3.18's Store Instances Response (`application/dicom+json`):
ReferencedSOPSequence for what was stored, FailedSOPSequence with a FailureReason for what
was not, under the sender's own (original) UIDs. NeuroScan's own identifiers ride along in
private attributes of creator "NEUROSCAN" (0009,0010): per item the series id (0009,1010)
and scan id (0009,1011), and for failures our error code (0009,1001) and message (0009,1002).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import series_intake
from api.deps import CurrentTenant, SettingsDep
from api.errors import error_response
from shared import multipart_related
from shared.errors import InputError
from shared.schemas import ErrorResponse

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"
_PRIVATE_CREATOR = {"00090010": {"vr": "LO", "Value": ["NEUROSCAN"]}}
# PS3.4 Annex GG / PS3.18 failure reasons by our error code.
_OUT_OF_RESOURCES, _SOP_CLASS_NOT_SUPPORTED = 0xA700, 0x0122
_DOES_NOT_MATCH, _CANNOT_UNDERSTAND, _PROCESSING_FAILURE = 0xA900, 0xC000, 0x0110
_REASONS = {"file_too_large": _OUT_OF_RESOURCES,
            "dicom_modality_not_allowed": _SOP_CLASS_NOT_SUPPORTED,
            "dicom_encapsulated_document": _SOP_CLASS_NOT_SUPPORTED,
            "not_dicom": _SOP_CLASS_NOT_SUPPORTED,
            "dicom_no_pixel_data": _DOES_NOT_MATCH, "dicom_missing_uid": _DOES_NOT_MATCH,
            "study_uid_mismatch": _DOES_NOT_MATCH}


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _item(sop_class: str, sop_uid: str, **private: str) -> dict[str, Any]:
    item: dict[str, Any] = {"00081150": _ui(sop_class), "00081155": _ui(sop_uid)}
    tags = {"code": ("00091001", "LO"), "message": ("00091002", "LT"),
            "series_id": ("00091010", "LO"), "scan_id": ("00091011", "LO")}
    if private:
        item.update(_PRIVATE_CREATOR)
        for key, value in private.items():
            tag, vr = tags[key]
            item[tag] = {"vr": vr, "Value": [value]}
    return item


_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed multipart body"},
    415: {"model": ErrorResponse, "description": "Not multipart/related DICOM"}}


@router.post("/studies", summary="STOW-RS: store instances",
             response_class=JSONResponse,
             responses={200: {"content": {DICOM_JSON: {}}, "description": "All stored"},
                        202: {"description": "Some stored, some failed"},
                        409: {"description": "None stored"}, **_BODY_ERRORS})
async def store_instances(request: Request, tenant: CurrentTenant,
                          settings: SettingsDep) -> JSONResponse:
    """Store Part 10 instances (multipart/related; type="application/dicom")."""
    return await _store(request, tenant.id, settings, study_uid=None)


@router.post("/studies/{study_uid}", summary="STOW-RS: store instances of one study",
             response_class=JSONResponse, responses=_BODY_ERRORS)
async def store_study_instances(study_uid: str, request: Request, tenant: CurrentTenant,
                                settings: SettingsDep) -> JSONResponse:
    """As `POST /dicomweb/studies`; instances of another study fail (0xA900)."""
    return await _store(request, tenant.id, settings, study_uid=study_uid)


async def _store(request: Request, tenant_id: str, settings: Any,
                 study_uid: str | None) -> JSONResponse:
    ctype, params = multipart_related.parse_content_type(request.headers.get("content-type", ""))
    part_type = params.get("type", "application/dicom").lower()
    if ctype != "multipart/related" or part_type != "application/dicom" or "boundary" not in params:
        return error_response(415, "unsupported_media_type",
                              'Send multipart/related; type="application/dicom" with a boundary '
                              "(Part 10 instances; the JSON/bulk-data form is not supported).")
    try:
        parts = await multipart_related.parse(request.stream(), params["boundary"],
                                              settings.max_upload_bytes)
    except InputError:
        raise
    except Exception as exc:  # the boundary scanner's own errors: a malformed body
        return error_response(400, "bad_request", f"Malformed multipart body ({type(exc).__name__}).")
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    judged: list[series_intake.Instance] = []
    for part in parts:
        data = part.read()
        part.file.close()
        uids = {"sop_uid": "", "sop_class_uid": ""}
        try:
            if part.content_type != "application/dicom":
                raise InputError(f"A part of type {part.content_type!r}; only application/dicom.",
                                 code="not_dicom", http_status=415)
            uids = await run_in_threadpool(series_intake.original_uids, data)
            if study_uid and uids["study_uid"] != study_uid:
                raise InputError("The instance belongs to another study than the URL names.",
                                 code="study_uid_mismatch")
            judged.append(await run_in_threadpool(series_intake.judge_instance, data, tenant_id,
                                                  settings))
        except InputError as exc:
            reason = _REASONS.get(exc.code, _CANNOT_UNDERSTAND)
            item = _item(uids["sop_class_uid"], uids["sop_uid"], code=exc.code,
                         message=exc.message)
            item["00081197"] = {"vr": "US", "Value": [reason]}
            failed.append(item)
    if judged:
        stored = await series_intake.store_instances(judged, tenant_id, "stow-rs", settings)
        referenced = [_item(s.sop_class_uid, s.original_sop_uid, series_id=s.series_id,
                            scan_id=s.scan_id) for s in stored]
    body: dict[str, Any] = {}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else 202 if referenced else 409
    series_ids = sorted({s["00091010"]["Value"][0] for s in referenced})
    log.info("STOW-RS: %d stored, %d failed, series %s", len(referenced), len(failed), series_ids)
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON,
                        headers={"X-NeuroScan-Series": ",".join(series_ids)})
