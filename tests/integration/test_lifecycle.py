"""Data lifecycle on both stacks: originals leave the database once stored,
deletion on request (a DICOM series with its last slice), retention's purge, and a tenant's
export (its re-import: tests/integration/test_export_import.py).

A stack of its own (ports 19500-19599): the purge tests move the clock years ahead and would
remove other tests' scans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text

from shared.db.dicom_models import DicomInstance, DicomSeries
from shared.db.lifecycle_models import AuditEvent, TenantRetention
from shared.db.models import Scan, ScanEvent, ScanUpload, Tenant, utcnow
from shared.db.session import sync_session
from shared.export import MANIFEST, export_tenant
from shared.lifecycle import purge_once, settle_results
from shared.settings import Settings
from shared.storage import get_storage
from tests.support.images import brain_png
from tests.support.stack import LiveStack, wait_for_batch, wait_for_scan

TENANT = "lifecycle-hospital"


@pytest.fixture(scope="module", params=["embedded", "pg"])
def stack(request: pytest.FixtureRequest, live_stack) -> LiveStack:
    return live_stack(request.param, port_range=(19500, 19599), tenant=TENANT)


@pytest.fixture
def client(stack: LiveStack):
    with stack.client() as c:
        yield c


@pytest.fixture(scope="module")
def settings(stack: LiveStack) -> Settings:
    env = stack.env
    return Settings(database_url=env["DATABASE_URL"], media_dir=env["MEDIA_DIR"],
                    secret_key=env["SECRET_KEY"], cloudinary_url=env.get("CLOUDINARY_URL"),
                    cloudinary_upload_prefix=env.get("CLOUDINARY_UPLOAD_PREFIX"),
                    model_dir=env["MODEL_DIR"], model_name=env["MODEL_NAME"])


def _submit(client: httpx.Client, seed: int) -> str:
    r = client.post("/v1/scans", files={"file": (f"s{seed}.png", brain_png(seed), "image/png")})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def stow_series(client: httpx.Client, slices: int = 2, seed: int = 0) -> tuple[str, list[str]]:
    """A brain MR series of `slices` slices sent by STOW-RS, marked complete; returns the
    series id and its scans' ids (in instance order)."""
    from pydicom.uid import generate_uid

    from tests.support import dicomkit

    study, series_uid, parts = generate_uid(), generate_uid(), []
    for k in range(slices):
        ds = dicomkit.mr_dataset(dicomkit.brain_like(seed=seed + k))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.SeriesDescription, ds.BodyPartExamined = "AX T1 BRAIN", "BRAIN"
        ds.InstanceNumber = k + 1
        parts.append(b"--nsb\r\nContent-Type: application/dicom\r\n\r\n"
                     + dicomkit.to_bytes(ds) + b"\r\n")
    answer = client.post("/dicomweb/studies", content=b"".join(parts) + b"--nsb--\r\n",
                         headers={"Content-Type": 'multipart/related; type="application/dicom"; '
                                                  "boundary=nsb"})
    assert answer.status_code == 200, answer.text
    stored = answer.json()["00081199"]["Value"]
    series_ids = {item["00091010"]["Value"][0] for item in stored}
    assert len(series_ids) == 1
    series_id = series_ids.pop()
    assert client.post(f"/v1/series/{series_id}/complete").status_code == 202
    return series_id, [item["00091011"]["Value"][0] for item in stored]


