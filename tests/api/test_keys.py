"""Key management: `neuroscan keys create|list|revoke|rotate`, keys that expire, the door's
answers to expired and revoked keys (before the body), and each tenant's webhook secret.

The commands run in this process (Typer's runner) against real SQLite and PostgreSQL
databases; the API is the real app behind httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cli.main import app as cli
from shared.db.lifecycle_models import AuditEvent
from shared.db.models import Tenant, User, utcnow
from shared.db.session import sync_session
from shared.db.tenants import KEY_PREFIX, issue_key, parse_duration
from shared.settings import get_settings
from shared.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, signed_headers, verify
from tests.support.asgi import post_chunks
from tests.support.inprocess import migrated_database, settings_env

runner = CliRunner()


def _run(*args: str) -> list[str]:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output.strip().splitlines()


@pytest.fixture(params=["sqlite", "pg"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with migrated_database(request.param, tmp_path):
        yield request.param


@pytest.fixture()
async def api(database: str) -> AsyncIterator[httpx.AsyncClient]:
    from api.main import create_app

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app()),
                                 base_url="http://testserver") as client:
        yield client


async def _me(api: httpx.AsyncClient, key: str) -> httpx.Response:
    return await api.get("/v1/me", headers={"Authorization": f"Bearer {key}"})


async def test_create_list_revoke(api: httpx.AsyncClient) -> None:
    out = _run("keys", "create", "--tenant", "St Mary", "--user", "pacs", "--expires-in", "30d")
    key = out[-1]
    assert key.startswith(KEY_PREFIX) and len(out) == 2 and "expires 20" in out[0]
    me = await _me(api, key)
    assert me.status_code == 200 and me.json()["user"]["expires_at"] is not None  # clients see it
    listing = "\n".join(_run("keys", "list"))
    assert key not in listing and key[:12] + "…" in listing  # the prefix, never the key
    with sync_session() as session:
        user = session.scalar(select(User).where(User.api_key_prefix == key[:12]))
        assert user is not None and user.expires_at is not None
        left = user.expires_at - utcnow()
        assert timedelta(days=29, hours=23) < left <= timedelta(days=30)
    assert "active" in listing.splitlines()[-1]

    _run("keys", "revoke", key[:12])
    r = await _me(api, key)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "key_revoked"
    assert "revoked" in r.json()["error"]["message"]
    assert "revoked" in _run("keys", "list", "--tenant", "St Mary")[-1]


async def test_expired_key_is_refused_with_its_own_code(api: httpx.AsyncClient) -> None:
    key = _run("keys", "create", "--tenant", "expiring", "--expires-in", "1s")[-1]
    assert (await _me(api, key)).status_code == 200
    await asyncio.sleep(1.2)
    r = await _me(api, key)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "key_expired")
    assert "expired at" in r.json()["error"]["message"]
    assert "expired" in _run("keys", "list", "--tenant", "expiring")[-1]
    unknown = await _me(api, KEY_PREFIX + "x" * 43)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (401, "unauthorized")


async def test_rotate_with_a_grace_period(api: httpx.AsyncClient) -> None:
    old = _run("keys", "create", "--tenant", "rotating", "--user", "ris")[-1]
    out = _run("keys", "rotate", old[:12], "--grace", "2s")
    new = out[-1]
    assert new.startswith(KEY_PREFIX) and new != old and old not in "\n".join(out)
    # Both work during the grace period: clients switch over without a gap.
    assert (await _me(api, old)).status_code == 200
    me = (await _me(api, new)).json()
    assert me["tenant"]["name"] == "rotating" and me["user"]["name"] == "ris"
    await asyncio.sleep(2.2)
    assert (await _me(api, old)).json()["error"]["code"] == "key_revoked"
    assert (await _me(api, new)).status_code == 200
    # Rotating at once (no grace) and the audit trail of every change.
    newer = _run("keys", "rotate", new[:12])[-1]
    assert (await _me(api, new)).json()["error"]["code"] == "key_revoked"
    assert (await _me(api, newer)).status_code == 200
    with sync_session() as session:
        actions = list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
    assert actions.count("key_rotate") == 2 and actions.count("key_create") == 3
    refused = runner.invoke(cli, ["keys", "rotate", old[:12]])
    assert refused.exit_code != 0 and "revoked" in refused.output


async def test_last_use_is_recorded(api: httpx.AsyncClient) -> None:
    key = _run("keys", "create", "--tenant", "used")[-1]
    assert _run("keys", "list", "--tenant", "used")[-1].split()[-2] == "-"  # never used
    assert (await _me(api, key)).status_code == 200
    for _ in range(50):  # written after the request, never in its way
        with sync_session() as session:
            used = session.scalar(select(User.last_used_at).where(User.api_key_prefix == key[:12]))
        if used is not None:
            break
        await asyncio.sleep(0.1)
    assert used is not None and abs((utcnow() - used).total_seconds()) < 30


def test_default_lifetime_comes_from_the_settings(database: str) -> None:
    with sync_session() as session:
        default = issue_key(session, "lifetimes").user
        never = issue_key(session, "lifetimes", expires_in=None).user
        assert default.expires_at is not None and never.expires_at is None
        days = get_settings().api_key_lifetime_days
        assert abs((default.expires_at - utcnow()) - timedelta(days=days)) < timedelta(minutes=1)
    with settings_env(api_key_lifetime_days="0"), sync_session() as session:
        assert issue_key(session, "lifetimes").user.expires_at is None
    assert parse_duration("90d") == timedelta(days=90) and parse_duration("12h").seconds == 43200
    assert parse_duration("never") is None and parse_duration("0") is None
    with pytest.raises(ValueError):
        parse_duration("soon")


async def test_expired_and_revoked_keys_are_refused_before_the_body(database: str) -> None:
    from api.main import create_app

    app = create_app()
    expired = _run("keys", "create", "--tenant", "door", "--expires-in", "1s")[-1]
    revoked = _run("keys", "create", "--tenant", "door")[-1]
    _run("keys", "revoke", revoked[:12])
    time.sleep(1.1)
    for key in (expired, revoked):
        headers = [(b"authorization", f"Bearer {key}".encode()),
                   (b"content-type", b"multipart/form-data; boundary=x")]
        assert await post_chunks(app, headers, [b"x" * 65536] * 8) == (401, 0)


def test_each_tenant_signs_webhooks_with_its_own_secret(database: str) -> None:
    _run("keys", "create", "--tenant", "north")
    _run("keys", "create", "--tenant", "south")
    north = _run("webhook-secret", "--tenant", "north")[-1]
    south = _run("webhook-secret", "--tenant", "south")[-1]
    assert north.startswith("whsec_") and len(north) == 70 and north != south
    with sync_session() as session:
        ids = {t.name: t.id for t in session.scalars(select(Tenant))}
        legacy = Tenant(name="legacy")  # made before revision 0008: no secret of its own
        session.add(legacy)
        session.flush()
        ids["legacy"] = legacy.id
    body, ts = b'{"event":"scan.finished"}', int(time.time())
    headers = signed_headers(body, "scan", timestamp=ts, tenant_id=ids["north"])
    assert verify(north.encode(), headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify(south.encode(), headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    # A tenant from before keeps the deployment's secret, so its receiver still verifies.
    legacy_headers = signed_headers(body, "scan", timestamp=ts, tenant_id=ids["legacy"])
    assert legacy_headers[SIGNATURE_HEADER] == signed_headers(body, "scan", timestamp=ts)[
        SIGNATURE_HEADER]
    assert runner.invoke(cli, ["webhook-secret", "--tenant", "legacy"]).exit_code == 1
    # Rotation: a new secret signs from now on; the old one no longer verifies.
    rotated = _run("webhook-secret", "--tenant", "north", "--rotate")[-1]
    assert rotated != north and _run("webhook-secret", "--tenant", "north")[-1] == rotated
    again = signed_headers(body, "scan", timestamp=ts, tenant_id=ids["north"])
    assert verify(rotated.encode(), again[TIMESTAMP_HEADER], body, again[SIGNATURE_HEADER])
    assert not verify(north.encode(), again[TIMESTAMP_HEADER], body, again[SIGNATURE_HEADER])
    with sync_session() as session:
        assert session.scalar(select(AuditEvent).where(
            AuditEvent.action == "webhook_secret_rotate", AuditEvent.tenant_id == ids["north"]))
