"""Data lifecycle commands: `purge` (retention, by hand) and `export` (a tenant's data)."""

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
               f"there and verified; manifest: {out / 'manifest.json'}")
