"""A tenant's data taken out, and put back: every scan's result JSON, FHIR, PDF and images, its
batches and DICOM series findings, with a manifest that records every file's SHA-256.

Layout (a folder from `neuroscan export`, or the same inside the ZIP of `GET /v1/export`):

    manifest.json                     format, tenant, time; per scan its state, frame and
                                      files' SHA-256; the batches; per series its file's SHA-256
    scans/<scan id>/result.json       as `GET /v1/scans/{id}`, links naming the files beside it
    scans/<scan id>/fhir.json         the FHIR R4 DiagnosticReport (final scans)
    scans/<scan id>/report.pdf        the PDF report (final scans)
    scans/<scan id>/original.<ext>, preview.png, heatmap.png, overlay.png   what storage holds
    series/<series id>/series.json    a DICOM series: its finding and its slices (scan ids and
                                      de-identified UIDs; never the re-identification record)

Export is resumable: a scan already in the manifest, final, whose files are all there with the
SHA-256 the manifest records, is skipped; anything else is written again. The manifest is
replaced atomically after every scan, so an export cut off anywhere picks up where it stopped.

Import (`import_tenant`, `neuroscan import`) reads a folder or that ZIP, checks every file
against the manifest first (a damaged export is refused whole, before anything is written),
then restores each final scan under its own id: images into storage under the names the worker
uses, then its row, its batch and one event, in one transaction per scan. A scan already there
for the tenant is skipped, so importing twice adds nothing twice and an import cut off resumes.
Scans that were still queued or processing at export time are counted, not imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.db.dicom_models import DicomInstance, DicomSeries
from shared.db.models import (
    Batch,
    Scan,
    ScanEvent,
    ScanUpload,
    Tenant,
    UTCDateTime,
    utcnow,
)
from shared.db.session import create_sync_db_engine, sync_session
from shared.db.tenants import get_or_create_tenant
from shared.fhir import scan_to_fhir
from shared.imaging import MEDIA_TYPES
from shared.lifecycle import audit, derived_assets, original_asset
from shared.reports.pdf import render_scan_report
from shared.reports.preview import preview_png
from shared.reports.wording import read_model_card
from shared.schemas import scan_out
from shared.settings import Settings, get_settings
from shared.states import JobState
from shared.storage import Storage, get_storage

MANIFEST = "manifest.json"
FORMAT = 2  # 2: batches, series and each scan's frame in the manifest; 1 still imports
_FINAL = (JobState.SUCCEEDED.value, JobState.FAILED.value)
_ORIGINAL_EXT = {"png": "png", "jpeg": "jpg", "dicom": "dcm"}
_DERIVED_FILES = {"preview.png": "preview_ref", "heatmap.png": "heatmap_ref",
                  "overlay.png": "overlay_ref"}
# Names inside an export come from a file anyone may have edited: ids and file names only.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Series columns an export leaves out: the tenant is the importer's; the re-identification
# record is sealed with this deployment's key and is nobody else's business.
_SERIES_PRIVATE = {"tenant_id", "reid", "reid_expires_at"}


class ExportError(ValueError):
    """An export that cannot be imported as it is: damaged, incomplete, or in conflict with
    what the database holds. The message says what and where; nothing was imported."""


@dataclass
class ExportReport:
    written: int = 0
    skipped: int = 0
    total: int = 0
    series: int = 0


@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0  # already there for this tenant
    unfinished: int = 0  # queued or processing when exported: nothing final to restore
    total: int = 0
    series_imported: int = 0
    series_skipped: int = 0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> str:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return _sha256(data)


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True, default=_jsonable).encode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return None
    raise TypeError(f"not JSON: {type(value).__name__}")


# --- reading the tenant's data ---------------------------------------------------------------

@lru_cache(maxsize=4)
def _read_sessions(url: str) -> sessionmaker[Session]:
    # Deferred transactions: on SQLite an export never holds the write lock (the API's and the
    # worker's writers go on), unlike `sync_session`, whose transactions are the worker's.
    return sessionmaker(create_sync_db_engine(url, immediate=False), expire_on_commit=False)


@contextmanager
def _reading(url: str) -> Iterator[Session]:
    with _read_sessions(url)() as session:
        yield session


def _scan_ids(url: str, tenant_id: str) -> list[str]:
    with _reading(url) as session:
        return list(session.scalars(select(Scan.id).where(
            Scan.tenant_id == tenant_id).order_by(Scan.created_at, Scan.id)))


def _load_scan(url: str, scan_id: str) -> tuple[Scan, bytes | None] | None:
    with _reading(url) as session:
        scan = session.get(Scan, scan_id)
        if scan is None:  # deleted meanwhile
            return None
        blob = session.scalar(select(ScanUpload.data).where(ScanUpload.scan_id == scan_id))
        session.expunge(scan)
    return scan, (bytes(blob) if blob is not None else None)


def _batches(url: str, tenant_id: str) -> dict[str, Any]:
    with _reading(url) as session:
        return {b.id: {"created_at": b.created_at.isoformat(), "total": b.total,
                       "finished_at": b.finished_at.isoformat() if b.finished_at else None}
                for b in session.scalars(select(Batch).where(Batch.tenant_id == tenant_id))}


def _series_records(url: str, tenant_id: str) -> list[dict[str, Any]]:
    """Each series of the tenant as its row (less `_SERIES_PRIVATE`) plus its slices."""
    columns = [c.key for c in DicomSeries.__table__.columns if c.key not in _SERIES_PRIVATE]
    with _reading(url) as session:
        rows = session.scalars(select(DicomSeries).where(DicomSeries.tenant_id == tenant_id)
                               .order_by(DicomSeries.created_at, DicomSeries.id)).all()
        instances: dict[str, list[dict[str, Any]]] = {}
        for inst in session.scalars(select(DicomInstance).join(
                DicomSeries, DicomSeries.id == DicomInstance.series_id).where(
                DicomSeries.tenant_id == tenant_id).order_by(
                DicomInstance.instance_number, DicomInstance.scan_id)):
            instances.setdefault(inst.series_id, []).append(
                {"scan_id": inst.scan_id, "sop_uid": inst.sop_uid,
                 "instance_number": inst.instance_number})
        return [{**{c: getattr(row, c) for c in columns}, "instances": instances.get(row.id, [])}
                for row in rows]


def scan_files(scan: Scan, blob: bytes | None, store: Storage, settings: Settings,
               card_cache: dict[str | None, Any]) -> dict[str, bytes]:
    """What one scan exports as: file name -> bytes (images, result.json, and for a final scan
    fhir.json and report.pdf)."""
    original_name = f"original.{_ORIGINAL_EXT.get(scan.format, scan.format)}"
    names = {scan.image_ref: original_name,
             scan.preview_ref: "preview.png", scan.heatmap_ref: "heatmap.png",
             scan.overlay_ref: "overlay.png"}
    files: dict[str, bytes] = {}
    for ref, name in names.items():
        if ref:
            files[name] = store.get(ref)
    if scan.image_ref is None and blob is not None:  # not stored by a worker yet
        files[original_name] = blob
    # Links name the files beside the JSON, so the export reads on its own.
    out = scan_out(scan, lambda ref: names.get(ref, ""))
    files["result.json"] = out.model_dump_json(indent=1).encode()
    if scan.state in _FINAL:
        files["fhir.json"] = json.dumps(scan_to_fhir(out, base_url=""), indent=1).encode()
        if scan.model_name not in card_cache:
            card_cache[scan.model_name] = read_model_card(scan.model_name, settings) \
                if scan.model_name else read_model_card(settings=settings)
        original = files.get("preview.png") or files.get(original_name)
        files["report.pdf"] = render_scan_report(out, preview_png(original, scan.frame),
                                                 files.get("overlay.png"),
                                                 card_cache[scan.model_name])
    return files


def _scan_entry(scan: Scan, hashes: dict[str, str]) -> dict[str, Any]:
    return {"state": scan.state, "complete": scan.state in _FINAL, "frame": scan.frame,
            "files": hashes}


def _header(tenant_name: str, tenant_id: str) -> dict[str, Any]:
    return {"tenant": tenant_name, "tenant_id": tenant_id, "exported_at": utcnow().isoformat(),
            "format": FORMAT}


def _tenant(url: str, name: str) -> Tenant:
    with _reading(url) as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == name))
        if tenant is None:
            raise LookupError(f"no tenant named {name!r}")
        session.expunge(tenant)
    return tenant


def _audit_export(url: str, tenant_id: str, detail: dict[str, Any], *, key_id: str | None = None,
                  request_id: str | None = None) -> None:
    with sync_session(url) as session:
        session.add(audit(tenant_id, "export", f"tenant:{tenant_id}", key_id=key_id,
                          request_id=request_id, detail=detail))


# --- export to a folder (`neuroscan export`) -----------------------------------------------

def _verified(folder: Path, entry: dict[str, Any] | None) -> bool:
    if not entry or not entry.get("complete"):
        return False
    for name, digest in entry.get("files", {}).items():
        path = folder / name
        if not path.is_file() or _sha256(path.read_bytes()) != digest:
            return False
    return True


def export_tenant(tenant_name: str, out: Path, settings: Settings | None = None,
                  storage: Storage | None = None,
                  progress: Callable[[str, bool], None] | None = None) -> ExportReport:
    """Write the tenant's scans, batches and series under `out` (see the module docstring);
    recorded in `audit_events`. LookupError if there is no such tenant."""
    settings = settings or get_settings()
    store = storage or get_storage(settings)
    url = settings.sync_database_url
    tenant = _tenant(url, tenant_name)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    manifest: dict[str, Any] = (json.loads(manifest_path.read_text())
                                if manifest_path.is_file() else {})
    scan_ids = _scan_ids(url, tenant.id)
    manifest.update(_header(tenant_name, tenant.id))
    entries: dict[str, Any] = manifest.setdefault("scans", {})
    for gone in set(entries) - set(scan_ids):  # deleted since an earlier run
        entries.pop(gone)
        if _SAFE_ID.match(gone):
            shutil.rmtree(out / "scans" / gone, ignore_errors=True)
    card_cache: dict[str | None, Any] = {}
    report = ExportReport(total=len(scan_ids))
    for scan_id in scan_ids:
        folder = out / "scans" / scan_id
        if _verified(folder, entries.get(scan_id)):
            report.skipped += 1
            if progress:
                progress(scan_id, False)
            continue
        loaded = _load_scan(url, scan_id)
        if loaded is None:
            entries.pop(scan_id, None)
            continue
        scan, blob = loaded
        folder.mkdir(parents=True, exist_ok=True)
        files = scan_files(scan, blob, store, settings, card_cache)
        entries[scan_id] = _scan_entry(scan, {n: _write(folder / n, d) for n, d in files.items()})
        report.written += 1
        _write(manifest_path, _json(manifest))
        if progress:
            progress(scan_id, True)
    manifest["batches"] = _batches(url, tenant.id)
    manifest["series"] = {}
    for record in _series_records(url, tenant.id):
        folder = out / "series" / record["id"]
        folder.mkdir(parents=True, exist_ok=True)
        manifest["series"][record["id"]] = {
            "state": record["state"], "files": {"series.json": _write(folder / "series.json",
                                                                      _json(record))}}
        report.series += 1
    _write(manifest_path, _json(manifest))
    _audit_export(url, tenant.id, {"scans": report.total, "series": report.series,
                                   "written": report.written, "via": "cli"})
    return report


# --- export as a ZIP stream (`GET /v1/export`) ------------------------------------------------

class _Chunks:
    """A write-only, unseekable file: what zipfile writes, handed out piece by piece."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _compression(name: str) -> int:
    # PNG and PDF are compressed already; JSON and DICOM pixel data are not.
    return zipfile.ZIP_STORED if name.endswith((".png", ".jpg", ".pdf")) \
        else zipfile.ZIP_DEFLATED


