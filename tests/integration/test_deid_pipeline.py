"""No planted PHI leaves: DICOM files with markers in >20 identifying attributes go through a
live stack (uvicorn + a real Celery worker); none of the markers may appear in stored objects,
database rows, logs, PDFs, FHIR output, scan JSON or webhook bodies."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless
from pypdf import PdfReader
from sqlalchemy import MetaData, select

from shared.db.session import create_sync_db_engine
from shared.imaging import decode_image
from shared.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.support.dicomkit import mr_dataset, planted_phi, to_bytes
from tests.support.images import brain_slice
from tests.support.stack import (
    DICOM_STACK_ENV,
    DICOM_STACK_PORTS,
    LiveStack,
    wait_for_batch,
    wait_for_scan,
)
from tests.support.webhook_receiver import Receiver

MARK = "QJZ"  # letters that never occur in hex digests, UUIDs or base64 of our own making


def phi_files() -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """Three files of one patient: plain, JPEG 2000 compressed, multi-frame."""
    markers: dict[str, str] = {}
    files = []
    for i, (compress, frames) in enumerate(((False, 1), (True, 1), (False, 3))):
        pixels = brain_slice(40 + i, "glioma").astype(np.float64) / 255.0
        ds = mr_dataset(pixels, bits=12, frames=frames)
        markers.update(planted_phi(ds, MARK))
        if compress:
            ds.compress(JPEG2000Lossless)
        files.append((f"{MARK}DOE_JANE_{i}.dcm", to_bytes(ds)))
    return files, markers


def _all_stored_bytes(stack: LiveStack) -> list[tuple[str, bytes]]:
    found = [(str(p), p.read_bytes()) for p in stack.media_dir.rglob("*") if p.is_file()]
    if stack.standin is not None:
        found += [(f"cloudinary:{k}", a.data) for k, a in stack.standin.assets.items()]
    return found


def _database_dump(stack: LiveStack) -> list[tuple[str, bytes]]:
    engine = create_sync_db_engine(stack.sync_database_url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        out = []
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(select(table)):
                    for column, value in zip(table.columns, row, strict=True):
                        if value is None:
                            continue
                        raw = bytes(value) if isinstance(value, (bytes, memoryview)) else \
                            json.dumps(value, default=str).encode()
                        out.append((f"{table.name}.{column.name}", raw))
        return out
    finally:
        engine.dispose()


def _leaks(haystacks: list[tuple[str, bytes]], markers: dict[str, str]) -> list[str]:
    needles = {k: v.encode() for k, v in markers.items()}
    needles["filename"] = f"{MARK}DOE_JANE".encode()
    for date in ("19470312", "20190704"):
        needles[f"date {date}"] = date.encode()
    return [f"{kw} in {where}" for where, data in haystacks for kw, n in needles.items() if n in data]


@pytest.fixture(scope="module", params=["pg", "embedded"])
def stack(request: pytest.FixtureRequest, live_stack: Any) -> Iterator[LiveStack]:
    yield live_stack(request.param, port_range=DICOM_STACK_PORTS[request.param], env=DICOM_STACK_ENV,
                     tenant="hospital-deid")


def test_planted_phi_never_leaves(stack: LiveStack, tmp_path: Path) -> None:
    files, markers = phi_files()
    assert len(markers) >= 20
    for _, data in files:  # the markers really are in what the client sends
        assert all(m.encode() in data for m in list(markers.values())[:20])
    receiver = Receiver().start()
    artefacts: list[tuple[str, bytes]] = []
    try:
        with stack.client() as client:
            single = client.post("/v1/scans", files={"file": files[0]},
                                 data={"callback_url": receiver.url})
            assert single.status_code == 202, single.text
            archive = io.BytesIO()
            with zipfile.ZipFile(archive, "w") as zf:
                zf.writestr(f"{MARK}DOE_JANE/{files[1][0]}", files[1][1])
            batch = client.post("/v1/batches", data={"callback_url": receiver.url}, files=[
                ("files", (f"{MARK}DOE_JANE.zip", archive.getvalue(), "application/zip")),
                ("files", files[2])])
            assert batch.status_code == 202, batch.text
            assert len(batch.json()["scan_ids"]) == 2 and batch.json()["rejected"] == []
            wait_for_batch(client, batch.json()["id"])
            scans = [wait_for_scan(client, single.json()["id"])] + [
                wait_for_scan(client, sid) for sid in batch.json()["scan_ids"]]
            refs = {(s["patient_ref"], s["study_ref"]) for s in scans}
            assert len({p for p, _ in refs}) == 1, "one patient, one pseudonym"
            assert all(p.startswith("P-") and s.startswith("S-") for p, s in refs)
            for scan in scans:
                assert scan["filename"].startswith(scan["study_ref"])
                artefacts.append((f"scan {scan['id']} json", json.dumps(scan).encode()))
                pdf = client.get(f"/v1/scans/{scan['id']}/report.pdf")
                assert pdf.status_code == 200, pdf.text
                text = " ".join(p.extract_text() or "" for p in PdfReader(io.BytesIO(pdf.content)).pages)
                assert scan["patient_ref"] in text
                artefacts += [("pdf bytes", pdf.content), ("pdf text", text.encode())]
                fhir = client.get(f"/v1/scans/{scan['id']}/fhir")
                assert fhir.status_code == 200
                assert fhir.json()["subject"]["identifier"]["value"] == scan["patient_ref"]
                artefacts.append(("fhir", fhir.content))
            batch_pdf = client.get(f"/v1/batches/{batch.json()['id']}/report.pdf")
            assert batch_pdf.status_code == 200
            artefacts.append(("batch pdf", batch_pdf.content))
        receiver.wait_for(2, timeout_s=60)  # one scan webhook + one batch webhook
    finally:
        receiver.stop()
    assert len(receiver.received) == 2, stack.logs()
    secret = _tenant_webhook_secret(stack)
    for got in receiver.received:
        assert verify(secret, got.headers[TIMESTAMP_HEADER], got.body, got.headers[SIGNATURE_HEADER])
        artefacts.append(("webhook body", got.body))
    assert len(_leaks([("original", files[0][1])], markers)) > 20  # the search itself works
    assert all(s["state"] == "succeeded" for s in scans), scans
    logs = [(name, (stack.root / name).read_bytes()) for name in ("api.log", "worker.log")]
    stored = _all_stored_bytes(stack)
    assert any(name.endswith(".dcm") or "uploads" in name for name, _ in stored), stored
    assert any("-preview" in name for name, _ in stored), "the PNG renditions are searched too"
    leaks = _leaks(stored + _database_dump(stack) + logs + artefacts, markers)
    assert leaks == []


def test_dicom_scans_get_a_plain_png_preview_of_the_analysed_frame(stack: LiveStack) -> None:
    files, _ = phi_files()  # plain, JPEG 2000, multi-frame (the middle frame is analysed)
    expected = [np.clip(decode_image(data).pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
                for _, data in files]
    with stack.client() as client:
        ids = []
        for name, data in files:
            r = client.post("/v1/scans", files={"file": (name, data, "application/dicom")})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        for scan_id, want in zip(ids, expected, strict=True):
            scan = wait_for_scan(client, scan_id)
            assert scan["state"] == "succeeded" and scan["format"] == "dicom", scan
            assert scan["preview_url"] and scan["preview_url"] != scan["image_url"]
            assert httpx.get(scan["image_url"], timeout=30).content[128:132] == b"DICM"
            got = httpx.get(scan["preview_url"], timeout=30)  # signed: no API key needed
            assert got.status_code == 200, got.text
            # Pixels only: no tEXt/zTXt/iTXt/eXIf or any other ancillary chunk.
            assert _png_chunks(got.content) == ["IHDR", "IDAT", "IEND"]
            with Image.open(io.BytesIO(got.content)) as img:
                assert (img.format, img.mode, img.size) == ("PNG", "L", (256, 256))
                assert np.array_equal(np.asarray(img), want)


def _png_chunks(data: bytes) -> list[str]:
    """The chunk types of a PNG file, in order, consecutive repeats folded (many IDATs)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    kinds: list[str] = []
    pos = 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8].decode("ascii")
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
        pos += 12 + length
    return kinds


def _tenant_webhook_secret(stack: LiveStack) -> bytes:
    """The stack tenant's own webhook secret (each tenant signs with its own, made with it)."""
    from shared.db.models import Tenant

    engine = create_sync_db_engine(stack.sync_database_url)
    try:
        with engine.connect() as conn:
            secret = conn.scalar(select(Tenant.webhook_secret).where(Tenant.name == stack.tenant))
    finally:
        engine.dispose()
    assert secret, "the tenant has no webhook secret of its own"
    return secret.encode()
