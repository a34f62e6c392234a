"""A tenant's export re-imports as the same set of results, on both stacks.

Real scans (PNG, JPEG, a failing colour photo, a batch, a DICOM series by STOW-RS) go through
the real worker; the tenant is exported (`neuroscan export`, or `GET /v1/export` as a ZIP) and
imported (`neuroscan import`) into a fresh database with fresh storage: SQLite and local disk
for the embedded stack, a new PostgreSQL database and another Cloudinary stand-in for "pg".
The imported rows and the images' bytes equal the exported ones; importing twice adds
nothing; a damaged export is refused whole.

Runs on the stack of tests/integration/test_lifecycle.py (ports 19500-19599), under a tenant
of its own."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from shared.db.dicom_models import DicomInstance, DicomSeries
from shared.db.lifecycle_models import AuditEvent
from shared.db.migrate import upgrade_to_head
from shared.db.models import Batch, Scan, ScanEvent, Tenant
from shared.db.session import sync_session
from shared.export import MANIFEST, ExportError, export_tenant, import_tenant
from shared.settings import Settings, _with_driver
from shared.storage import get_storage
from tests.integration.test_lifecycle import stow_series, wait_for_series
from tests.support.cloudinary_standin import CloudinaryStandIn
from tests.support.images import brain_jpeg, brain_png, colour_photo_png
from tests.support.stack import (
    LiveStack,
    create_pg_database,
    drop_pg_database,
    wait_for_batch,
    wait_for_scan,
)

STACK_TENANT = "lifecycle-hospital"  # the stack's own tenant (test_lifecycle.py)
SOURCE = "export-hospital"
TARGET = "restored-hospital"
_STACK_VARS = ("DATABASE_URL", "BROKER_URL", "CLOUDINARY_URL", "CLOUDINARY_CLOUD_NAME",
               "CLOUDINARY_API_KEY", "CLOUDINARY_API_SECRET", "CLOUDINARY_UPLOAD_PREFIX",
               "MEDIA_DIR", "SECRET_KEY", "VAR_DIR")


@pytest.fixture(scope="module", params=["embedded", "pg"])
def stack(request: pytest.FixtureRequest, live_stack) -> LiveStack:
    return live_stack(request.param, port_range=(19500, 19599), tenant=STACK_TENANT)


def _settings(env: dict[str, str]) -> Settings:
    return Settings(database_url=env["DATABASE_URL"], media_dir=env["MEDIA_DIR"],
                    secret_key=env["SECRET_KEY"], cloudinary_url=env.get("CLOUDINARY_URL"),
                    cloudinary_upload_prefix=env.get("CLOUDINARY_UPLOAD_PREFIX"),
                    model_dir=env.get("MODEL_DIR", "./models"),
                    model_name=env.get("MODEL_NAME", "neuroscan-cnn"), environment="test")


@dataclass
class Source:
    key: str
    settings: Settings
    scan_ids: list[str]
    series_id: str


@pytest.fixture(scope="module")
def source(stack: LiveStack) -> Source:
    """The SOURCE tenant's data, processed by the stack's worker: a batch of three PNGs and a
    colour photo (refused by the input gate: a failed scan), a JPEG, a two-slice series."""
    key = stack.new_key(SOURCE)
    with stack.client(api_key=key) as client:
        files = [("files", (f"e{i}.png", brain_png(200 + i), "image/png")) for i in range(3)]
        files.append(("files", ("photo.png", colour_photo_png(), "image/png")))
        batch = client.post("/v1/batches", files=files)
        assert batch.status_code == 202, batch.text
        single = client.post("/v1/scans", files={"file": ("one.jpg", brain_jpeg(210),
                                                          "image/jpeg")})
        assert single.status_code == 202, single.text
        series_id, slices = stow_series(client, slices=2, seed=220)
        wait_for_batch(client, batch.json()["id"])
        states = {wait_for_scan(client, single.json()["id"])["state"]}
        assert wait_for_series(client, series_id)["state"] == "succeeded"
        scans = client.get("/v1/scans", params={"page_size": 100}).json()["items"]
        states |= {s["state"] for s in scans}
    assert states == {"succeeded", "failed"}
    ids = [s["id"] for s in scans]
    assert set(slices) | set(batch.json()["scan_ids"]) <= set(ids) and len(ids) == 7
    return Source(key=key, settings=_settings(stack.env), scan_ids=ids, series_id=series_id)


@dataclass
class Target:
    settings: Settings
    env: dict[str, str]
    standin: CloudinaryStandIn | None = None

    def objects(self) -> dict[str, int]:
        """Every object its storage holds: times uploaded (stand-in) or modified (disk)."""
        if self.standin is not None:
            return {public_id: asset.uploads
                    for (_type, public_id), asset in self.standin.assets.items()}
        media = Path(self.settings.media_dir)
        return {str(p.relative_to(media)): p.stat().st_mtime_ns
                for p in media.rglob("*") if p.is_file()}


@pytest.fixture
def target(stack: LiveStack, tmp_path: Path) -> Iterator[Target]:
    """A fresh, migrated database and empty storage of the stack's kind."""
    env = {"MEDIA_DIR": str(tmp_path / "target-media"), "SECRET_KEY": uuid.uuid4().hex,
           "VAR_DIR": str(tmp_path / "target-var"), "ENVIRONMENT": "test"}
    standin, db_url = None, None
    if stack.backend == "embedded":
        env["DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'target.db'}"
    else:
        db_url = env["DATABASE_URL"] = create_pg_database()
        standin = CloudinaryStandIn().start()
        env["CLOUDINARY_URL"], env["CLOUDINARY_UPLOAD_PREFIX"] = standin.cloudinary_url, standin.url
    upgrade_to_head(_with_driver(env["DATABASE_URL"], asyncio=False))
    try:
        yield Target(settings=_settings(env), env=env, standin=standin)
    finally:
        if standin is not None:
            standin.stop()
        if db_url is not None:
            drop_pg_database(db_url)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in _STACK_VARS} | env
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=full,
                          capture_output=True, text=True, timeout=180)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _snapshot(settings: Settings, tenant: str) -> dict[str, Any]:
    """The tenant's results as the database and storage hold them: per scan its id, state,
    label, probabilities, hashes and the SHA-256 of each stored image's bytes; its batches;
    its series findings and their slices."""
    storage = get_storage(settings)
    with sync_session(settings.sync_database_url) as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant))
        scans = session.scalars(select(Scan).where(Scan.tenant_id == tenant_id)).all()
        batches = session.scalars(select(Batch).where(Batch.tenant_id == tenant_id)).all()
        series = session.scalars(select(DicomSeries).where(
            DicomSeries.tenant_id == tenant_id)).all()
        instances = session.execute(select(DicomInstance.series_id, DicomInstance.scan_id,
                                           DicomInstance.instance_number, DicomInstance.sop_uid)
                                    ).all()
        session.expunge_all()
    out: dict[str, Any] = {"scans": {}, "batches": {}, "series": {}}
    for scan in scans:
        images = {kind: _digest(storage.get(ref)) for kind in (
            "image_ref", "preview_ref", "heatmap_ref", "overlay_ref")
            if (ref := getattr(scan, kind))}
        out["scans"][scan.id] = {
            "state": scan.state, "label": scan.label, "confidence": scan.confidence,
            "probabilities": scan.probabilities, "error_code": scan.error_code,
            "sha256": scan.sha256, "size_bytes": scan.size_bytes, "format": scan.format,
            "frame": scan.frame, "batch_id": scan.batch_id, "gate": scan.gate,
            "model": (scan.model_name, scan.model_version, scan.model_sha256),
            "created_at": scan.created_at, "finished_at": scan.finished_at, "images": images}
    for batch in batches:
        out["batches"][batch.id] = (batch.total, batch.created_at)
    for s in series:
        out["series"][s.id] = {
            "state": s.state, "label": s.label, "probability": s.probability,
            "tumour_probability": s.tumour_probability, "key_scan_id": s.key_scan_id,
            "finding": s.finding, "series_uid": s.series_uid,
            "slices": sorted((i.scan_id, i.instance_number, i.sop_uid)
                             for i in instances if i.series_id == s.id)}
    return out