def wait_for_series(client: httpx.Client, series_id: str, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get(f"/v1/series/{series_id}").raise_for_status().json()
        if body["state"] in ("succeeded", "failed"):
            return body
        assert time.monotonic() < deadline, f"series {series_id} still {body['state']}"
        time.sleep(0.2)


def _objects(stack: LiveStack) -> set[str]:
    """Every object storage holds, by name."""
    if stack.standin is not None:
        return {public_id for (_type, public_id) in stack.standin.assets}
    return {str(p.relative_to(stack.media_dir)) for p in stack.media_dir.rglob("*") if p.is_file()}


def _objects_of(stack: LiveStack, scan_id: str) -> set[str]:
    return {name for name in _objects(stack) if scan_id in name}


def _rows(stack: LiveStack, scan_id: str) -> dict[str, int]:
    engine = create_engine(stack.sync_database_url)
    try:
        with engine.connect() as conn:
            return {table: conn.execute(text(f"SELECT count(*) FROM {table} WHERE {column} = :i"),
                                        {"i": scan_id}).scalar_one()
                    for table, column in (("scan_results", "id"), ("scan_events", "scan_id"),
                                          ("scan_uploads", "scan_id"),
                                          ("webhook_deliveries", "scan_id"))}
    finally:
        engine.dispose()


def _gone(stack: LiveStack, scan_id: str) -> None:
    assert _objects_of(stack, scan_id) == set()
    assert set(_rows(stack, scan_id).values()) == {0}


def _series_rows(stack: LiveStack, series_id: str) -> tuple[int, int]:
    """(dicom_series rows, dicom_instances rows) of one series."""
    engine = create_engine(stack.sync_database_url)
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(text(f"SELECT count(*) FROM {table} WHERE {column} = :i"),
                                      {"i": series_id}).scalar_one()
                         for table, column in (("dicom_series", "id"),
                                               ("dicom_instances", "series_id")))  # type: ignore[return-value]
    finally:
        engine.dispose()


def test_series_goes_with_its_last_slice(stack: LiveStack, client: httpx.Client) -> None:
    """Deleting one slice of a series keeps the series (and its other slice); deleting the
    last one removes the series finding too."""
    series_id, (first, second) = stow_series(client, slices=2, seed=100)
    body = wait_for_series(client, series_id)
    assert body["state"] == "succeeded" and len(body["slices"]) == 2
    assert _series_rows(stack, series_id) == (1, 2)

    assert client.delete(f"/v1/scans/{first}").status_code == 204
    left = client.get(f"/v1/series/{series_id}")
    assert left.status_code == 200 and [s["scan_id"] for s in left.json()["slices"]] == [second]
    assert _series_rows(stack, series_id) == (1, 1)

    assert client.delete(f"/v1/scans/{second}").status_code == 204
    assert client.get(f"/v1/series/{series_id}").status_code == 404
    assert series_id not in {s["id"] for s in client.get("/v1/series").json()}
    assert _series_rows(stack, series_id) == (0, 0)
    for scan_id in (first, second):
        _gone(stack, scan_id)


def test_original_leaves_the_database_once_stored(stack: LiveStack, client: httpx.Client) -> None:
    scan_id = _submit(client, 1)
    body = wait_for_scan(client, scan_id)
    assert body["state"] == "succeeded"
    assert _rows(stack, scan_id)["scan_uploads"] == 0
    assert any(name.startswith(("uploads/", "neuroscan/uploads/"))
               for name in _objects_of(stack, scan_id))
    # The original still comes back through its link and in the PDF report.
    assert httpx.get(body["image_url"], timeout=30).content == brain_png(1)
    assert client.get(f"/v1/scans/{scan_id}/report.pdf").status_code == 200


