"""The API in this process (httpx's ASGI transport) on a real SQLite database and broker file:
contract details, auth, error shapes, durable intake, signed media links. The worker side is
covered by tests/integration."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import create_engine, select, text, update

from shared.db.migrate import upgrade_to_head
from shared.db.models import Scan, ScanEvent, ScanUpload, User, utcnow
from shared.db.session import sync_session
from shared.db.tenants import issue_key
from tests.support.images import brain_png
from tests.support.inprocess import settings_env


def _configure(root: Path, **extra: str) -> dict[str, str]:
    return {"database_url": f"sqlite+aiosqlite:///{root / 'db.sqlite'}",
            "broker_url": f"sqla+sqlite:///{root / 'broker.db'}",
            "media_dir": str(root / "media"), "secret_key": "api-test-secret",
            "webhook_allow_private": "true", **extra}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("api")
    with settings_env(**_configure(root)):
        upgrade_to_head()
        yield root


@pytest.fixture(scope="module")
def keys(root: Path) -> dict[str, str]:
    with sync_session() as session:
        return {name: issue_key(session, name).key for name in ("alpha", "beta", "revoked")}


@pytest.fixture()
async def client(root: Path, keys: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    from api.main import create_app

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver",
                                 headers={"Authorization": f"Bearer {keys['alpha']}"}) as c:
        yield c


async def test_root_is_the_seed_greeting(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.json() == {"status": "success", "message": "NeuroScan AI Backend is Running"}
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}


async def test_auth_is_required_and_checked(client: httpx.AsyncClient, keys: dict[str, str],
                                            root: Path) -> None:
    with sync_session() as session:
        session.execute(update(User).where(User.api_key_prefix == keys["revoked"][:12])
                        .values(revoked_at=utcnow()))
    cases = [{"Authorization": ""}, {"Authorization": "Basic abc"},
             {"Authorization": "Bearer nsk_nope"}, {"Authorization": f"Bearer {keys['revoked']}"}]
    for headers in cases:
        r = await client.get("/v1/me", headers=headers)
        assert r.status_code == 401, headers
        revoked = headers["Authorization"].endswith(keys["revoked"])
        assert r.json()["error"]["code"] == ("key_revoked" if revoked else "unauthorized")
    me = (await client.get("/v1/me")).json()
    assert me["tenant"]["name"] == "alpha" and me["user"]["api_key_prefix"] == keys["alpha"][:12]
    assert keys["alpha"] not in str(me)


async def test_upload_is_stored_with_its_event_and_enqueued(client: httpx.AsyncClient,
                                                            root: Path) -> None:
    data = brain_png(3)
    r = await client.post("/v1/scans", files={"file": ("../../etc/scan.png", data, "image/png")},
                          data={"callback_url": "http://127.0.0.1:9/hook"})
    assert r.status_code == 202, r.text
    scan_id = r.json()["id"]
    assert r.json()["links"] == {"self": f"/v1/scans/{scan_id}",
                                 "events": f"/v1/scans/{scan_id}/events",
                                 "report": f"/v1/scans/{scan_id}/report.pdf", "batch": None}
    with sync_session() as session:
        scan = session.get(Scan, scan_id)
        assert (scan.state, scan.filename, scan.size_bytes) == ("queued", "scan.png", len(data))
        assert scan.callback_url == "http://127.0.0.1:9/hook"
        assert session.get(ScanUpload, scan_id).data == data
        assert list(session.scalars(select(ScanEvent.state).where(
            ScanEvent.scan_id == scan_id))) == ["queued"]
    broker = create_engine(f"sqlite:///{root / 'broker.db'}")
    with broker.connect() as conn:
        bodies = [row[0] for row in conn.execute(text("SELECT payload FROM kombu_message"))]
    broker.dispose()
    assert any(scan_id in body for body in bodies)
    body = (await client.get(f"/v1/scans/{scan_id}")).json()
    assert body["state"] == "queued" and body["prediction"] is None


async def test_bad_callback_url_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/scans", files={"file": ("a.png", brain_png(1), "image/png")},
                          data={"callback_url": "ftp://example.org/x"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_callback_url")


async def test_every_error_has_the_same_shape(client: httpx.AsyncClient) -> None:
    for method, path, status in [("GET", "/nowhere", 404), ("DELETE", "/v1/scans", 405),
                                 ("GET", "/v1/scans?page=0", 422),
                                 ("GET", "/v1/scans/not-a-scan", 404),
                                 ("GET", "/v1/batches/not-a-batch", 404)]:
        r = await client.request(method, path)
        assert r.status_code == status, path
        assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"code", "message"}


async def test_other_tenant_cannot_see_scans(client: httpx.AsyncClient,
                                             keys: dict[str, str]) -> None:
    scan_id = (await client.post("/v1/scans", files={"file": ("a.png", brain_png(4),
                                                               "image/png")})).json()["id"]
    beta = {"Authorization": f"Bearer {keys['beta']}"}
    r = await client.get(f"/v1/scans/{scan_id}", headers=beta)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    assert (await client.get("/v1/scans", headers=beta)).json()["total"] == 0


async def test_media_links_are_signed_and_expire(client: httpx.AsyncClient, root: Path) -> None:
    from shared.storage import get_storage

    storage = get_storage()
    with sync_session() as session:  # links are bound to the tenant owning the scan
        tenant_id = (await client.get("/v1/me")).json()["tenant"]["id"]
        scan = Scan(tenant_id=tenant_id, state="succeeded", format="png", size_bytes=1,
                          sha256="0" * 64)
        session.add(scan)
        session.flush()
        name = f"{scan.id}-heatmap.png"
    ref = storage.put("results", name, b"\x89PNG\r\n\x1a\nfake", "image/png")
    url = storage.url(ref, 60, tenant_id=tenant_id)
    ok = await client.get(url, headers={"Authorization": ""})
    assert ok.status_code == 200 and ok.content == b"\x89PNG\r\n\x1a\nfake"
    assert ok.headers["content-type"] == "image/png"
    query = parse_qs(urlsplit(url).query)
    path = urlsplit(url).path
    bad_sig = await client.get(path, params={"expires": query["expires"][0], "sig": "0" * 64})
    assert (bad_sig.status_code, bad_sig.json()["error"]["code"]) == (403, "invalid_signature")
    other = await client.get(path.replace("-heatmap", "-overlay"),
                             params={k: v[0] for k, v in query.items()})
    assert other.status_code == 403
    expired = storage.url(ref, -10, tenant_id=tenant_id)
    r = await client.get(expired)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "link_expired")
    assert (await client.get("/media/results/..%2F..%2Fdb.sqlite",
                             params={"expires": 1, "sig": "x"})).status_code in (403, 404)


async def test_history_is_gzipped_when_large(client: httpx.AsyncClient) -> None:
    for seed in range(6):
        await client.post("/v1/scans", files={"file": (f"{seed}.png", brain_png(seed),
                                                        "image/png")})
    r = await client.get("/v1/scans", params={"page_size": 50},
                         headers={"Accept-Encoding": "gzip"})
    assert r.headers.get("content-encoding") == "gzip"
    assert r.json()["total"] >= 6  # httpx decoded it


async def test_openapi_documents_the_contract(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in ("/", "/healthz", "/readyz", "/v1/scans", "/v1/scans/{scan_id}", "/v1/batches",
                 "/v1/batches/{batch_id}", "/v1/scans/{scan_id}/events",
                 "/v1/batches/{batch_id}/events", "/v1/me"):
        assert path in spec["paths"], path
    assert "202" in spec["paths"]["/v1/scans"]["post"]["responses"]
    with_body = {(m, p) for p, ops in spec["paths"].items() for m, op in ops.items()
                 if "requestBody" in op}
    assert with_body == {("post", "/v1/scans"), ("post", "/v1/batches")}
    prediction = spec["components"]["schemas"]["Prediction"]["properties"]
    assert prediction["label"]["examples"] == ["glioma"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert (await client.get("/docs")).status_code == 200


async def test_broker_down_still_accepts_and_reports_not_ready(tmp_path: Path) -> None:
    """202 means stored: with no broker the scan is kept, queued, for the sweep to resend."""
    with settings_env(**_configure(tmp_path, broker_url="redis://127.0.0.1:1/0")):
        upgrade_to_head()
        with sync_session() as session:
            key = issue_key(session, "offline").key
        from api.main import create_app

        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers={"Authorization": f"Bearer {key}"}) as c:
            ready = await c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"] == "ok"
            assert ready.json()["checks"]["broker"].startswith("error")
            assert ready.json()["error"]["code"] == "unavailable"
            r = await c.post("/v1/scans", files={"file": ("a.png", brain_png(5), "image/png")})
            assert r.status_code == 202
            assert (await c.get(f"/v1/scans/{r.json()['id']}")).json()["state"] == "queued"


async def test_a_batch_of_hundreds_of_files_in_one_request(client: httpx.AsyncClient) -> None:
    image = brain_png(7, size=128)
    files = [("files", (f"slice-{i:03d}.png", image, "image/png")) for i in range(300)]
    r = await client.post("/v1/batches", files=files)
    assert r.status_code == 202, r.text
    body = r.json()
    assert len(body["scan_ids"]) == 300 and body["rejected"] == []
    batch = (await client.get(f"/v1/batches/{body['id']}")).json()
    assert batch["total"] == 300 and batch["counts"]["queued"] == 300
    assert [s["filename"] for s in batch["scans"][:2]] == ["slice-000.png", "slice-001.png"]