def _counts(settings: Settings) -> dict[str, int]:
    with sync_session(settings.sync_database_url) as session:
        return {model.__tablename__: session.scalar(select(func.count()).select_from(model))
                for model in (Scan, ScanEvent, Batch, DicomSeries, DicomInstance)}


def test_export_reimports_as_the_same_results(stack: LiveStack, source: Source,
                                              target: Target, tmp_path: Path) -> None:
    out = tmp_path / "export"
    report = export_tenant(SOURCE, out, source.settings)
    assert (report.total, report.written, report.series) == (7, 7, 1)
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["scans"]) == set(source.scan_ids)
    assert list(manifest["series"]) == [source.series_id]

    imported = _cli(target.env, "import", "--tenant", TARGET, "--from", str(out))
    assert imported.returncode == 0, imported.stderr
    assert "7 imported" in imported.stdout and "1 series imported" in imported.stdout

    before = _snapshot(source.settings, SOURCE)
    after = _snapshot(target.settings, TARGET)
    assert set(after["scans"]) == set(source.scan_ids)
    assert after == before  # ids, labels, probabilities, images' bytes, batches, series
    failed = [s for s in after["scans"].values() if s["state"] == "failed"]
    assert failed and all(s["error_code"] and "image_ref" in s["images"] for s in failed)
    assert any(set(s["images"]) == {"image_ref", "preview_ref", "heatmap_ref", "overlay_ref"}
               for s in after["scans"].values())  # the DICOM slices' PNG renditions too
    assert len(target.objects()) == sum(len(s["images"]) for s in after["scans"].values())

    # The restored tenant exports to the same results and images, file for file.
    again = tmp_path / "again"
    export_tenant(TARGET, again, target.settings)
    second = json.loads((again / MANIFEST).read_text())
    for scan_id, entry in manifest["scans"].items():
        files = {n: h for n, h in entry["files"].items() if n not in ("report.pdf", "fhir.json")}
        assert {n: h for n, h in second["scans"][scan_id]["files"].items()
                if n not in ("report.pdf", "fhir.json")} == files
    assert second["series"] == manifest["series"]
    assert second["batches"] == manifest["batches"]

    # Twice: nothing is added twice, nothing is uploaded again.
    counts = _counts(target.settings)
    assert counts["scan_results"] == 7 and counts["scan_events"] == 7
    objects = target.objects()
    twice = import_tenant(TARGET, out, target.settings)
    assert (twice.imported, twice.skipped, twice.series_imported, twice.series_skipped) == (
        0, 7, 0, 1)
    assert _counts(target.settings) == counts
    assert target.objects() == objects
    with sync_session(target.settings.sync_database_url) as session:
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "import")
                                .order_by(AuditEvent.id)).all()
        assert [a.detail["imported"] for a in audit] == [7, 0]
        assert audit[0].detail["from_tenant"] == SOURCE


