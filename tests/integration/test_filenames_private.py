"""Client file names (which often name the patient) stay out of PDF reports and webhook
payloads unless the tenant opts in (`neuroscan privacy --share-filenames`); the result API
still shows them to their owner."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from typer.testing import CliRunner

from shared.db.migrate import upgrade_to_head
from shared.db.models import Batch, Scan, utcnow
from shared.db.session import sync_session
from shared.db.tenants import issue_key
from shared.schemas import batch_out, scan_out
from shared.webhooks import build_payload
from tests.support.images import brain_png
from tests.support.inprocess import asgi_client, settings_env
from tests.support.webhook_receiver import Receiver

NAME = "Doe_John_MRN-12345.png"
TENANT = "privacy-hospital"
PROBS = {"glioma": 0.9, "meningioma": 0.05, "notumor": 0.03, "pituitary": 0.02}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("names")
    with settings_env(database_url=f"sqlite+aiosqlite:///{root / 'db.sqlite'}",
                      broker_url=f"sqla+sqlite:///{root / 'broker.db'}",
                      media_dir=str(root / "media"), secret_key="names-test-secret"):
        upgrade_to_head()
        from shared.storage import get_storage

        with sync_session() as session:
            issued = issue_key(session, TENANT)
            batch = Batch(tenant_id=issued.tenant.id, total=1, finished_at=utcnow())
            session.add(batch)
            session.flush()
            scan = Scan(tenant_id=issued.tenant.id, batch_id=batch.id, state="succeeded",
                              filename=NAME, format="png", size_bytes=10, sha256="0" * 64,
                              label="glioma", confidence=0.9, probabilities=PROBS,
                              finished_at=utcnow())
            session.add(scan)
            session.flush()
            scan.image_ref = get_storage().put("uploads", f"{scan.id}.png", brain_png(2),
                                               "image/png")
            ids = {"key": issued.key, "scan": scan.id, "batch": batch.id}
        yield ids


@pytest.fixture()
async def client(env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(Authorization=f"Bearer {env['key']}") as c:
        yield c


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def _privacy(*flags: str) -> str:
    from cli.main import app

    result = CliRunner().invoke(app, ["privacy", "--tenant", TENANT, *flags])
    assert result.exit_code == 0, result.output
    return result.stdout


async def _reports(client: httpx.AsyncClient, env: dict[str, str]) -> list[str]:
    texts = []
    for path in (f"/v1/scans/{env['scan']}/report.pdf", f"/v1/batches/{env['batch']}/report.pdf"):
        r = await client.get(path)
        assert r.status_code == 200, r.text
        assert "Doe_John" not in r.headers["content-disposition"]
        texts.append(_pdf_text(r.content))
    return texts


async def test_pdf_reports_name_the_file_only_after_the_tenant_opts_in(
        client: httpx.AsyncClient, env: dict[str, str]) -> None:
    assert "share_filenames: no" in _privacy()
    for text in await _reports(client, env):
        assert "Doe_John" not in text and "MRN-12345" not in text
        assert "(withheld)" in text and env["scan"][:8] in text
    # The owner still sees the name in the result API.
    assert (await client.get(f"/v1/scans/{env['scan']}")).json()["filename"] == NAME
    try:
        assert "share_filenames: yes" in _privacy("--share-filenames")
        for text in await _reports(client, env):
            assert "Doe_John" in text
    finally:
        assert "share_filenames: no" in _privacy("--no-share-filenames")
    for text in await _reports(client, env):
        assert "Doe_John" not in text


def test_webhook_payloads_carry_no_file_names_by_default(env: dict[str, str]) -> None:
    with sync_session() as session:
        scan = session.get(Scan, env["scan"])
        batch = session.get(Batch, env["batch"])
        assert scan is not None and batch is not None
        scan_body = scan_out(scan, lambda ref: ref).model_dump(mode="json")
        batch_body = batch_out(batch, [scan], lambda ref: ref).model_dump(mode="json")
    assert scan_body["filename"] == NAME  # what the API shows its owner
    for kind, body in (("scan", scan_body), ("batch", batch_body)):
        payload = build_payload(kind, body)
        assert b"Doe_John" not in payload and b'"filename"' not in payload
        doc = json.loads(payload)
        assert doc["event"] == f"{kind}.finished"
        scan_doc = doc["scan"] if kind == "scan" else doc["batch"]["scans"][0]
        assert scan_doc["id"] == env["scan"] and scan_doc["prediction"]["label"] == "glioma"
        assert NAME.encode() in build_payload(kind, body, include_filenames=True)


# --- through delivery: the worker's function, on PostgreSQL, to a live receiver ---------------

@pytest.fixture()
def pg_scan(tmp_path: Path) -> Iterator[tuple[str, str, Receiver]]:
    from tests.support.stack import create_pg_database, drop_pg_database

    url = create_pg_database("nsnames")
    receiver = Receiver().start()
    try:
        with settings_env(database_url=url, media_dir=str(tmp_path / "media"),
                          secret_key="names-test-secret", webhook_secret="receiver-secret"):
            upgrade_to_head()
            with sync_session() as session:
                tenant = issue_key(session, TENANT).tenant
                scan = Scan(tenant_id=tenant.id, state="succeeded", filename=NAME,
                                  format="png", size_bytes=10, sha256="0" * 64, label="glioma",
                                  confidence=0.9, probabilities=PROBS, finished_at=utcnow(),
                                  callback_url=receiver.url,
                                  heatmap_ref=f"local:results/{uuid.uuid4()}-heatmap.png")
                session.add(scan)
                session.flush()
                ids = (tenant.id, scan.id)
            yield (*ids, receiver)
    finally:
        receiver.stop()
        drop_pg_database(url)


def test_delivered_webhooks_follow_the_tenants_choice(pg_scan: tuple[str, str, Receiver]) -> None:
    from shared.storage import signing
    from worker.webhook_tasks import deliver

    tenant_id, scan_id, receiver = pg_scan
    assert deliver(scan_id, "scan", attempt=1) == 200
    _privacy("--share-filenames")
    assert deliver(scan_id, "scan", attempt=2) == 200
    first, second = (json.loads(r.body)["scan"] for r in receiver.received)
    assert "filename" not in first and b"Doe_John" not in receiver.received[0].body
    assert second["filename"] == NAME
    # The payload's image links are bound to the scan's tenant (no key: the service made them).
    link = urlsplit(first["heatmap_url"])
    query = {k: v[0] for k, v in parse_qs(link.query, keep_blank_values=True).items()}
    assert (query["t"], query["k"]) == (tenant_id, "")
    assert signing.verify(link.path.removeprefix("/media/"), int(query["expires"]), query["sig"],
                          "names-test-secret", tenant_id=tenant_id) is None