def iter_export_zip(tenant_id: str, settings: Settings | None = None,
                    storage: Storage | None = None) -> Iterator[bytes]:
    """The tenant's export as a ZIP (the folder layout, manifest.json last), produced one scan
    at a time: memory holds one scan's files, never the archive. Blocking: iterate it in a
    thread. The caller records the export in the audit log."""
    settings = settings or get_settings()
    store = storage or get_storage(settings)
    url = settings.sync_database_url
    with _reading(url) as session:
        tenant_name = session.scalar(select(Tenant.name).where(Tenant.id == tenant_id)) or ""
    sink = _Chunks()
    manifest = _header(tenant_name, tenant_id)
    entries: dict[str, Any] = {}
    card_cache: dict[str | None, Any] = {}
    with zipfile.ZipFile(sink, "w") as archive:  # type: ignore[arg-type]
        for scan_id in _scan_ids(url, tenant_id):
            loaded = _load_scan(url, scan_id)
            if loaded is None:
                continue
            scan, blob = loaded
            files = scan_files(scan, blob, store, settings, card_cache)
            for name, data in files.items():
                archive.writestr(f"scans/{scan_id}/{name}", data, compress_type=_compression(name))
            entries[scan_id] = _scan_entry(scan, {n: _sha256(d) for n, d in files.items()})
            yield sink.take()
        manifest["scans"] = entries
        manifest["batches"] = _batches(url, tenant_id)
        manifest["series"] = {}
        for record in _series_records(url, tenant_id):
            data = _json(record)
            archive.writestr(f"series/{record['id']}/series.json", data,
                             compress_type=zipfile.ZIP_DEFLATED)
            manifest["series"][record["id"]] = {"state": record["state"],
                                                "files": {"series.json": _sha256(data)}}
        archive.writestr(MANIFEST, _json(manifest), compress_type=zipfile.ZIP_DEFLATED)
    yield sink.take()


