"""Scans and batches through the HTTP API to a real Celery worker, on both deployments:
the embedded default (SQLite + SQLite broker + local disk) and PostgreSQL + Redis +
Cloudinary (the real SDK against the signature-checking stand-in)."""

from __future__ import annotations

import io
import json
import math
import time
from datetime import datetime

import httpx
import pytest
from PIL import Image
from sqlalchemy import create_engine, func, select, update

from shared.db.models import Scan, ScanEvent
from shared.labels import CLASSES
from shared.queue import PROCESS_SCANS, make_producer
from shared.settings import Settings
from tests.support.images import (
    brain_jpeg,
    brain_png,
    colour_photo_png,
    tiny_png,
    truncated_png,
)
from tests.support.stack import LiveStack, read_sse, wait_for_batch, wait_for_scan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["embedded", "pg"])
def stack(request: pytest.FixtureRequest, live_stack) -> LiveStack:
    return live_stack(request.param)


@pytest.fixture(scope="module")
def client(stack: LiveStack):
    with stack.client() as c:
        yield c


def _submit(client: httpx.Client, data: bytes, name: str = "slice.png", **form: str) -> str:
    r = client.post("/v1/scans", files={"file": (name, data, "application/octet-stream")},
                    data=form)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] == "queued" and "status" not in body and body["links"]["self"] == f"/v1/scans/{body['id']}"
    return body["id"]


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


def test_single_png_and_jpeg_succeed(stack: LiveStack, client: httpx.Client,
                                     stack_model_card: dict) -> None:
    card = stack_model_card
    uploads = {"png": brain_png(11, "glioma"), "jpeg": brain_jpeg(12, "pituitary")}
    ids = {fmt: _submit(client, data, f"case.{fmt}") for fmt, data in uploads.items()}
    for fmt, scan_id in ids.items():
        body = wait_for_scan(client, scan_id)
        assert body["state"] == "succeeded", body
        assert body["format"] == fmt and body["attempts"] == 1 and body["error"] is None
        pred = body["prediction"]
        assert list(pred["probabilities"]) == list(CLASSES)
        assert math.isclose(sum(pred["probabilities"].values()), 1.0, abs_tol=1e-4)
        top = max(pred["probabilities"], key=pred["probabilities"].get)
        assert pred["label"] == top and pred["confidence"] == pred["probabilities"][top]
        assert body["model"] == {"name": card["name"], "version": card["version"],
                                 "sha256": card["weights"]["sha256"]}
        assert body["gate"]["accepted"] is True
        assert body["timings"]["inference_ms"] > 0 and body["timings"]["total_s"] > 0
        assert body["started_at"] <= body["finished_at"]
        # Signed links work without the API key, and serve what we expect.
        original = httpx.get(body["image_url"], timeout=30)
        assert original.status_code == 200 and original.content == uploads[fmt]
        # Browsers show PNG and JPEG as they are: the preview is the original, no rendition.
        preview = httpx.get(body["preview_url"], timeout=30)
        assert preview.status_code == 200 and preview.content == uploads[fmt]
        stored = [p.name for p in stack.media_dir.rglob("*")] + (
            [pid for _, pid in stack.standin.assets] if stack.standin else [])
        assert not any(f"{scan_id}-preview" in name for name in stored)
        for key in ("heatmap_url", "overlay_url"):
            image = httpx.get(body[key], timeout=30)
            assert image.status_code == 200, (key, image.text)
            assert _png_size(image.content) == (256, 256)  # the original's frame


def test_signed_links_refuse_tampering(stack: LiveStack, client: httpx.Client) -> None:
    body = wait_for_scan(client, _submit(client, brain_png(13)))
    url = body["heatmap_url"]
    assert httpx.get(url, timeout=30).status_code == 200
    tampered = url.replace("heatmap", "overlay")  # another asset under the same signature
    response = httpx.get(tampered, timeout=30)
    assert response.status_code in (401, 403), response.text
    if stack.backend == "pg":
        assert "authenticated" in url and stack.standin.rejected >= 1
        assert {kind for kind, _ in stack.standin.assets} == {"authenticated"}
        assert all(pid.startswith(("neuroscan/uploads/", "neuroscan/results/"))
                   for _, pid in stack.standin.assets)


