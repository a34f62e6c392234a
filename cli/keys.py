"""`neuroscan keys create|list|revoke|rotate` and `neuroscan webhook-secret`.

A key is printed once, when it is made, alone on the last line; afterwards only its id and
prefix are ever shown (the database holds its hash). Every change is written to the audit log.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import typer

keys_app = typer.Typer(help="API keys: create, list, revoke, rotate.", no_args_is_help=True)

_EXPIRES_HELP = ("Lifetime, e.g. 90d, 12h, 30m; 0 or never: no expiry "
                 "(default: API_KEY_LIFETIME_DAYS).")


def _duration(text: str | None) -> timedelta | None:
    from shared.db.tenants import parse_duration

    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _lifetime(text: str | None) -> dict[str, timedelta | None]:
    """issue_key's `expires_in` keyword: absent when the default lifetime applies."""
    return {} if text is None else {"expires_in": _duration(text)}


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


@keys_app.command("create")
def create_key(
    tenant: Annotated[str, typer.Option(help="Tenant (hospital) name; created if new.")],
    user: Annotated[str, typer.Option(help="Name of the user or system holding the key.")] = "api",
    expires_in: Annotated[str | None, typer.Option("--expires-in", help=_EXPIRES_HELP)] = None,
) -> None:
    """Create an API key; it is printed once, alone on the last line, and stored only hashed."""
    from shared.db.session import sync_session
    from shared.db.tenants import issue_key

    with sync_session() as session:
        issued = issue_key(session, tenant, user, **_lifetime(expires_in))
        typer.echo(f"tenant {issued.tenant.name} ({issued.tenant.id}), user {issued.user.name}, "
                   f"key id {issued.user.id}, prefix {issued.user.api_key_prefix}, "
                   f"expires {_when(issued.user.expires_at) if issued.user.expires_at else 'never'}")
    typer.echo(issued.key)


@keys_app.command("list")
def list_keys(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
) -> None:
    """Every key: id, prefix, tenant, user, created, expires, last used, state (never the key).
    Times are UTC."""
    from shared.db.session import sync_session
    from shared.db.tenants import key_state, list_keys

    rows = []
    with sync_session() as session:
        for t, u in list_keys(session, tenant):
            state = key_state(u)
            if state in ("revoked", "revoking"):  # revoking: rotated, in its grace period
                state = f"revoked {_when(u.revoked_at)}" if state == "revoked" \
                    else f"revokes at {_when(u.revoked_at)}"
            rows.append((u.id, u.api_key_prefix + "…", t.name, u.name, _when(u.created_at),
                         _when(u.expires_at) if u.expires_at else "never",
                         _when(u.last_used_at), state))
    header = ("KEY ID", "PREFIX", "TENANT", "USER", "CREATED", "EXPIRES", "LAST USED", "STATE")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@keys_app.command("revoke")
def revoke_key(
    key: Annotated[str, typer.Argument(help="The key's id or prefix (as `keys list` shows).")],
) -> None:
    """Revoke a key now: its next request is answered 401 `key_revoked`."""
    from shared.db.session import sync_session
    from shared.db.tenants import revoke_key

    with sync_session() as session:
        try:
            user = revoke_key(session, key)
        except LookupError as exc:
            raise typer.BadParameter(str(exc)) from exc
        typer.echo(f"revoked key {user.id} ({user.api_key_prefix}…) at {_when(user.revoked_at)}")


@keys_app.command("rotate")
def rotate_key(
    key: Annotated[str, typer.Argument(help="The key's id or prefix (as `keys list` shows).")],
    grace: Annotated[str, typer.Option(
        help="How long the old key keeps working, e.g. 24h (default: revoked at once).")] = "0",
    expires_in: Annotated[str | None, typer.Option("--expires-in", help=_EXPIRES_HELP)] = None,
) -> None:
    """Issue a new key for the same tenant and user, and revoke the old one after GRACE.
    The new key is printed once, alone on the last line."""
    from shared.db.session import sync_session
    from shared.db.tenants import rotate_key

    with sync_session() as session:
        try:
            issued, old = rotate_key(session, key, grace=_duration(grace), **_lifetime(expires_in))
        except (LookupError, ValueError) as exc:
            raise typer.BadParameter(str(exc)) from exc
        new = issued.user
        typer.echo(f"old key {old.id} ({old.api_key_prefix}…) revoked at {_when(old.revoked_at)}; "
                   f"new key {new.id} ({new.api_key_prefix}…), expires "
                   f"{_when(new.expires_at) if new.expires_at else 'never'}")
    typer.echo(issued.key)


def webhook_secret(
    tenant: Annotated[str, typer.Option(help="Tenant (hospital) name.")],
    rotate: Annotated[bool, typer.Option(
        "--rotate", help="Replace it with a new random secret (the old one stops at once).")] = False,
) -> None:
    """Print the secret that signs this tenant's webhooks (alone on the last line); with
    --rotate, make a new one first. Give it to the hospital's receiver."""
    from shared.db.session import sync_session
    from shared.db.tenants import find_tenant, rotate_webhook_secret

    with sync_session() as session:
        try:
            if rotate:
                secret = rotate_webhook_secret(session, tenant)
                typer.echo(f"tenant {tenant}: new webhook secret; the old one no longer signs")
            else:
                found = find_tenant(session, tenant)
                if found.webhook_secret is None:
                    typer.echo(f"tenant {tenant} signs with the deployment's WEBHOOK_SECRET (it "
                               "predates per-tenant secrets); --rotate gives it its own", err=True)
                    raise typer.Exit(1)
                secret = found.webhook_secret
        except LookupError as exc:
            raise typer.BadParameter(str(exc)) from exc
    typer.echo(secret)
