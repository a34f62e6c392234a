"""The data lifecycle: what a scan leaves where, deleting it, and retention's purge.

A scan's bytes live in storage under deterministic names (the scan id plus a suffix, as the
worker writes them), so they can be removed whether or not the row still names them; its rows
are the scan, its events, its upload blob (until the worker stored the original), webhook
deliveries and DICOM instance records, and the DICOM series left without a slice (the series
finding goes with its last slice, by deletion or by retention). Bytes go first, rows second: if storage fails, the rows
still say what to remove and the next attempt does it again (removing nothing is no error).

Retention (`Retention`, per tenant, defaults in the settings) is applied by `purge_once`,
which the reconciler thread runs every PURGE_INTERVAL_S (`worker/reconciler.py`) and
`neuroscan purge` runs by hand; each pass takes at most PURGE_BATCH_SIZE scans per kind and
records what it removed in `audit_events`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Delete, Select, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from shared.db.dicom_models import DicomInstance, DicomSeries
from shared.db.lifecycle_models import AuditEvent, TenantRetention
from shared.db.models import Batch, Scan, ScanEvent, ScanUpload, Tenant, utcnow
from shared.db.session import sync_session
from shared.db.webhook_models import WebhookDelivery
from shared.settings import Settings, get_settings
from shared.states import JobState
from shared.storage import Folder, Storage, get_storage

log = logging.getLogger(__name__)

# The names the worker stores a scan's assets under (worker/pipeline.py, `_store`).
_ORIGINAL_EXTENSIONS = {"png": "png", "jpeg": "jpg", "dicom": "dcm"}
_DERIVED_SUFFIXES = ("preview", "heatmap", "overlay")
_FINAL = (JobState.SUCCEEDED.value, JobState.FAILED.value)
KINDS = ("results", "originals", "derived", "events")

Asset = tuple[Folder, str]


def original_asset(scan_id: str, fmt: str) -> Asset:
    return "uploads", f"{scan_id}.{_ORIGINAL_EXTENSIONS.get(fmt, fmt)}"


def derived_assets(scan_id: str) -> list[Asset]:
    return [("results", f"{scan_id}-{suffix}.png") for suffix in _DERIVED_SUFFIXES]


def scan_assets(scan_id: str, fmt: str) -> list[Asset]:
    """Everything of one scan that storage may hold."""
    return [original_asset(scan_id, fmt), *derived_assets(scan_id)]


def remove_assets(storage: Storage, assets: Iterable[Asset]) -> None:
    """Delete these objects (missing ones are fine); StorageError if storage fails."""
    for folder, name in assets:
        storage.delete(folder, name)


def series_of(scan_ids: Sequence[str]) -> Select[tuple[str]]:
    """The DICOM series these scans are slices of; read before `delete_scan_rows`."""
    return select(DicomInstance.series_id).where(
        DicomInstance.scan_id.in_(list(scan_ids))).distinct()


def delete_scan_rows(scan_ids: Sequence[str], series_ids: Sequence[str] = ()) -> list[Delete]:
    """Statements removing every row of these scans, children first (no reliance on ON DELETE
    CASCADE); run them in one transaction, sync or async.

    `series_ids` (from `series_of`, read in the same transaction): of those series, the ones
    left without a slice go too (a finding about nothing); one that keeps other slices stays."""
    ids = list(scan_ids)
    statements = [delete(ScanEvent).where(ScanEvent.scan_id.in_(ids)),
                  delete(ScanUpload).where(ScanUpload.scan_id.in_(ids)),
                  delete(WebhookDelivery).where(WebhookDelivery.scan_id.in_(ids)),
                  delete(DicomInstance).where(DicomInstance.scan_id.in_(ids)),
                  delete(Scan).where(Scan.id.in_(ids))]
    if series_ids:
        statements.append(delete(DicomSeries).where(
            DicomSeries.id.in_(list(series_ids)),
            ~exists().where(DicomInstance.series_id == DicomSeries.id)))
    return statements


def delete_batch_rows(batch_id: str) -> list[Delete]:
    """After its scans' rows: the batch's own rows."""
    return [delete(WebhookDelivery).where(WebhookDelivery.batch_id == batch_id),
            delete(Batch).where(Batch.id == batch_id)]


def audit(tenant_id: str | None, action: str, target: str, *, key_id: str | None = None,
          request_id: str | None = None, detail: dict[str, Any] | None = None) -> AuditEvent:
    return AuditEvent(tenant_id=tenant_id, key_id=key_id, action=action, target=target,
                      at=utcnow(), request_id=request_id, detail=detail)


def settle_results(session: Session, fields: Mapping[str, Mapping[str, Any]],
                   written: Sequence[str], storage: Storage | None = None) -> None:
    """In the worker's result transaction (`worker.pipeline.finish`): the blob of every scan
    whose original is now in storage goes; and a scan deleted while the worker processed it
    (no row any more) is not brought back: what the worker stored for it is removed."""
    stored = [scan_id for scan_id in written if fields[scan_id].get("image_ref")]
    if stored:
        session.execute(delete(ScanUpload).where(ScanUpload.scan_id.in_(stored)))
    unwritten = [scan_id for scan_id in fields if scan_id not in set(written)]
    if not unwritten:
        return
    alive = set(session.scalars(select(Scan.id).where(Scan.id.in_(unwritten))))
    gone = [scan_id for scan_id in unwritten if scan_id not in alive]
    if gone:
        store = storage or get_storage()
        for scan_id in gone:
            # The format is not known any more: every extension the original may have had.
            remove_assets(store, [*(original_asset(scan_id, fmt) for fmt in _ORIGINAL_EXTENSIONS),
                                  *derived_assets(scan_id)])
        log.info("%d scans were deleted while being processed; their results dropped", len(gone))


# --- retention ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Retention:
    """Days each kind is kept after the scan finished; 0: until deleted on request."""

    originals: int
    derived: int
    results: int
    events: int

    @classmethod
    def for_tenant(cls, settings: Settings, own: TenantRetention | None = None) -> Retention:
        def pick(kind: str) -> int:
            value = getattr(own, f"{kind}_days", None) if own is not None else None
            return int(value) if value is not None else int(
                getattr(settings, f"retention_{kind}_days"))
        return cls(*(pick(kind) for kind in ("originals", "derived", "results", "events")))

    def cutoff(self, kind: str, now: datetime) -> datetime | None:
        days = int(getattr(self, kind))
        return now - timedelta(days=days) if days > 0 else None


@dataclass
class PurgeReport:
    dry_run: bool = False
    # tenant name -> kind -> scan ids (events: the number of rows, as ids of their scans)
    removed: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def add(self, tenant: str, kind: str, ids: Sequence[str]) -> None:
        if ids:
            self.removed.setdefault(tenant, {}).setdefault(kind, []).extend(ids)

    def count(self, kind: str | None = None) -> int:
        return sum(len(ids) for kinds in self.removed.values() for k, ids in kinds.items()
                   if kind in (None, k))

    def __bool__(self) -> bool:
        return bool(self.removed)


def _finished_before(cutoff: datetime) -> Any:
    return func.coalesce(Scan.finished_at, Scan.created_at) < cutoff


def purge_once(settings: Settings | None = None, *, now: datetime | None = None,
               dry_run: bool = False, limit: int | None = None,
               storage: Storage | None = None) -> PurgeReport:
    """One bounded pass of retention over every tenant; safe to repeat and to run in many
    workers at once (SKIP LOCKED on PostgreSQL; SQLite serialises writers)."""
    settings = settings or get_settings()
    url = settings.sync_database_url
    now = now or utcnow()
    limit = limit or settings.purge_batch_size
    store = storage or get_storage(settings)
    report = PurgeReport(dry_run=dry_run)
    with sync_session(url) as session:
        tenants = session.execute(select(Tenant.id, Tenant.name).order_by(Tenant.name)).all()
        own = {r.tenant_id: r for r in session.scalars(select(TenantRetention))}
        session.expunge_all()
    for tenant_id, name in tenants:
        retention = Retention.for_tenant(settings, own.get(tenant_id))
        for kind in KINDS:
            cutoff = retention.cutoff(kind, now)
            if cutoff is None:
                continue
            with sync_session(url) as session:
                ids = _PASSES[kind](session, store, tenant_id, cutoff, limit, dry_run)
                if ids and not dry_run:
                    session.add(audit(tenant_id, "purge", kind,
                                      detail={"scans": ids, "cutoff": cutoff.isoformat()}))
            report.add(name, kind, ids)
    if report and not dry_run:
        log.info("purge removed: %s", {k: report.count(k) for k in KINDS if report.count(k)})
    return report


def _final_scans(tenant_id: str, cutoff: datetime, limit: int, *extra: Any) -> Any:
    return (select(Scan.id, Scan.format).where(
        Scan.tenant_id == tenant_id, Scan.state.in_(_FINAL),
        _finished_before(cutoff), *extra)
        .order_by(Scan.finished_at, Scan.id).limit(limit)
        .with_for_update(skip_locked=True))


def _purge_results(session: Session, store: Storage, tenant_id: str, cutoff: datetime,
                   limit: int, dry_run: bool) -> list[str]:
    rows = session.execute(_final_scans(tenant_id, cutoff, limit)).all()
    ids = [scan_id for scan_id, _ in rows]
    if ids and not dry_run:
        for scan_id, fmt in rows:
            remove_assets(store, scan_assets(scan_id, fmt))
        series_ids = list(session.scalars(series_of(ids)))
        for statement in delete_scan_rows(ids, series_ids):
            session.execute(statement)
        # Batches left without scans go with their last one.
        empty = select(Batch.id).where(
            Batch.tenant_id == tenant_id, Batch.created_at < cutoff,
            ~exists().where(Scan.batch_id == Batch.id))
        for batch_id in list(session.scalars(empty.limit(limit))):
            for statement in delete_batch_rows(batch_id):
                session.execute(statement)
    return ids


def _purge_originals(session: Session, store: Storage, tenant_id: str, cutoff: datetime,
                     limit: int, dry_run: bool) -> list[str]:
    has_blob = exists().where(ScanUpload.scan_id == Scan.id)
    rows = session.execute(_final_scans(tenant_id, cutoff, limit,
                                        or_(Scan.image_ref.is_not(None), has_blob))).all()
    ids = [scan_id for scan_id, _ in rows]
    if ids and not dry_run:
        remove_assets(store, [original_asset(scan_id, fmt) for scan_id, fmt in rows])
        session.execute(delete(ScanUpload).where(ScanUpload.scan_id.in_(ids)))
        session.execute(update(Scan).where(Scan.id.in_(ids)).values(image_ref=None))
    return ids


def _purge_derived(session: Session, store: Storage, tenant_id: str, cutoff: datetime,
                   limit: int, dry_run: bool) -> list[str]:
    rows = session.execute(_final_scans(tenant_id, cutoff, limit, or_(
        Scan.heatmap_ref.is_not(None), Scan.overlay_ref.is_not(None),
        Scan.preview_ref.is_not(None)))).all()
    ids = [scan_id for scan_id, _ in rows]
    if ids and not dry_run:
        remove_assets(store, [a for scan_id in ids for a in derived_assets(scan_id)])
        session.execute(update(Scan).where(Scan.id.in_(ids)).values(
            heatmap_ref=None, overlay_ref=None, preview_ref=None))
    return ids


def _purge_events(session: Session, store: Storage, tenant_id: str, cutoff: datetime,
                  limit: int, dry_run: bool) -> list[str]:
    """Events of final scans recorded before the cutoff (a scan still in flight keeps all)."""
    rows = session.execute(select(ScanEvent.id, ScanEvent.scan_id).join(
        Scan, Scan.id == ScanEvent.scan_id).where(
        ScanEvent.tenant_id == tenant_id, ScanEvent.created_at < cutoff,
        Scan.state.in_(_FINAL)).order_by(ScanEvent.id).limit(limit)).all()
    if rows and not dry_run:
        session.execute(delete(ScanEvent).where(ScanEvent.id.in_([event_id for event_id, _ in rows])))
    return [scan_id for _, scan_id in rows]


_PASSES = {"results": _purge_results, "originals": _purge_originals,
           "derived": _purge_derived, "events": _purge_events}
