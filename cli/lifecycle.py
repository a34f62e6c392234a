"""Data lifecycle commands: `purge` (retention, by hand), `retention`, and `export` / `import`
(a tenant's data out, and back in)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def purge(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would go; remove nothing.")]
    = False,
    limit: Annotated[int | None, typer.Option(help="Scans per kind and tenant in this pass.")]
    = None,
) -> None:
    """One pass of the retention purge (every worker runs one each PURGE_INTERVAL_S): expired
    originals, derived images, results and events leave storage and the database."""
    from shared.lifecycle import KINDS, purge_once

    report = purge_once(dry_run=dry_run, limit=limit)
    verb = "would remove" if dry_run else "removed"
    if not report:
        typer.echo(f"{verb} nothing")
    for tenant, kinds in sorted(report.removed.items()):
        for kind in KINDS:
            ids = kinds.get(kind, [])
            if ids:
                noun = "event rows" if kind == "events" else "scans"
                typer.echo(f"{tenant}: {verb} {kind} of {len(ids)} {noun}")
                if dry_run:
                    for scan_id in sorted(set(ids)):
                        typer.echo(f"  {scan_id}")


def export(
    tenant: Annotated[str, typer.Option(help="The tenant's name (as in `keys create`).")],
    out: Annotated[Path, typer.Option(help="Folder to write; an earlier export there resumes.")],
) -> None:
    """Every scan of a tenant: result JSON, FHIR, PDF and images, with manifest.json."""
    from shared.export import export_tenant

    try:
        report = export_tenant(tenant, out)
    except LookupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{report.total} scans: {report.written} written, {report.skipped} already "
               f"there and verified; {report.series} series; manifest: {out / 'manifest.json'}")


def import_(
    tenant: Annotated[str, typer.Option(help="The tenant to import into (created if new).")],
    from_: Annotated[Path, typer.Option("--from", help="An export: the folder of `neuroscan "
                                        "export`, or the ZIP of GET /v1/export.")],
) -> None:
    """Restore an export's scans (results, images into storage), batches and series under
    TENANT. Every file is checked against the manifest's SHA-256 first; a damaged export is
    refused whole. Scans already there are skipped: run it again to resume."""
    from shared.export import ExportError, import_tenant

    try:
        report = import_tenant(tenant, from_)
    except ExportError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{report.total} scans: {report.imported} imported, {report.skipped} already "
               f"there, {report.unfinished} not final when exported (left out); "
               f"{report.series_imported} series imported, {report.series_skipped} skipped")


def retention(
    tenant: Annotated[str, typer.Option(help="The tenant's name.")],
    originals_days: Annotated[int | None, typer.Option(min=0)] = None,
    derived_days: Annotated[int | None, typer.Option(min=0)] = None,
    results_days: Annotated[int | None, typer.Option(min=0)] = None,
    events_days: Annotated[int | None, typer.Option(min=0)] = None,
    default: Annotated[bool, typer.Option("--default", help="Back to the deployment's "
                                          "defaults (RETENTION_*_DAYS) for every kind.")] = False,
) -> None:
    """Show a tenant's retention in days (0: until deleted on request); set any kind with its
    option, the others keep theirs."""
    from sqlalchemy import delete, select

    from shared.db.lifecycle_models import TenantRetention
    from shared.db.models import Tenant, utcnow
    from shared.db.session import sync_session
    from shared.lifecycle import Retention, audit
    from shared.settings import get_settings

    given = {"originals_days": originals_days, "derived_days": derived_days,
             "results_days": results_days, "events_days": events_days}
    with sync_session() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant))
        if tenant_id is None:
            typer.echo(f"no tenant named {tenant!r}", err=True)
            raise typer.Exit(2)
        if default:
            session.execute(delete(TenantRetention).where(TenantRetention.tenant_id == tenant_id))
        own = session.get(TenantRetention, tenant_id)
        changes = {k: v for k, v in given.items() if v is not None}
        if changes:
            own = own or TenantRetention(tenant_id=tenant_id)
            for name, value in changes.items():
                setattr(own, name, value)
            own.updated_at = utcnow()
            session.add(own)
        if changes or default:
            session.add(audit(tenant_id, "retention", f"tenant:{tenant_id}",
                              detail={"set": changes, "default": default}))
        effective = Retention.for_tenant(get_settings(), own)
    for kind in ("originals", "derived", "results", "events"):
        days = getattr(effective, kind)
        typer.echo(f"{kind}: {days if days else 'until deleted'}"
                   + (" days" if days else ""))