def test_batch_of_fifty_succeeds(stack: LiveStack, client: httpx.Client) -> None:
    files = [("files", (f"case-{i:03d}.png", brain_png(100 + i), "image/png")) for i in range(50)]
    r = client.post("/v1/batches", files=files)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert len(accepted["scan_ids"]) == 50 and accepted["rejected"] == []
    batch = wait_for_batch(client, accepted["id"])
    assert batch["counts"] == {"queued": 0, "processing": 0, "succeeded": 50, "failed": 0}
    assert batch["total"] == 50 and batch["finished_at"] is not None
    assert [s["id"] for s in batch["scans"]] == accepted["scan_ids"]
    assert all(s["prediction"]["label"] in CLASSES and s["heatmap_url"] for s in batch["scans"])
    # Scans are processed in batches: a task carries up to WORKER_BATCH_SIZE of them.
    assert max(s["timings"]["batch_size"] for s in batch["scans"]) > 1
    page = client.get("/v1/scans", params={"batch_id": accepted["id"], "page_size": 100}).json()
    assert page["total"] == 50


def test_batch_accepts_good_files_and_reports_bad_ones(client: httpx.Client) -> None:
    files = [
        ("files", ("good-1.png", brain_png(21), "image/png")),
        ("files", ("notes.txt", b"not an image at all", "text/plain")),
        ("files", ("good-2.jpg", brain_jpeg(22), "image/jpeg")),
        ("files", ("broken.png", truncated_png(), "image/png")),
        ("files", ("thumb.png", tiny_png(), "image/png")),
    ]
    r = client.post("/v1/batches", files=files)
    assert r.status_code == 202, r.text
    body = r.json()
    assert len(body["scan_ids"]) == 2
    assert [(x["filename"], x["error"]["code"]) for x in body["rejected"]] == [
        ("notes.txt", "unsupported_media_type"), ("broken.png", "undecodable_image"),
        ("thumb.png", "image_too_small")]
    batch = wait_for_batch(client, body["id"])
    assert batch["total"] == 2 and batch["counts"]["succeeded"] == 2

    only_bad = client.post("/v1/batches", files=[files[1], files[3]])
    assert only_bad.status_code == 422
    assert only_bad.json()["error"]["code"] == "no_acceptable_files"
    assert len(only_bad.json()["rejected"]) == 2


@pytest.mark.parametrize(("data", "status", "code"), [
    (b"GIF89a not supported", 415, "unsupported_media_type"),
    (b"", 422, "empty_file"),
    (truncated_png(), 422, "undecodable_image"),
    (tiny_png(), 422, "image_too_small"),
])
def test_bad_uploads_get_clear_errors(client: httpx.Client, data: bytes, status: int,
                                      code: str) -> None:
    r = client.post("/v1/scans", files={"file": ("upload.bin", data, "image/png")})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_size_limit_and_auth_errors(stack: LiveStack, client: httpx.Client) -> None:
    limit = 32 * 1024 * 1024
    # Just over the limit: passes the Content-Length pre-check, stopped while reading.
    slightly = b"\x89PNG\r\n\x1a\n" + bytes(limit)
    r = client.post("/v1/scans", files={"file": ("big.png", slightly, "image/png")})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "file_too_large")
    r = client.post("/v1/scans", files={"other": ("x.png", brain_png(1), "image/png")})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_error")
    with httpx.Client(base_url=stack.base_url) as anonymous:
        r = anonymous.post("/v1/scans", files={"file": ("a.png", brain_png(1), "image/png")})
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    with stack.client(api_key="nsk_not-a-real-key") as wrong:
        assert wrong.get("/v1/me").status_code == 401