def test_delete_scan_leaves_nothing(stack: LiveStack, client: httpx.Client,
                                    settings: Settings) -> None:
    doomed, kept = _submit(client, 2), _submit(client, 3)
    body = wait_for_scan(client, doomed)
    wait_for_scan(client, kept)
    links = [body[k] for k in ("image_url", "heatmap_url", "overlay_url") if body.get(k)]
    assert links and all(httpx.get(u, timeout=30).status_code == 200 for u in links)
    assert _objects_of(stack, doomed)

    other = stack.new_key("another-hospital")
    assert client.delete(f"/v1/scans/{doomed}",
                         headers={"Authorization": f"Bearer {other}"}).status_code == 404
    r = client.delete(f"/v1/scans/{doomed}", headers={"X-Request-ID": "req-delete-1"})
    assert r.status_code == 204, r.text

    assert client.get(f"/v1/scans/{doomed}").status_code == 404
    assert client.get(f"/v1/scans/{doomed}/report.pdf").status_code == 404
    assert client.delete(f"/v1/scans/{doomed}").status_code == 404
    assert all(httpx.get(u, timeout=30).status_code == 404 for u in links)
    listed = client.get("/v1/scans", params={"page_size": 100}).json()["items"]
    assert doomed not in {s["id"] for s in listed} and kept in {s["id"] for s in listed}
    _gone(stack, doomed)
    assert _objects_of(stack, kept) and _rows(stack, kept)["scan_results"] == 1

    with sync_session(settings.sync_database_url) as session:
        audit = session.scalars(select(AuditEvent).where(  # reads are audited too
            AuditEvent.target == f"scan:{doomed}", AuditEvent.action == "delete")).all()
        assert [(a.action, a.request_id) for a in audit] == [("delete", "req-delete-1")]
        assert audit[0].key_id is not None and audit[0].tenant_id is not None


def test_delete_batch_leaves_nothing(stack: LiveStack, client: httpx.Client) -> None:
    files = [("files", (f"b{i}.png", brain_png(10 + i), "image/png")) for i in range(3)]
    batch = client.post("/v1/batches", files=files).json()
    wait_for_batch(client, batch["id"])
    assert client.delete(f"/v1/batches/{batch['id']}").status_code == 204
    assert client.get(f"/v1/batches/{batch['id']}").status_code == 404
    for scan_id in batch["scan_ids"]:
        assert client.get(f"/v1/scans/{scan_id}").status_code == 404
        _gone(stack, scan_id)


def test_delete_while_processing_is_not_resurrected(stack: LiveStack,
                                                    client: httpx.Client) -> None:
    """Deleted at once, while the worker takes the batch: once it is idle, nothing is back."""
    files = [("files", (f"r{i}.png", brain_png(20 + i), "image/png")) for i in range(6)]
    batch = client.post("/v1/batches", files=files).json()
    time.sleep(0.3)
    assert client.delete(f"/v1/batches/{batch['id']}").status_code == 204
    probe = _submit(client, 30)  # the worker is past the deleted batch when this is done
    wait_for_scan(client, probe)
    time.sleep(1.0)
    for scan_id in batch["scan_ids"]:
        assert client.get(f"/v1/scans/{scan_id}").status_code == 404
        _gone(stack, scan_id)


def test_worker_result_for_a_deleted_scan_is_dropped(stack: LiveStack,
                                                     settings: Settings) -> None:
    """The guard in the worker's result write, met head on: assets stored for a scan whose
    row is gone are removed, and no row is written."""
    storage = get_storage(settings)
    ghost = "00000000-0000-4000-8000-00000000dead"
    refs = {"image_ref": storage.put("uploads", f"{ghost}.png", brain_png(5), "image/png"),
            "heatmap_ref": storage.put("results", f"{ghost}-heatmap.png", brain_png(6),
                                       "image/png")}
    assert _objects_of(stack, ghost)
    with sync_session(settings.sync_database_url) as session:
        settle_results(session, {ghost: refs}, [], storage)
    _gone(stack, ghost)


