"""`neuroscan audit export` (the audit log as FHIR) and `neuroscan privacy` (file-name opt-in)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

audit_app = typer.Typer(help="The append-only audit log of reads, downloads and deletions.",
                        no_args_is_help=True)


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 date or time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@audit_app.command("export")
def export(
    tenant: Annotated[str, typer.Option(help="The tenant's name (as in `keys create`).")],
    since: Annotated[str | None, typer.Option(help="Only events at or after this ISO 8601 "
                                              "date or time (UTC unless it names a zone).")]
    = None,
    out: Annotated[Path | None, typer.Option(help="File to write (default: standard output).")]
    = None,
) -> None:
    """Write the tenant's audit events as a FHIR R4 Bundle of AuditEvent resources."""
    from shared.audit import export_tenant_bundle
    from shared.db.session import sync_session

    when = _since(since)
    with sync_session() as session:
        try:
            bundle = export_tenant_bundle(session, tenant, since=when)
        except LookupError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
    text = json.dumps(bundle, indent=1)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n")
        typer.echo(f"{len(bundle.get('entry', []))} audit events written to {out}", err=True)


def privacy(
    tenant: Annotated[str, typer.Option(help="The tenant's name.")],
    share_filenames: Annotated[bool | None, typer.Option(
        "--share-filenames/--no-share-filenames",
        help="Put client file names in PDF reports and webhook payloads (default: no).")]
    = None,
) -> None:
    """Show a tenant's privacy choices; change one with its option (recorded in the audit log)."""
    from sqlalchemy import select

    from shared.audit import set_share_filenames, shares_filenames
    from shared.db.models import Tenant
    from shared.db.session import sync_session
    from shared.lifecycle import audit

    with sync_session() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant))
        if tenant_id is None:
            typer.echo(f"no tenant named {tenant!r}", err=True)
            raise typer.Exit(2)
        if share_filenames is not None:
            set_share_filenames(session, tenant_id, share_filenames)
            session.add(audit(tenant_id, "privacy", f"tenant:{tenant_id}",
                              detail={"share_filenames": share_filenames}))
            session.flush()
        shared = shares_filenames(session, tenant_id)
    typer.echo(f"share_filenames: {'yes' if shared else 'no'}")
