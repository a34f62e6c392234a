"""DICOM instances from the network (STOW-RS, C-STORE) into the one intake, grouped by series.

Each instance goes through `api.intake.accept_upload` like an upload (checks,
de-identification); what series grouping needs is read from the de-identified header (the
remapped SeriesInstanceUID groups slices), and the original Study/Series/SOP UIDs are sealed
into re-identification records (`shared.reid`) before anything is written. The scans, their
series and instance rows are written in one transaction; then the scans are enqueued and the
series' finalisation is scheduled for after the settle time.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api import intake
from shared import errors, reid
from shared.db.dicom_models import DicomInstance, DicomSeries
from shared.db.models import new_id, utcnow
from shared.db.session import async_write_session
from shared.errors import InputError
from shared.queue import FINALIZE_SERIES
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Instance:
    """One accepted instance: the de-identified upload, where it belongs, what it was."""

    accepted: intake.AcceptedUpload
    series_uid: str  # remapped
    sop_uid: str  # remapped
    instance_number: int | None
    original: dict[str, str]  # study_uid, series_uid, sop_uid, sop_class_uid


@dataclass(frozen=True)
class Stored:
    series_id: str
    scan_id: str
    original_sop_uid: str
    sop_class_uid: str


def original_uids(data: bytes) -> dict[str, str]:
    """The four UIDs a STOW-RS answer and the re-identification record need (header only)."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        raise InputError(f"The DICOM file could not be read ({type(exc).__name__}).",
                         code=errors.UNDECODABLE) from exc
    return {"study_uid": str(ds.get("StudyInstanceUID", "") or ""),
            "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
            "sop_uid": str(ds.get("SOPInstanceUID", "") or ""),
            "sop_class_uid": str(ds.get("SOPClassUID", "") or "")}


def judge_instance(data: bytes, tenant_id: str, settings: Settings) -> Instance:
    """Accept one Part 10 instance (InputError if refused). Synchronous: CPU work."""
    import pydicom

    original = original_uids(data)
    if not (original["study_uid"] and original["series_uid"] and original["sop_uid"]):
        raise InputError("A DICOM instance needs Study, Series and SOP Instance UIDs.",
                         code="dicom_missing_uid", http_status=422)
    accepted = intake.accept_upload(data, filename=None, frame=None, tenant_id=tenant_id,
                                    settings=settings)
    if accepted.format != "dicom":
        raise InputError("Only DICOM instances are accepted here.", code="not_dicom",
                         http_status=415)
    ds = pydicom.dcmread(io.BytesIO(accepted.data), stop_before_pixels=True)
    number = ds.get("InstanceNumber")
    return Instance(accepted=accepted, series_uid=str(ds.SeriesInstanceUID),
                    sop_uid=str(ds.SOPInstanceUID),
                    instance_number=int(number) if number not in (None, "") else None,
                    original=original)


async def store_instances(instances: list[Instance], tenant_id: str, source: str,
                          settings: Settings, *, schedule: bool = True) -> list[Stored]:
    """Write the scans, series and instances in one transaction, then enqueue and schedule.

    A re-sent instance (same remapped SOP UID in the same series) is not stored twice: its
    existing scan is answered. Two requests creating the same series at once: the loser of the
    unique constraint tries again and finds the winner's row."""
    for attempt in range(3):
        try:
            stored, new_scans, series_ids = await _write(instances, tenant_id, source, settings)
            break
        except IntegrityError:
            if attempt == 2:
                raise
    if new_scans:
        await intake.enqueue(new_scans, settings)
    if schedule:  # the C-STORE receiver schedules once per association instead
        await run_in_threadpool(schedule_finalize, sorted(series_ids),
                                settings.dicom_series_settle_s)
    return stored


async def _write(instances: list[Instance], tenant_id: str, source: str,
                 settings: Settings) -> tuple[list[Stored], list[str], set[str]]:
    now = utcnow()
    stored: list[Stored] = []
    new_scans: list[str] = []
    series_ids: set[str] = set()
    async with async_write_session() as session:
        by_uid: dict[str, DicomSeries] = {}
        for inst in instances:
            series = by_uid.get(inst.series_uid) or await session.scalar(
                select(DicomSeries).where(DicomSeries.tenant_id == tenant_id,
                                          DicomSeries.series_uid == inst.series_uid))
            if series is None:
                series = DicomSeries(
                    id=new_id(), tenant_id=tenant_id, series_uid=inst.series_uid,
                    study_ref=inst.accepted.study_ref, patient_ref=inst.accepted.patient_ref,
                    source=source, created_at=now, last_instance_at=now, state="receiving",
                    reid=reid.seal(tenant_id, {"study_uid": inst.original["study_uid"],
                                               "series_uid": inst.original["series_uid"]},
                                   settings),
                    reid_expires_at=now + timedelta(seconds=settings.dicom_reid_retention_s))
                session.add(series)
                await session.flush()
            by_uid[inst.series_uid] = series
            series.last_instance_at = now
            series_ids.add(series.id)
            existing = await session.scalar(select(DicomInstance.scan_id).where(
                DicomInstance.series_id == series.id, DicomInstance.sop_uid == inst.sop_uid))
            if existing is None:
                scan = intake.add_scan(session, tenant_id, inst.accepted)
                await session.flush()  # the scan row first: the instance row refers to it
                session.add(DicomInstance(
                    scan_id=scan.id, series_id=series.id, sop_uid=inst.sop_uid,
                    instance_number=inst.instance_number,
                    reid=reid.seal(tenant_id, {"sop_uid": inst.original["sop_uid"],
                                               "sop_class_uid": inst.original["sop_class_uid"]},
                                   settings)))
                await session.flush()
                existing = scan.id
                new_scans.append(scan.id)
            stored.append(Stored(series_id=series.id, scan_id=existing,
                                 original_sop_uid=inst.original["sop_uid"],
                                 sop_class_uid=inst.original["sop_class_uid"]))
    return stored, new_scans, series_ids


def schedule_finalize(series_ids: list[str], countdown_s: float) -> None:
    """Ask a worker to finalise each series once it has settled (it checks, and re-schedules
    itself while instances keep arriving or slices are not final). Failure is logged: the
    series can still be completed by POST /v1/series/{id}/complete."""
    try:
        for series_id in series_ids:
            intake.producer().send_task(FINALIZE_SERIES, args=[series_id],
                                        countdown=countdown_s)
    except Exception:
        log.exception("could not schedule finalisation of %d series", len(series_ids))