def test_not_a_brain_mri_fails_permanently(client: httpx.Client) -> None:
    body = wait_for_scan(client, _submit(client, colour_photo_png(), "holiday.png"))
    assert body["state"] == "failed" and body["attempts"] == 1
    assert body["error"]["code"] == "not_brain_mri" and body["error"]["message"]
    assert body["gate"]["accepted"] is False and body["prediction"] is None


def test_sse_delivers_every_change_and_resumes(stack: LiveStack, client: httpx.Client) -> None:
    scan_id = _submit(client, brain_png(31))
    received = []
    with client.stream("GET", f"/v1/scans/{scan_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in read_sse(response):
            received.append((event, time.time()))
    events = [e for e, _ in received]
    assert [e["event"] for e in events] == ["queued", "processing", "succeeded"]
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 3
    payloads = [json.loads(e["data"]) for e in events]
    assert all(p["scan_id"] == scan_id for p in payloads)
    assert payloads[-1]["prediction"]["label"] in CLASSES
    # Events that happened while we listened arrived within a fraction of a second.
    for (event, got_at), payload in zip(received[1:], payloads[1:], strict=True):
        lag = got_at - datetime.fromisoformat(payload["at"]).timestamp()
        assert lag < 1.5, (event["event"], lag)

    # Reconnecting with Last-Event-ID gives exactly what came after it.
    headers = {"Last-Event-ID": events[0]["id"]}
    with client.stream("GET", f"/v1/scans/{scan_id}/events", headers=headers) as response:
        resumed = list(read_sse(response))
    assert [(e["id"], e["event"]) for e in resumed] == [(e["id"], e["event"]) for e in events[1:]]
    with client.stream("GET", f"/v1/scans/{scan_id}/events",
                       headers={"Last-Event-ID": events[-1]["id"]}) as response:
        assert list(read_sse(response)) == []


def test_sse_resume_mid_stream(client: httpx.Client) -> None:
    """Disconnect after the first event, reconnect later: nothing is lost or repeated."""
    scan_id = _submit(client, brain_png(32))
    with client.stream("GET", f"/v1/scans/{scan_id}/events") as response:
        first = next(read_sse(response))
    assert first["event"] == "queued"
    with client.stream("GET", f"/v1/scans/{scan_id}/events",
                       headers={"Last-Event-ID": first["id"]}) as response:
        rest = [e["event"] for e in read_sse(response)]
    assert rest == ["processing", "succeeded"]


def test_batch_sse_ends_when_every_scan_is_final(client: httpx.Client) -> None:
    files = [("files", (f"b{i}.png", brain_png(40 + i), "image/png")) for i in range(3)]
    files.append(("files", ("photo.png", colour_photo_png(), "image/png")))
    batch = client.post("/v1/batches", files=files).json()
    with client.stream("GET", f"/v1/batches/{batch['id']}/events") as response:
        events = list(read_sse(response))
    by_scan: dict[str, list[str]] = {}
    for event in events:
        payload = json.loads(event["data"])
        assert payload["batch_id"] == batch["id"]
        by_scan.setdefault(payload["scan_id"], []).append(event["event"])
    assert set(by_scan) == set(batch["scan_ids"])
    finals = sorted(states[-1] for states in by_scan.values())
    assert finals == ["failed", "succeeded", "succeeded", "succeeded"]
    assert all(states[0] == "queued" and states[1] == "processing" for states in by_scan.values())


def test_another_tenants_scan_is_not_found(stack: LiveStack, client: httpx.Client) -> None:
    scan_id = _submit(client, brain_png(51))
    batch_id = client.post("/v1/batches", files=[("files", ("x.png", brain_png(52),
                                                             "image/png"))]).json()["id"]
    other_key = stack.new_key(f"other-hospital-{stack.backend}")
    with stack.client(api_key=other_key) as other:
        assert other.get("/v1/me").json()["tenant"]["name"].startswith("other-hospital")
        for path in (f"/v1/scans/{scan_id}", f"/v1/scans/{scan_id}/events",
                     f"/v1/batches/{batch_id}", f"/v1/batches/{batch_id}/events"):
            r = other.get(path)
            assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found"), path
        assert scan_id not in {s["id"] for s in other.get("/v1/scans").json()["items"]}
    assert client.get(f"/v1/scans/{scan_id}").status_code == 200


def test_task_run_twice_leaves_one_result_and_one_asset(stack: LiveStack,
                                                         client: httpx.Client) -> None:
    scan_id = _submit(client, brain_png(61))
    first = wait_for_scan(client, scan_id)
    assert first["state"] == "succeeded"
    engine = create_engine(stack.sync_database_url)
    producer = make_producer(Settings(broker_url=stack.env["BROKER_URL"],
                                      queue_name=stack.env["QUEUE_NAME"]))
    try:
        # A duplicate delivery of a finished scan changes nothing.
        producer.send_task(PROCESS_SCANS, args=[[scan_id]])
        # A worker that died after storing the images but before acknowledging: the scan is
        # still `processing` and the broker delivers the task again.
        with engine.begin() as conn:
            conn.execute(update(Scan).where(Scan.id == scan_id)
                         .values(state="processing", finished_at=None))
        producer.send_task(PROCESS_SCANS, args=[[scan_id]])
        second = wait_for_scan(client, scan_id)
        with engine.connect() as conn:
            rows = conn.scalar(select(func.count()).select_from(Scan)
                               .where(Scan.id == scan_id))
            succeeded_events = conn.scalar(select(func.count()).select_from(ScanEvent).where(
                ScanEvent.scan_id == scan_id, ScanEvent.state == "succeeded"))
    finally:
        engine.dispose()
    assert second["state"] == "succeeded" and second["attempts"] == 2
    assert rows == 1 and succeeded_events == 2
    assert second["prediction"] == first["prediction"]
    if stack.backend == "pg":
        mine = {pid: a for (_, pid), a in stack.standin.assets.items() if scan_id in pid}
        assert sorted(mine) == [f"neuroscan/results/{scan_id}-heatmap",
                                f"neuroscan/results/{scan_id}-overlay",
                                f"neuroscan/uploads/{scan_id}"]
        assert all(a.uploads == 2 for a in mine.values())  # written twice, one asset each
    else:
        stored = sorted(p.name for p in stack.media_dir.rglob(f"{scan_id}*"))
        assert stored == [f"{scan_id}-heatmap.png", f"{scan_id}-overlay.png", f"{scan_id}.png"]


def test_history_filters_and_pages(client: httpx.Client) -> None:
    everything = client.get("/v1/scans", params={"page_size": 100}).json()
    assert everything["total"] >= 10
    created = [s["created_at"] for s in everything["items"]]
    assert created == sorted(created, reverse=True)
    failed = client.get("/v1/scans", params={"state": "failed"}).json()
    assert failed["total"] >= 1 and all(s["state"] == "failed" for s in failed["items"])
    some_label = next(s["prediction"]["label"] for s in everything["items"] if s["prediction"])
    labelled = client.get("/v1/scans", params={"label": some_label, "page_size": 100}).json()
    assert labelled["total"] >= 1
    assert all(s["prediction"]["label"] == some_label for s in labelled["items"])
    page2 = client.get("/v1/scans", params={"page": 2, "page_size": 3}).json()
    assert [s["id"] for s in page2["items"]] == [s["id"] for s in everything["items"][3:6]]
    assert client.get("/v1/scans", params={"label": "banana"}).status_code == 422


def test_storage_outage_is_retried_with_backoff(live_stack) -> None:
    """Cloudinary answers 500 twice: each upload is tried again in place (backoff,
    STORAGE_MAX_ATTEMPTS), so the scan succeeds in its first model pass."""
    stack = live_stack("pg")
    stack.standin.fail_uploads = 2
    with stack.client() as client:
        body = wait_for_scan(client, _submit(client, brain_png(71)))
    assert stack.standin.fail_uploads == 0
    assert body["state"] == "succeeded" and body["attempts"] == 1
