"""Series: the finding once a series is complete and its slices final; results to the PACS.

`finalize` is idempotent (a conditional UPDATE decides once); `deliver` builds the DICOM
objects (`worker.dicom_results`) and sends them by STOW-RS to the tenant's destination,
under the original study, then purges expired re-identification records.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from shared import multipart_related, reid
from shared.db.dicom_models import DicomInstance, DicomSeries
from shared.db.models import Scan, Tenant, utcnow
from shared.db.session import sync_session
from shared.reports.preview import preview_png
from shared.reports.series_pdf import render_series_report
from shared.series import SliceResult, combine
from shared.settings import DicomTenant, Settings, get_settings
from shared.storage import get_storage

log = logging.getLogger(__name__)


class _NoStudyUrls(logging.Filter):
    """httpx logs every request's URL at INFO; ours to the PACS carry the original Study
    Instance UID (QIDO-RS query), which must never reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "StudyInstanceUID=" not in record.getMessage()


logging.getLogger("httpx").addFilter(_NoStudyUrls())

_FINAL = ("succeeded", "failed")
_POLL_S = 2.0


class DeliveryError(Exception):
    """Worth another try: the destination was unreachable or answered 5xx."""


def tenant_config(tenant_name: str, settings: Settings) -> DicomTenant | None:
    return next((t for t in settings.dicom_tenants if t.tenant == tenant_name), None)


def finalize(series_id: str, now: datetime | None = None,
             settings: Settings | None = None) -> float | None:
    """Make the series finding if the series is complete and its slices final.

    Returns seconds to wait before asking again, or None when nothing is left to do. A series
    is complete at POST /v1/series/{id}/complete or DICOM_SERIES_SETTLE_S after its last
    instance."""
    settings = settings or get_settings()
    now = now or utcnow()
    with sync_session() as session:
        series = session.get(DicomSeries, series_id)
        if series is None or series.state in _FINAL:
            return None
        if series.completed_at is None:
            settled = series.last_instance_at + timedelta(seconds=settings.dicom_series_settle_s)
            if now < settled:
                return max((settled - now).total_seconds(), 0.1)
        rows = session.execute(
            select(DicomInstance.instance_number, Scan.id, Scan.state,
                   Scan.probabilities, Scan.error_code)
            .join(Scan, Scan.id == DicomInstance.scan_id)
            .where(DicomInstance.series_id == series_id)).all()
        if any(r[2] not in _FINAL for r in rows):
            session.execute(update(DicomSeries).where(
                DicomSeries.id == series_id, DicomSeries.state == "receiving")
                .values(state="processing"))
            return _POLL_S
        finding = combine([SliceResult(scan_id=r[1], instance_number=r[0], state=r[2],
                                       probabilities=r[3], error_code=r[4]) for r in rows])
        tenant_name = session.scalar(select(Tenant.name).where(Tenant.id == series.tenant_id))
        config = tenant_config(tenant_name or "", settings)
        delivery = ("pending" if config and config.destination_url and finding.state == "succeeded"
                    else "not_configured")
        won = session.execute(update(DicomSeries).where(
            DicomSeries.id == series_id, DicomSeries.state.not_in(_FINAL)).values(
            state=finding.state, label=finding.label, probability=finding.probability,
            tumour_probability=finding.tumour_probability, key_scan_id=finding.key_scan_id,
            finding=finding.details, error_code=finding.error_code,
            error_message=finding.error_message, finished_at=now,
            completed_at=series.completed_at or now, delivery_state=delivery))
    if won.rowcount != 1:  # type: ignore[attr-defined]
        return None
    log.info("series %s: %s (%d slices)", series_id, finding.label or finding.error_code,
             finding.details.get("slices", 0))
    return -1.0 if delivery == "pending" else None  # -1: deliver now


