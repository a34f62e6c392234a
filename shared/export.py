"""A tenant's data taken out: every scan's result JSON, FHIR, PDF and images, with a manifest.

Layout under the output folder:

    manifest.json                     tenant, time, and per scan its state and files' SHA-256
    scans/<scan id>/result.json       as `GET /v1/scans/{id}`, links naming the files beside it
    scans/<scan id>/fhir.json         the FHIR R4 DiagnosticReport (final scans)
    scans/<scan id>/report.pdf        the PDF report (final scans)
    scans/<scan id>/original.<ext>, preview.png, heatmap.png, overlay.png   what storage holds

Resumable: a scan already in the manifest, final, whose files are all there with the SHA-256
the manifest records, is skipped; anything else is written again. The manifest is replaced
atomically after every scan, so an export cut off anywhere picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from shared.db.models import ScanResult, ScanUpload, Tenant, utcnow
from shared.db.session import sync_session
from shared.fhir import scan_to_fhir
from shared.reports.card import read_model_card
from shared.reports.pdf import render_scan_report
from shared.reports.preview import preview_png
from shared.schemas import scan_out
from shared.settings import Settings, get_settings
from shared.states import JobState
from shared.storage import Storage, get_storage

MANIFEST = "manifest.json"
_FINAL = (JobState.SUCCEEDED.value, JobState.FAILED.value)
_ORIGINAL_EXT = {"png": "png", "jpeg": "jpg", "dicom": "dcm"}


@dataclass
class ExportReport:
    written: int = 0
    skipped: int = 0
    total: int = 0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> str:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return _sha256(data)


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
    """Write the tenant's scans under `out` (see the module docstring); LookupError if there
    is no such tenant."""
    s = settings or get_settings()
    store = storage or get_storage(s)
    url = s.sync_database_url
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    manifest: dict[str, Any] = (json.loads(manifest_path.read_text())
                                if manifest_path.is_file() else {})
    with sync_session(url) as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
        if tenant is None:
            raise LookupError(f"no tenant named {tenant_name!r}")
        scan_ids = list(session.scalars(select(ScanResult.id).where(
            ScanResult.tenant_id == tenant.id).order_by(ScanResult.created_at, ScanResult.id)))
    manifest.update({"tenant": tenant_name, "tenant_id": tenant.id,
                     "exported_at": utcnow().isoformat(), "format": 1})
    entries: dict[str, Any] = manifest.setdefault("scans", {})
    card_cache: dict[str | None, Any] = {}
    report = ExportReport(total=len(scan_ids))
    for scan_id in scan_ids:
        folder = out / "scans" / scan_id
        if _verified(folder, entries.get(scan_id)):
            report.skipped += 1
            if progress:
                progress(scan_id, False)
            continue
        with sync_session(url) as session:
            scan = session.get(ScanResult, scan_id)
            if scan is None:  # deleted meanwhile
                entries.pop(scan_id, None)
                continue
            blob = session.scalar(select(ScanUpload.data).where(ScanUpload.scan_id == scan_id))
            session.expunge(scan)
        folder.mkdir(parents=True, exist_ok=True)
        entries[scan_id] = _export_scan(scan, blob, folder, store, s, card_cache)
        report.written += 1
        _write(manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())
        if progress:
            progress(scan_id, True)
    _write(manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return report


def _export_scan(scan: ScanResult, blob: bytes | None, folder: Path, store: Storage,
                 settings: Settings, card_cache: dict[str | None, Any]) -> dict[str, Any]:
    files: dict[str, str] = {}
    original_name = f"original.{_ORIGINAL_EXT.get(scan.format, scan.format)}"
    names = {scan.image_ref: original_name,
             scan.preview_ref: "preview.png", scan.heatmap_ref: "heatmap.png",
             scan.overlay_ref: "overlay.png"}
    images: dict[str, bytes] = {}
    for ref, name in names.items():
        if ref:
            images[name] = store.get(ref)
    if scan.image_ref is None and blob is not None:  # not stored by a worker yet
        images[original_name] = bytes(blob)
    for name, data in images.items():
        files[name] = _write(folder / name, data)
    # Links name the files beside the JSON, so the export reads on its own.
    out = scan_out(scan, lambda ref: names.get(ref, ""))
    files["result.json"] = _write(folder / "result.json",
                                  out.model_dump_json(indent=1).encode())
    final = scan.state in _FINAL
    if final:
        fhir = scan_to_fhir(out, base_url="")
        files["fhir.json"] = _write(folder / "fhir.json", json.dumps(fhir, indent=1).encode())
        if scan.model_name not in card_cache:
            card_cache[scan.model_name] = read_model_card(scan.model_name, settings) \
                if scan.model_name else read_model_card(settings=settings)
        original = images.get("preview.png") or images.get(original_name)
        pdf = render_scan_report(out, preview_png(original, scan.frame),
                                 images.get("overlay.png"), card_cache[scan.model_name])
        files["report.pdf"] = _write(folder / "report.pdf", pdf)
    return {"state": scan.state, "complete": final, "files": files}
