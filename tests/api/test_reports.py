"""Report, FHIR and webhook behaviour through a live stack (uvicorn + a real Celery worker)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Scan, Tenant, utcnow
from shared.db.session import create_sync_db_engine
from shared.db.webhook_models import WebhookDelivery
from tests.support.images import brain_png, colour_photo_png
from tests.support.stack import DICOM_STACK_ENV, DICOM_STACK_PORTS, LiveStack, wait_for_scan
from tests.support.webhook_receiver import Receiver


@pytest.fixture(scope="module")
def stack(live_stack: Any) -> LiveStack:
    return live_stack("pg", port_range=DICOM_STACK_PORTS["pg"], env=DICOM_STACK_ENV, tenant="hospital-deid")


def _db(stack: LiveStack) -> Any:
    return create_sync_db_engine(stack.sync_database_url)


def test_scan_pdf_from_the_api_renders_with_ink(stack: LiveStack, tmp_path: Path) -> None:
    with stack.client() as client:
        scan_id = client.post("/v1/scans", files={"file": ("a.png", brain_png(11))}).json()["id"]
        scan = wait_for_scan(client, scan_id)
        pdf = client.get(f"/v1/scans/{scan_id}/report.pdf")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert f"neuroscan-{scan_id}.pdf" in pdf.headers["content-disposition"]
    (tmp_path / "r.pdf").write_bytes(pdf.content)
    subprocess.run(["pdftoppm", "-r", "60", "-f", "1", "-l", "1", "-png", str(tmp_path / "r.pdf"),
                    str(tmp_path / "page")], check=True, timeout=60)
    page = np.asarray(Image.open(next(tmp_path.glob("page*.png"))).convert("L"))
    assert 0.05 < float(np.mean(page < 200)) < 0.9
    assert scan["state"] == "succeeded"


def test_failed_scan_still_has_a_report_and_a_cancelled_fhir(stack: LiveStack) -> None:
    with stack.client() as client:
        scan_id = client.post("/v1/scans", files={"file": ("p.png", colour_photo_png())}).json()["id"]
        scan = wait_for_scan(client, scan_id)
        assert scan["state"] == "failed"
        assert client.get(f"/v1/scans/{scan_id}/report.pdf").status_code == 200
        fhir = client.get(f"/v1/scans/{scan_id}/fhir")
    assert fhir.headers["content-type"].startswith("application/fhir+json")
    assert fhir.json()["status"] == "cancelled"


def test_unfinished_scan_is_409_and_other_tenants_get_404(stack: LiveStack) -> None:
    engine = _db(stack)
    try:
        with Session(engine) as session, session.begin():
            tenant = session.scalar(select(Tenant).where(Tenant.name == stack.tenant))
            row = Scan(tenant_id=tenant.id, state="queued", format="png", size_bytes=1,
                             sha256="0" * 64, created_at=utcnow())
            session.add(row)
            session.flush()
            scan_id = row.id
    finally:
        engine.dispose()
    with stack.client() as client:
        busy = client.get(f"/v1/scans/{scan_id}/report.pdf")
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "scan_not_finished"
        assert client.get(f"/v1/scans/{scan_id}/fhir").json()["status"] == "registered"
    with stack.client(api_key=stack.new_key("another-hospital")) as other:
        for path in ("report.pdf", "fhir"):
            assert other.get(f"/v1/scans/{scan_id}/{path}").status_code == 404


@pytest.mark.parametrize("url", ["https://10.0.0.1/hook", "https://169.254.169.254/x",
                                 "http://93.184.216.34/hook", "https://[fe80::1]/x"])
def test_callback_url_is_checked_at_submission(stack: LiveStack, url: str) -> None:
    with stack.client() as client:
        single = client.post("/v1/scans", files={"file": ("a.png", brain_png(12))},
                             data={"callback_url": url})
        batch = client.post("/v1/batches", files=[("files", ("a.png", brain_png(12)))],
                            data={"callback_url": url})
    for response in (single, batch):
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_callback_url"


def test_failing_receiver_is_retried_by_the_worker_and_attempts_recorded(stack: LiveStack) -> None:
    receiver = Receiver(statuses=[500, 502, 200]).start()
    try:
        with stack.client() as client:
            scan_id = client.post("/v1/scans", files={"file": ("a.png", brain_png(13))},
                                  data={"callback_url": receiver.url}).json()["id"]
            wait_for_scan(client, scan_id)
        receiver.wait_for(3, timeout_s=90)
    finally:
        receiver.stop()
    assert len(receiver.received) == 3, stack.logs()
    engine = _db(stack)
    try:
        with Session(engine) as session:
            rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.scan_id == scan_id)
                                   .order_by(WebhookDelivery.attempt)).all()
            seen = [(r.attempt, r.status_code) for r in rows]
    finally:
        engine.dispose()
    assert seen == [(1, 500), (2, 502), (3, 200)]