def test_import_resumes_after_a_cut(stack: LiveStack, source: Source, target: Target,
                                    tmp_path: Path) -> None:
    """An import cut off half-way (here: some scans restored by an earlier run) finishes the
    rest; what was there stays as it was."""
    out = tmp_path / "export"
    export_tenant(SOURCE, out, source.settings)
    manifest = json.loads((out / MANIFEST).read_text())
    first_two = dict(list(manifest["scans"].items())[:2])
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / MANIFEST).write_text(json.dumps({**manifest, "scans": first_two, "series": {}}))
    assert import_tenant(TARGET, partial, target.settings).imported == 2
    rest = import_tenant(TARGET, out, target.settings)
    assert (rest.imported, rest.skipped, rest.series_imported) == (5, 2, 1)
    assert _snapshot(target.settings, TARGET) == _snapshot(source.settings, SOURCE)


def test_damaged_export_is_refused(stack: LiveStack, source: Source, target: Target,
                                   tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_tenant(SOURCE, out, source.settings)
    manifest = json.loads((out / MANIFEST).read_text())
    victim = next(i for i, e in manifest["scans"].items() if "heatmap.png" in e["files"])
    heatmap = out / "scans" / victim / "heatmap.png"
    data = bytearray(heatmap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    heatmap.write_bytes(bytes(data))

    refused = _cli(target.env, "import", "--tenant", TARGET, "--from", str(out))
    assert refused.returncode == 2
    assert f"scans/{victim}/heatmap.png: SHA-256 differs from the manifest" in refused.stderr
    assert "Nothing was imported" in refused.stderr and "Traceback" not in refused.stderr
    assert _counts(target.settings)["scan_results"] == 0 and target.objects() == {}

    heatmap.unlink()
    with pytest.raises(ExportError, match=f"scans/{victim}/heatmap.png: missing"):
        import_tenant(TARGET, out, target.settings)
    (out / MANIFEST).write_text((out / MANIFEST).read_text()[:-20])
    with pytest.raises(ExportError, match="not valid JSON"):
        import_tenant(TARGET, out, target.settings)
    with pytest.raises(ExportError, match="neither an export folder nor an export ZIP"):
        import_tenant(TARGET, out / MANIFEST, target.settings)
    assert _counts(target.settings)["scan_results"] == 0


def test_api_export_zip_is_the_tenants_own_and_reimports(stack: LiveStack, source: Source,
                                                         target: Target,
                                                         tmp_path: Path) -> None:
    with stack.client(api_key=source.key) as client:
        r = client.get("/v1/export", headers={"X-Request-ID": "req-export-1"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert "attachment" in r.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    assert archive.testzip() is None
    manifest = json.loads(archive.read(MANIFEST))
    assert manifest["tenant"] == SOURCE and set(manifest["scans"]) == set(source.scan_ids)
    for scan_id, entry in manifest["scans"].items():
        for name, digest in entry["files"].items():
            assert _digest(archive.read(f"scans/{scan_id}/{name}")) == digest

    # The same layout as the command's folder.
    folder = tmp_path / "folder"
    export_tenant(SOURCE, folder, source.settings)
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert set(archive.namelist()) == on_disk

    # Another tenant's key exports that tenant only; no key, no export.
    with stack.client(api_key=stack.new_key("export-other")) as other:
        theirs = json.loads(zipfile.ZipFile(io.BytesIO(other.get("/v1/export").content))
                            .read(MANIFEST))
    assert theirs["scans"] == {} and theirs["series"] == {}
    assert httpx.get(f"{stack.base_url}/v1/export", timeout=30).status_code == 401

    with sync_session(source.settings.sync_database_url) as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == SOURCE))
        audit = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "export", AuditEvent.request_id == "req-export-1")).all()
        assert len(audit) == 1
        assert (audit[0].tenant_id, audit[0].target, audit[0].detail["scans"]) == (
            tenant_id, f"tenant:{tenant_id}", 7)
        assert audit[0].key_id is not None

    zipped = tmp_path / "export.zip"
    zipped.write_bytes(r.content)
    imported = _cli(target.env, "import", "--tenant", TARGET, "--from", str(zipped))
    assert imported.returncode == 0, imported.stderr
    assert _snapshot(target.settings, TARGET) == _snapshot(source.settings, SOURCE)


