"""DICOM series: the series finding over its slices, and the explicit "series complete" call."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool

from api import series_intake
from api.audit import AuditTrailDep
from api.deps import CurrentTenant, SessionDep, UrlSigner
from shared.db.dicom_models import DicomInstance, DicomSeries
from shared.db.models import Scan, utcnow
from shared.db.session import async_write_session
from shared.schemas import ErrorResponse, ScanOut, scan_out

router = APIRouter(prefix="/v1/series", tags=["series"])


class SliceOut(BaseModel):
    scan_id: str
    instance_number: int | None
    state: str
    label: str | None = None
    confidence: float | None = None
    tumour_probability: float | None = Field(default=None, description="1 - P(notumor)")
    error_code: str | None = None


class SeriesFindingOut(BaseModel):
    label: str
    probability: float = Field(description="P(label) on the key slice (1 - P(tumour) for notumor)")
    tumour_probability: float = Field(description="max over slices of 1 - P(notumor)")
    method: str
    details: dict[str, Any]


class DeliveryOut(BaseModel):
    state: str | None = Field(description="not_configured, pending, delivered or failed")
    error: str | None = None
    delivered_at: datetime | None = None
    objects: dict[str, Any] | None = Field(default=None, description=(
        "SOP Instance UIDs of the SR, the Secondary Capture and the Encapsulated PDF sent"))


class SeriesOut(BaseModel):
    id: str
    state: str = Field(description="receiving, processing, succeeded or failed")
    source: str
    study_ref: str | None
    patient_ref: str | None
    created_at: datetime
    last_instance_at: datetime
    completed_at: datetime | None
    finished_at: datetime | None
    finding: SeriesFindingOut | None = None
    key_slice: ScanOut | None = None
    slices: list[SliceOut]
    error: dict[str, str] | None = None
    delivery: DeliveryOut


async def _series_or_404(series_id: str, session: SessionDep,
                         tenant: CurrentTenant) -> DicomSeries:
    series = await session.scalar(select(DicomSeries).where(
        DicomSeries.id == series_id, DicomSeries.tenant_id == tenant.id))
    if series is None:
        raise HTTPException(404, detail={"code": "not_found", "message": f"No series {series_id}."})
    return series


SeriesDep = Annotated[DicomSeries, Depends(_series_or_404)]


class SeriesSummary(BaseModel):
    id: str
    state: str
    source: str
    study_ref: str | None
    created_at: datetime
    label: str | None = None
    probability: float | None = None


@router.get("", response_model=list[SeriesSummary], summary="The tenant's series, newest first")
async def list_series(session: SessionDep, tenant: CurrentTenant, trail: AuditTrailDep,
                      limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[SeriesSummary]:
    """The latest series received by STOW-RS or C-STORE."""
    rows = await session.scalars(select(DicomSeries).where(DicomSeries.tenant_id == tenant.id)
                                 .order_by(DicomSeries.created_at.desc()).limit(limit))
    found = [SeriesSummary(id=r.id, state=r.state, source=r.source, study_ref=r.study_ref,
                           created_at=r.created_at, label=r.label, probability=r.probability)
             for r in rows]
    trail.read("series_list", "series", series=[s.id for s in found])
    return found


@router.get("/{series_id}", response_model=SeriesOut, summary="One series",
            responses={404: {"model": ErrorResponse, "description": "No such series"}})
async def read_series(series: SeriesDep, session: SessionDep, sign_url: UrlSigner,
                      trail: AuditTrailDep) -> SeriesOut:
    """The series finding, its key slice (with heatmap links) and every slice beneath."""
    trail.read("series", f"series:{series.id}")
    rows = (await session.execute(
        select(DicomInstance.instance_number, Scan)
        .join(Scan, Scan.id == DicomInstance.scan_id)
        .where(DicomInstance.series_id == series.id)
        .order_by(DicomInstance.instance_number, Scan.id))).all()
    slices, key = [], None
    for number, scan in rows:
        probs = scan.probabilities or {}
        slices.append(SliceOut(
            scan_id=scan.id, instance_number=number, state=scan.state, label=scan.label,
            confidence=scan.confidence, error_code=scan.error_code,
            tumour_probability=1.0 - float(probs["notumor"]) if "notumor" in probs else None))
        if scan.id == series.key_scan_id:
            key = scan_out(scan, sign_url)
    finding = None
    if series.state == "succeeded" and series.label is not None:
        details = dict(series.finding or {})
        finding = SeriesFindingOut(label=series.label, probability=series.probability or 0.0,
                                   tumour_probability=series.tumour_probability or 0.0,
                                   method=details.pop("method", ""), details=details)
    error = ({"code": series.error_code, "message": series.error_message or ""}
             if series.error_code else None)
    return SeriesOut(
        id=series.id, state=series.state, source=series.source, study_ref=series.study_ref,
        patient_ref=series.patient_ref, created_at=series.created_at,
        last_instance_at=series.last_instance_at, completed_at=series.completed_at,
        finished_at=series.finished_at, finding=finding, key_slice=key, slices=slices,
        error=error, delivery=DeliveryOut(state=series.delivery_state,
                                          error=series.delivery_error,
                                          delivered_at=series.delivered_at,
                                          objects=series.delivered))


@router.post("/{series_id}/complete", status_code=202, response_model=SeriesOut,
             summary="Mark a series complete",
             responses={404: {"model": ErrorResponse, "description": "No such series"}})
async def complete_series(series: SeriesDep, session: SessionDep,
                          sign_url: UrlSigner, trail: AuditTrailDep) -> SeriesOut:
    """No more slices will come: the finding is made as soon as the slices are final,
    without waiting for the settle time."""
    series_id = series.id
    await session.close()
    async with async_write_session() as write:
        await write.execute(update(DicomSeries).where(
            DicomSeries.id == series_id, DicomSeries.completed_at.is_(None))
            .values(completed_at=utcnow()))
    await run_in_threadpool(series_intake.schedule_finalize, [series_id], 0)
    fresh = await session.get(DicomSeries, series_id, populate_existing=True)
    assert fresh is not None  # a series is never deleted while its tenant exists
    return await read_series(fresh, session, sign_url, trail)