def deliver(series_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """Send the SR, the overlay and the PDF to the tenant's destination (STOW-RS), under the
    original study; returns the new SOP Instance UIDs. DeliveryError when worth retrying."""
    from worker import dicom_results as dr

    settings = settings or get_settings()
    storage = get_storage(settings)
    with sync_session() as session:
        series = session.get(DicomSeries, series_id)
        if series is None or series.delivery_state != "pending":
            return {}
        tenant_name = session.scalar(select(Tenant.name).where(Tenant.id == series.tenant_id))
        config = tenant_config(tenant_name or "", settings)
        if series.reid is None:
            _mark(series_id, "failed", "The re-identification record has expired.")
            return {}
        original = reid.unseal(series.tenant_id, series.reid, settings)
        rows = session.execute(
            select(DicomInstance, Scan)
            .join(Scan, Scan.id == DicomInstance.scan_id)
            .where(DicomInstance.series_id == series_id)
            .order_by(DicomInstance.instance_number, Scan.id)).all()
        slices, key_src, key_scan, table = [], None, None, []
        for inst, scan in rows:
            if inst.reid is None:
                continue
            uids = reid.unseal(series.tenant_id, inst.reid, settings)
            src = dr.SourceSlice(uids["sop_uid"], uids["sop_class_uid"], inst.instance_number)
            slices.append(src)
            probs = scan.probabilities or {}
            table.append({"instance_number": inst.instance_number, "state": scan.state,
                          "label": scan.label,
                          "tumour_probability": 1 - float(probs["notumor"]) if probs else None})
            if scan.id == series.key_scan_id:
                key_src, key_scan = src, scan
        session.expunge_all()
    if config is None or not config.destination_url or key_src is None or key_scan is None:
        _mark(series_id, "failed", "No destination or no key slice to report.")
        return {}
    overlay = storage.get(key_scan.overlay_ref) if key_scan.overlay_ref else None
    key_png = (storage.get(key_scan.preview_ref) if key_scan.preview_ref
               else preview_png(storage.get(key_scan.image_ref)) if key_scan.image_ref else None)
    model = f"{key_scan.model_name} {key_scan.model_version} (sha256 {key_scan.model_sha256})"
    pdf = render_series_report(series, table, key_png, overlay, model)
    result = dr.SeriesResult(
        study_uid=original["study_uid"], series_uid=original["series_uid"],
        label=series.label or "notumor", probability=series.probability or 0.0,
        tumour_probability=series.tumour_probability or 0.0,
        key_probabilities=(series.finding or {}).get("key_probabilities", {}),
        slices_scored=(series.finding or {}).get("scored", 0),
        model_name=key_scan.model_name or "", model_version=key_scan.model_version or "",
        model_sha256=key_scan.model_sha256 or "", key=key_src, slices=slices)
    base = config.destination_url.rstrip("/")
    headers = dict(config.destination_headers)
    with httpx.Client(timeout=60.0, headers=headers) as client:
        patient_study = _patient_study(client, base, result.study_uid)
        objects = [dr.build_sr(patient_study, result)]
        if overlay:
            objects.append(dr.build_overlay(patient_study, result, overlay))
        objects.append(dr.build_pdf(patient_study, result, pdf))
        sent = {kind: str(ds.SOPInstanceUID) for kind, ds in zip(
            ("sr", "overlay", "pdf") if overlay else ("sr", "pdf"), objects, strict=True)}
        boundary = "neuroscan-" + series_id
        body = multipart_related.encode(
            (("application/dicom", dr.to_part10(ds)) for ds in objects), boundary)
        try:
            # To /studies, not /studies/{uid}: the PACS files each object by its own
            # StudyInstanceUID, and the original UID stays out of request logs.
            answer = client.post(f"{base}/studies", content=body, headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json"})
        except httpx.TransportError as exc:
            raise DeliveryError(f"destination unreachable: {type(exc).__name__}") from exc
    if answer.status_code >= 500 or answer.status_code in (408, 429):
        raise DeliveryError(f"destination answered {answer.status_code}")
    if answer.status_code not in (200, 202):
        _mark(series_id, "failed", f"The destination answered {answer.status_code}.")
        return {}
    _mark(series_id, "delivered", None, sent)
    purge_expired(settings)
    return sent


def _patient_study(client: httpx.Client, base: str, study_uid: str) -> Any:
    """The study's patient/study attributes from the PACS (QIDO-RS), in memory only; empty
    (type 2 attributes present but empty) when the PACS does not know the study."""
    from pydicom.dataset import Dataset

    from worker import dicom_results as dr

    try:
        answer = client.get(f"{base}/studies", params={"StudyInstanceUID": study_uid},
                            headers={"Accept": "application/dicom+json"})
    except httpx.TransportError as exc:
        raise DeliveryError(f"destination unreachable: {type(exc).__name__}") from exc
    if answer.status_code >= 500:
        raise DeliveryError(f"destination answered {answer.status_code} to QIDO-RS")
    found = answer.json() if answer.status_code == 200 and answer.content else []
    if not found:
        log.warning("the destination does not know the original study; sending without "
                    "patient attributes")
        return Dataset()
    return dr.patient_study_from_json(found[0])


def _mark(series_id: str, state: str, error: str | None,
          sent: dict[str, Any] | None = None) -> None:
    with sync_session() as session:
        session.execute(update(DicomSeries).where(DicomSeries.id == series_id).values(
            delivery_state=state, delivery_error=error, delivered=sent,
            delivered_at=utcnow() if state == "delivered" else None))


def purge_expired(settings: Settings | None = None, now: datetime | None = None) -> int:
    """Delete re-identification records older than DICOM_REID_RETENTION_S; returns how many
    series lost theirs."""
    now = now or utcnow()
    with sync_session() as session:
        expired = list(session.scalars(select(DicomSeries.id).where(
            DicomSeries.reid.is_not(None), DicomSeries.reid_expires_at <= now)))
        if expired:
            session.execute(update(DicomSeries).where(DicomSeries.id.in_(expired))
                            .values(reid=None))
            session.execute(update(DicomInstance).where(DicomInstance.series_id.in_(expired))
                            .values(reid=None))
    return len(expired)