def test_format_1_export_and_another_tenants_ids(stack: LiveStack, source: Source,
                                                 target: Target, tmp_path: Path) -> None:
    """An export written before format 2 (no batches, series or frames in the manifest)
    imports as the same scans, its batches rebuilt from their scans; an export whose scans
    belong to another tenant here is refused, and not even the tenant is made."""
    out = tmp_path / "export"
    export_tenant(SOURCE, out, source.settings)
    manifest = json.loads((out / MANIFEST).read_text())
    old = {**manifest, "format": 1,
           "scans": {i: {k: v for k, v in e.items() if k != "frame"}
                     for i, e in manifest["scans"].items()}}
    del old["batches"], old["series"]
    (out / MANIFEST).write_text(json.dumps(old))
    report = import_tenant(TARGET, out, target.settings)
    assert (report.imported, report.series_imported) == (7, 0)
    before, after = _snapshot(source.settings, SOURCE), _snapshot(target.settings, TARGET)
    assert after["scans"] == before["scans"]
    assert {i: total for i, (total, _) in after["batches"].items()} == {
        i: total for i, (total, _) in before["batches"].items()}

    with pytest.raises(ExportError, match="belong to another tenant"):
        import_tenant("someone-else", out, target.settings)
    with sync_session(target.settings.sync_database_url) as session:
        assert session.scalar(select(Tenant.id).where(Tenant.name == "someone-else")) is None