# --- reading an export back ------------------------------------------------------------------

class _Source:
    """An export folder or ZIP: its files by their names in the layout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        if path.is_dir():
            return
        if path.is_file() and zipfile.is_zipfile(path):
            self._zip = zipfile.ZipFile(path)
            return
        raise ExportError(f"{path} is neither an export folder nor an export ZIP.")

    def read(self, name: str) -> bytes | None:
        try:
            if self._zip is not None:
                return self._zip.read(name)
            return (self.path / name).read_bytes()
        except (KeyError, FileNotFoundError, IsADirectoryError):
            return None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:  # CRC and friends
            raise ExportError(f"{name} cannot be read from {self.path}: {exc}") from exc

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _check_files(source: _Source, prefix: str, entry: Any, problems: list[str]) -> None:
    files = entry.get("files") if isinstance(entry, dict) else None
    if not isinstance(files, dict):
        problems.append(f"{prefix}: the manifest lists no files")
        return
    for name, digest in files.items():
        if not _SAFE_FILE.match(str(name)):
            problems.append(f"{prefix}{name}: not a file name an export writes")
            continue
        data = source.read(prefix + name)
        if data is None:
            problems.append(f"{prefix}{name}: missing")
        elif _sha256(data) != digest:
            problems.append(f"{prefix}{name}: SHA-256 differs from the manifest")


def verify_export(source: _Source) -> dict[str, Any]:
    """The manifest, once every file it lists is there with the SHA-256 it records;
    ExportError naming the damage otherwise."""
    raw = source.read(MANIFEST)
    if raw is None:
        raise ExportError(f"{source.path} has no {MANIFEST}: not a NeuroScan export.")
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise ExportError(f"{MANIFEST} in {source.path} is not valid JSON (the export is "
                          f"damaged): {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") not in (1, FORMAT):
        raise ExportError(f"{MANIFEST} in {source.path} is not a NeuroScan export manifest of "
                          f"format 1 or {FORMAT}.")
    scans, series = manifest.get("scans", {}), manifest.get("series", {})
    if not isinstance(scans, dict) or not isinstance(series, dict):
        raise ExportError(f"{MANIFEST} in {source.path}: `scans` and `series` must be objects.")
    problems: list[str] = []
    for kind, entries in (("scans", scans), ("series", series)):
        for ident, entry in entries.items():
            if not _SAFE_ID.match(str(ident)):
                problems.append(f"{kind}/{ident}: not an id")
                continue
            _check_files(source, f"{kind}/{ident}/", entry, problems)
            needed = "result.json" if kind == "scans" else "series.json"
            if isinstance(entry, dict) and needed not in entry.get("files", {}):
                problems.append(f"{kind}/{ident}/{needed}: not in the manifest")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more"
                                           if len(problems) > 5 else "")
        raise ExportError(f"The export in {source.path} is damaged: {len(problems)} "
                          f"problem(s): {shown}. Nothing was imported.")
    return manifest


# --- import ----------------------------------------------------------------------------------

def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _owners(session: Session, model: Any, column: Any, ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        found.update((ident, owner) for ident, owner in session.execute(
            select(column, model.tenant_id).where(column.in_(ids[start:start + 500]))))
    return found


def _restore_images(store: Storage, scan_id: str, fmt: str, names: list[str],
                    source: _Source) -> dict[str, str]:
    """Images into storage under the worker's names; returns the row's ref fields."""
    refs: dict[str, str] = {}
    original = f"original.{_ORIGINAL_EXT.get(fmt, fmt)}"
    derived = dict(zip(("preview.png", "heatmap.png", "overlay.png"),
                       derived_assets(scan_id), strict=True))
    for name in names:
        data = source.read(f"scans/{scan_id}/{name}")
        if data is None:
            continue
        if name == original:
            folder, key = original_asset(scan_id, fmt)
            refs["image_ref"] = store.put(folder, key, data,
                                          MEDIA_TYPES.get(fmt, "application/octet-stream"))
        elif name in _DERIVED_FILES:
            folder, key = derived[name]
            refs[_DERIVED_FILES[name]] = store.put(folder, key, data, "image/png")
    return refs


def _scan_row(result: dict[str, Any], entry: dict[str, Any], tenant_id: str,
              refs: dict[str, str]) -> Scan:
    prediction = result.get("prediction") or {}
    model = result.get("model") or {}
    error = result.get("error") or {}
    return Scan(
        id=result["id"], tenant_id=tenant_id, batch_id=result.get("batch_id"),
        state=result["state"], filename=result.get("filename"), format=result["format"],
        size_bytes=int(result.get("size_bytes") or 0), sha256=result["sha256"],
        frame=entry.get("frame"), created_at=_when(result["created_at"]),
        started_at=_when(result.get("started_at")), finished_at=_when(result.get("finished_at")),
        attempts=int(result.get("attempts") or 0), label=prediction.get("label"),
        confidence=prediction.get("confidence"), probabilities=prediction.get("probabilities"),
        gate=result.get("gate"), model_name=model.get("name"),
        model_version=model.get("version"), model_sha256=model.get("sha256"),
        error_code=error.get("code"), error_message=error.get("message"),
        timings=result.get("timings"), patient_ref=result.get("patient_ref"),
        study_ref=result.get("study_ref"), **refs)


def _series_row(record: dict[str, Any], tenant_id: str) -> DicomSeries:
    values: dict[str, Any] = {"tenant_id": tenant_id}
    for column in DicomSeries.__table__.columns:
        if column.key in _SERIES_PRIVATE or column.key not in record:
            continue
        value = record[column.key]
        values[column.key] = _when(value) if isinstance(column.type, UTCDateTime) else value
    return DicomSeries(**values)


def _insert_scan(url: str, tenant_id: str, result: dict[str, Any], entry: dict[str, Any],
                 refs: dict[str, str], batch: dict[str, Any] | None) -> str | None:
    """The scan's row, its batch if new and one final-state event (event streams of the scan
    and its batch end), in one transaction. Returns the batch id when the batch was made
    without a record of its own (format 1), for its total to be counted afterwards."""
    made = None
    with sync_session(url) as session:
        batch_id = result.get("batch_id")
        if batch_id and session.get(Batch, batch_id) is None:
            known = batch or {}
            session.add(Batch(id=batch_id, tenant_id=tenant_id,
                              created_at=_when(known.get("created_at"))
                              or _when(result["created_at"]),
                              total=int(known.get("total") or 0),
                              finished_at=_when(known.get("finished_at"))))
            session.flush()
            made = None if known else batch_id
        row = _scan_row(result, entry, tenant_id, refs)
        session.add(row)
        session.flush()
        session.add(ScanEvent(tenant_id=tenant_id, scan_id=row.id, batch_id=batch_id,
                              state=row.state, created_at=row.finished_at or utcnow()))
    return made


def import_tenant(tenant_name: str, src: Path, settings: Settings | None = None,
                  storage: Storage | None = None,
                  progress: Callable[[str, bool], None] | None = None) -> ImportReport:
    """Restore an export (folder or ZIP) under `tenant_name` (created if new); see the module
    docstring. ExportError when the export is damaged or its scans belong to another tenant
    here; nothing is written then."""
    settings = settings or get_settings()
    store = storage or get_storage(settings)
    url = settings.sync_database_url
    source = _Source(src)
    try:
        manifest = verify_export(source)
        return _import(manifest, source, tenant_name, store, url, progress)
    finally:
        source.close()


def _import(manifest: dict[str, Any], source: _Source, tenant_name: str, store: Storage,
            url: str, progress: Callable[[str, bool], None] | None) -> ImportReport:
    scans: dict[str, Any] = manifest.get("scans", {})
    series: dict[str, Any] = manifest.get("series", {})
    batches: dict[str, Any] = manifest.get("batches", {})
    with sync_session(url) as session:  # a refusal rolls back: not even the tenant is made
        tenant_id = get_or_create_tenant(session, tenant_name).id
        scan_owner = _owners(session, Scan, Scan.id, list(scans))
        batch_owner = _owners(session, Batch, Batch.id, list(batches))
        series_owner = _owners(session, DicomSeries, DicomSeries.id, list(series))
        foreign = sorted(f"{kind} {ident}" for kind, owners in (
            ("scan", scan_owner), ("batch", batch_owner), ("series", series_owner))
            for ident, owner in owners.items() if owner != tenant_id)
        if foreign:
            raise ExportError(f"{len(foreign)} record(s) of this export belong to another tenant "
                              f"in this database (first: {foreign[0]}); import into that tenant "
                              "or into another database. Nothing was imported.")
    report = ImportReport(total=len(scans))
    made_batches: set[str] = set()
    for scan_id, entry in scans.items():
        if scan_id in scan_owner:
            report.skipped += 1
            if progress:
                progress(scan_id, False)
            continue
        if not entry.get("complete") or entry.get("state") not in _FINAL:
            report.unfinished += 1
            continue
        result = json.loads(source.read(f"scans/{scan_id}/result.json") or b"{}")
        if result.get("id") != scan_id or result.get("state") not in _FINAL:
            raise ExportError(f"scans/{scan_id}/result.json does not describe final scan "
                              f"{scan_id}.")
        # Bytes first, the row second: a row never names an object that is not there yet.
        refs = _restore_images(store, scan_id, result["format"], list(entry["files"]), source)
        try:
            made = _insert_scan(url, tenant_id, result, entry, refs, batches.get(
                result.get("batch_id") or ""))
        except IntegrityError:
            # Another import of the same export got there first: the row is its.
            with _reading(url) as session:
                if session.scalar(select(Scan.tenant_id).where(
                        Scan.id == scan_id)) != tenant_id:
                    raise
            report.skipped += 1
            continue
        if made:
            made_batches.add(made)
        report.imported += 1
        if progress:
            progress(scan_id, True)
    if made_batches:  # a format-1 export names batches only through their scans
        with sync_session(url) as session:
            for batch_id in made_batches:
                session.execute(update(Batch).where(Batch.id == batch_id).values(
                    total=select(func.count()).select_from(Scan).where(
                        Scan.batch_id == batch_id).scalar_subquery()))
    for series_id in series:
        if series_id in series_owner:
            report.series_skipped += 1
            continue
        record = json.loads(source.read(f"series/{series_id}/series.json") or b"{}")
        if record.get("id") != series_id:
            raise ExportError(f"series/{series_id}/series.json does not describe series "
                              f"{series_id}.")
        wanted = {i["scan_id"]: i for i in record.get("instances", [])}
        with sync_session(url) as session:
            present = set(session.scalars(select(Scan.id).where(
                Scan.id.in_(list(wanted)), Scan.tenant_id == tenant_id)))
            if not present:  # none of its slices was final at export time
                report.series_skipped += 1
                continue
            session.add(_series_row(record, tenant_id))
            session.flush()
            session.add_all(DicomInstance(scan_id=scan_id, series_id=series_id,
                                          sop_uid=i["sop_uid"],
                                          instance_number=i.get("instance_number"))
                            for scan_id, i in wanted.items() if scan_id in present)
        report.series_imported += 1
    with sync_session(url) as session:
        session.add(audit(tenant_id, "import", f"tenant:{tenant_id}", detail={
            "from_tenant": manifest.get("tenant"), "exported_at": manifest.get("exported_at"),
            "imported": report.imported, "skipped": report.skipped,
            "unfinished": report.unfinished, "series": report.series_imported}))
    return report