def test_export_contains_every_scan_and_resumes(stack: LiveStack, client: httpx.Client,
                                                settings: Settings, tmp_path: Path) -> None:
    wait_for_scan(client, _submit(client, 40))
    ids = {s["id"] for s in client.get("/v1/scans", params={"page_size": 100}).json()["items"]}
    out = tmp_path / "export"
    report = export_tenant(TENANT, out, settings)
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["scans"]) == ids and report.written == len(ids)
    for scan_id, entry in manifest["scans"].items():
        folder = out / "scans" / scan_id
        result = json.loads((folder / "result.json").read_text())
        assert result == client.get(f"/v1/scans/{scan_id}").json() | {
            k: result[k] for k in ("image_url", "preview_url", "heatmap_url", "overlay_url")}
        if entry["state"] == "succeeded":
            assert {"fhir.json", "report.pdf", "original.png", "heatmap.png",
                    "overlay.png"} <= set(entry["files"])
            assert (folder / "original.png").read_bytes() == httpx.get(
                client.get(f"/v1/scans/{scan_id}").json()["image_url"], timeout=30).content
            assert (folder / "report.pdf").read_bytes().startswith(b"%PDF")
    again = export_tenant(TENANT, out, settings)
    assert (again.written, again.skipped) == (0, len(ids))
    victim = next(iter(ids))
    (out / "scans" / victim / "result.json").write_text("{}")
    third = export_tenant(TENANT, out, settings)
    assert (third.written, third.skipped) == (1, len(ids) - 1)


def _cli(stack: LiveStack, *args: str) -> str:
    env = {**os.environ, **stack.settings_env()}
    r = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_purge_dry_run_cli(stack: LiveStack) -> None:
    assert "would remove nothing" in _cli(stack, "purge", "--dry-run")  # nothing old enough


def test_purge_after_retention_leaves_nothing_expired(stack: LiveStack, client: httpx.Client,
                                                      settings: Settings) -> None:
    scan_ids = [_submit(client, 50 + i) for i in range(2)]
    for scan_id in scan_ids:
        wait_for_scan(client, scan_id)
    series_id, _slices = stow_series(client, slices=2, seed=150)
    wait_for_series(client, series_id)
    url = settings.sync_database_url

    # A tenant's own retention: originals for 1 day, the rest by the deployment's defaults.
    shown = _cli(stack, "retention", "--tenant", TENANT, "--originals-days", "1")
    assert "originals: 1 days" in shown and f"results: {settings.retention_results_days} days" \
        in shown
    with sync_session(url) as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == TENANT))
        assert session.get(TenantRetention, tenant_id).originals_days == 1
    later = utcnow() + timedelta(days=2)
    dry = purge_once(settings, now=later, dry_run=True)
    assert set(scan_ids) <= set(dry.removed[TENANT]["originals"])
    assert all(_objects_of(stack, s) for s in scan_ids)  # a dry run touches nothing
    done = purge_once(settings, now=later, limit=1000)
    assert set(scan_ids) <= set(done.removed[TENANT]["originals"])
    for scan_id in scan_ids:
        body = client.get(f"/v1/scans/{scan_id}").json()
        assert body["image_url"] is None and body["heatmap_url"]  # derived images stay
        assert not any("uploads/" in name for name in _objects_of(stack, scan_id))
    assert not purge_once(settings, now=later)  # idempotent: nothing left to do

    # Past every default: nothing of any finished scan is left, in storage or the database.
    end = utcnow() + timedelta(days=settings.retention_results_days + 1)
    while purge_once(settings, now=end, limit=2):  # bounded batches until done
        pass
    with sync_session(url) as session:
        assert session.scalar(select(func.count()).select_from(Scan).where(
            Scan.state.in_(("succeeded", "failed")))) == 0
        assert session.scalar(select(func.count()).select_from(ScanEvent)) == 0
        assert session.scalar(select(func.count()).select_from(ScanUpload)) == 0
        # The series findings went with their last slices.
        assert session.scalar(select(func.count()).select_from(DicomSeries)) == 0
        assert session.scalar(select(func.count()).select_from(DicomInstance)) == 0
        purges = session.scalars(select(AuditEvent).where(AuditEvent.action == "purge")).all()
        assert {a.target for a in purges} >= {"originals", "results"}
    assert _objects(stack) == set()
    for scan_id in scan_ids:
        assert client.get(f"/v1/scans/{scan_id}").status_code == 404
    assert client.get(f"/v1/series/{series_id}").status_code == 404
