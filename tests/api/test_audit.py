"""The audit log of reads through the real API (in this process, on a real PostgreSQL
database): exactly one row per read, the FHIR export, append-only triggers, and media links
bound to their tenant."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from shared.db.dicom_models import DicomSeries
from shared.db.lifecycle_models import AuditEvent
from shared.db.migrate import upgrade_to_head
from shared.db.models import Batch, Scan, utcnow
from shared.db.session import sync_session
from shared.db.tenants import issue_key
from shared.settings import _with_driver
from tests.support.images import brain_png
from tests.support.inprocess import settings_env
from tests.support.stack import create_pg_database, drop_pg_database

PROBS = {"glioma": 0.91, "meningioma": 0.05, "notumor": 0.03, "pituitary": 0.01}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("audit")
    url = create_pg_database("nsaudit")
    try:
        with settings_env(database_url=url, broker_url=f"sqla+sqlite:///{root / 'broker.db'}",
                          media_dir=str(root / "media"), secret_key="audit-test-secret"):
            upgrade_to_head()
            with sync_session() as session:
                alpha, beta = issue_key(session, "alpha"), issue_key(session, "beta")
                ids = {"alpha": alpha.tenant.id, "beta": beta.tenant.id,
                       "alpha_key": alpha.user.id, "beta_key": beta.user.id}
            yield {"root": root, "url": url, "keys": {"alpha": alpha.key, "beta": beta.key},
                   **ids}
    finally:
        drop_pg_database(url)


def _finished_scan(tenant_id: str, filename: str = "case.png",
                   batch_id: str | None = None) -> str:
    """A succeeded scan with its files in local storage, as a worker leaves it."""
    from shared.storage import get_storage

    storage = get_storage()
    with sync_session() as session:
        scan = Scan(tenant_id=tenant_id, batch_id=batch_id, state="succeeded",
                          filename=filename, format="png", size_bytes=10, sha256="0" * 64,
                          label="glioma", confidence=0.91, probabilities=PROBS,
                          finished_at=utcnow(), started_at=utcnow())
        session.add(scan)
        session.flush()
        png = brain_png(5)
        scan.image_ref = storage.put("uploads", f"{scan.id}.png", png, "image/png")
        scan.heatmap_ref = storage.put("results", f"{scan.id}-heatmap.png", png, "image/png")
        scan.overlay_ref = storage.put("results", f"{scan.id}-overlay.png", png, "image/png")
        return scan.id


def _batch(tenant_id: str) -> tuple[str, str]:
    with sync_session() as session:
        batch = Batch(tenant_id=tenant_id, total=1, finished_at=utcnow())
        session.add(batch)
        session.flush()
        batch_id = batch.id
    return batch_id, _finished_scan(tenant_id, batch_id=batch_id)


@pytest.fixture()
async def client(env: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    from api.main import create_app

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver",
            headers={"Authorization": f"Bearer {env['keys']['alpha']}"}) as c:
        yield c


def _rows(tenant_id: str, after: int = 0) -> list[AuditEvent]:
    with sync_session() as session:
        return list(session.scalars(select(AuditEvent).where(
            AuditEvent.tenant_id == tenant_id, AuditEvent.id > after).order_by(AuditEvent.id)))


def _last_id() -> int:
    with sync_session() as session:
        return int(session.scalar(text("SELECT coalesce(max(id), 0) FROM audit_events")))


async def test_each_read_writes_exactly_one_row(client: httpx.AsyncClient,
                                                env: dict[str, Any]) -> None:
    scan_id = _finished_scan(env["alpha"])
    batch_id, batch_scan = _batch(env["alpha"])
    with sync_session() as session:
        series = DicomSeries(tenant_id=env["alpha"], series_uid="2.25.1", source="stow-rs")
        session.add(series)
        session.flush()
        series_id = series.id
    start = _last_id()
    rid = {"X-Request-ID": "req-0001"}
    scan = await client.get(f"/v1/scans/{scan_id}", headers=rid)
    assert scan.status_code == 200
    assert (await client.get("/v1/scans", params={"page_size": 100})).status_code == 200
    assert (await client.get(f"/v1/batches/{batch_id}")).status_code == 200
    assert (await client.get(f"/v1/scans/{scan_id}/report.pdf")).status_code == 200
    assert (await client.get(f"/v1/batches/{batch_id}/report.pdf")).status_code == 200
    assert (await client.get(f"/v1/scans/{scan_id}/fhir",
                             headers={"X-Request-ID": "bad id with spaces"})).status_code == 200
    image = await client.get(scan.json()["heatmap_url"], headers={"Authorization": ""})
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert (await client.get("/v1/series")).status_code == 200
    assert (await client.get(f"/v1/series/{series_id}")).status_code == 200
    # Reads that read nothing write nothing: another tenant's scan, an unknown batch.
    beta = {"Authorization": f"Bearer {env['keys']['beta']}"}
    assert (await client.get(f"/v1/scans/{scan_id}", headers=beta)).status_code == 404
    assert (await client.get("/v1/batches/no-such-batch")).status_code == 404

    rows = _rows(env["alpha"], start)
    got = [(r.key_id, r.action, r.target, (r.detail or {}).get("kind")) for r in rows]
    key = env["alpha_key"]
    assert got == [
        (key, "read", f"scan:{scan_id}", "result"),
        (key, "read", "scans", "history"),
        (key, "read", f"batch:{batch_id}", "batch"),
        (key, "download", f"scan:{scan_id}", "report_pdf"),
        (key, "download", f"batch:{batch_id}", "batch_report_pdf"),
        (key, "read", f"scan:{scan_id}", "fhir"),
        (key, "download", f"scan:{scan_id}", "image"),
        (key, "read", "series", "series_list"),
        (key, "read", f"series:{series_id}", "series"),
    ]
    assert series_id in rows[7].detail["series"]
    assert rows[0].request_id == "req-0001"
    assert {scan_id, batch_scan} <= set(rows[1].detail["scans"])
    assert rows[6].detail["file"] == f"results/{scan_id}-heatmap.png"
    # No usable id from the client: one is made up, and every row has one.
    assert all(r.request_id and len(r.request_id) <= 64 for r in rows)
    assert rows[5].request_id != "bad id with spaces"
    assert _rows(env["beta"], start) == []


async def test_audit_route_is_a_valid_fhir_bundle_of_the_tenants_own_events(
        client: httpx.AsyncClient, env: dict[str, Any]) -> None:
    scan_id = _finished_scan(env["alpha"])
    assert (await client.get(f"/v1/scans/{scan_id}/fhir",
                             headers={"X-Request-ID": "fhir-read-7"})).status_code == 200
    r = await client.get("/v1/audit", params={"count": 1000})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate(r.json())
    events = [FhirAuditEvent.model_validate(e.resource.model_dump()) for e in bundle.entry]
    assert len(events) == len(_rows(env["alpha"])) - 1  # all but this read itself
    mine = [e for e in r.json()["entry"]
            if e["resource"]["entity"][0]["what"]["identifier"]["value"] == f"scan:{scan_id}"]
    (event,) = mine
    resource = event["resource"]
    assert resource["action"] == "R" and resource["subtype"][0]["code"] == "read"
    assert resource["agent"][0]["who"]["identifier"]["value"] == env["alpha_key"]
    assert resource["agent"][0]["altId"] == env["keys"]["alpha"][:12]
    assert resource["source"]["site"] == "alpha"
    details = {d["type"]: d["valueString"] for d in resource["entity"][0]["detail"]}
    assert details["X-Request-ID"] == "fhir-read-7" and details["kind"] == "fhir"
    # Pages follow `next`; another tenant sees none of alpha's events.
    first = (await client.get("/v1/audit", params={"count": 2})).json()
    assert len(first["entry"]) == 2 and first["link"][0]["relation"] == "next"
    following = (await client.get(first["link"][0]["url"])).json()
    assert following["entry"][0]["resource"]["id"] != first["entry"][1]["resource"]["id"]
    # Odd parameters are 4xx or empty pages, never a server error.
    for params, status in (({"since": "2026-01-01T00:00:00"}, 200), ({"after": 2**63 - 1}, 200),
                           ({"after": 2**64}, 422), ({"since": "0001-01-01T00:00:00+14:00"}, 422),
                           ({"since": "yesterday"}, 422), ({"count": 0}, 422)):
        odd = await client.get("/v1/audit", params=params)
        assert odd.status_code == status, (params, odd.text)
    beta = await client.get("/v1/audit", headers={"Authorization": f"Bearer {env['keys']['beta']}"})
    targets = [e["resource"]["entity"][0]["what"]["identifier"]["value"]
               for e in beta.json().get("entry", [])]
    assert all(not t.startswith("scan:") for t in targets)


def test_cli_export_writes_a_valid_fhir_bundle(env: dict[str, Any], tmp_path: Path) -> None:
    from cli.main import app

    with sync_session() as session:
        session.add(AuditEvent(tenant_id=env["alpha"], key_id=None, action="purge",
                               target="originals", at=utcnow(), detail={"scans": ["a", "b"]}))
    out = tmp_path / "audit.json"
    result = CliRunner().invoke(app, ["audit", "export", "--tenant", "alpha", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    bundle = Bundle.model_validate(doc)
    assert len(bundle.entry) == len(_rows(env["alpha"]))
    purge = doc["entry"][-1]["resource"]
    assert purge["action"] == "D" and purge["agent"][0]["requestor"] is False
    # The key's creation (an operator's act on the command line) names the key as the object.
    created = [e["resource"] for e in doc["entry"]
               if e["resource"]["entity"][0]["what"]["identifier"]["value"]
               == f"key:{env['alpha_key']}"]
    assert created and created[0]["action"] == "C"
    assert "operator" in created[0]["agent"][0]["who"]["display"]
    later = CliRunner().invoke(app, ["audit", "export", "--tenant", "alpha",
                                     "--since", "2999-01-01"])
    assert later.exit_code == 0 and json.loads(later.stdout).get("entry") is None
    missing = CliRunner().invoke(app, ["audit", "export", "--tenant", "nobody"])
    assert missing.exit_code == 2


def test_postgres_refuses_update_delete_and_truncate(env: dict[str, Any]) -> None:
    _finished_scan(env["alpha"])
    with sync_session() as session:
        session.add(AuditEvent(tenant_id=env["alpha"], action="read", target="x", at=utcnow()))
    engine = create_engine(_with_driver(env["url"], asyncio=False))
    try:
        for statement in ("UPDATE audit_events SET action = 'nothing'",
                          "DELETE FROM audit_events", "TRUNCATE audit_events"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text(statement))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit_events WHERE action = "
                                     "'nothing'")).scalar_one() == 0
            assert conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one() > 0
    finally:
        engine.dispose()


def test_sqlite_refuses_update_and_delete(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade_to_head(url)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO audit_events (action, target, at) "
                              "VALUES ('read', 'x', '2026-01-01')"))
        for statement in ("UPDATE audit_events SET action = 'y'", "DELETE FROM audit_events"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text(statement))
    finally:
        engine.dispose()


async def test_media_links_are_bound_to_their_tenant(client: httpx.AsyncClient,
                                                     env: dict[str, Any]) -> None:
    from shared.storage import get_storage

    storage = get_storage()
    scan_id = _finished_scan(env["alpha"])
    beta_scan = _finished_scan(env["beta"])
    link = (await client.get(f"/v1/scans/{scan_id}")).json()["overlay_url"]
    parts = urlsplit(link)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    assert (query["t"], query["k"]) == (env["alpha"], env["alpha_key"])
    assert (await client.get(link, headers={"Authorization": ""})).status_code == 200

    async def get(path: str, **params: str) -> httpx.Response:
        return await client.get(f"{path}?{urlencode({**query, **params})}",
                                headers={"Authorization": ""})

    # Another tenant, another key, another path under the same signature: all refused.
    assert (await get(parts.path, t=env["beta"])).json()["error"]["code"] == "invalid_signature"
    assert (await get(parts.path, k=env["beta_key"])).status_code == 403
    other = parts.path.replace(scan_id, beta_scan)
    assert (await get(other)).status_code == 403
    # A link properly signed for beta over alpha's file: beta does not own it.
    forged = storage.url(f"local:results/{scan_id}-overlay.png", 60, tenant_id=env["beta"])
    assert (await client.get(forged, headers={"Authorization": ""})).status_code == 404
    # A link that names no tenant is no link the API hands out.
    unbound = storage.url(f"local:results/{scan_id}-overlay.png", 60)
    r = await client.get(unbound, headers={"Authorization": ""})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "link_not_bound")
    # A deleted scan's links stop working before they expire.
    assert (await client.delete(f"/v1/scans/{scan_id}")).status_code == 204
    assert (await client.get(link, headers={"Authorization": ""})).status_code == 404
