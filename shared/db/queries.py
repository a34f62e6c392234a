"""Queries that more than one part of the service asks, written once.

Routes, the worker and the CLI build on these instead of spelling the same `select` again,
so that a rule (tenant scoping, the order a batch's scans are listed in) lives in one place.
"""

from __future__ import annotations

from sqlalchemy import Select, select

from shared.db.models import Batch, Scan


def scans_of_batch(batch: Batch) -> Select[tuple[Scan]]:
    """A batch's scans, in the order they were accepted, never another tenant's."""
    return (select(Scan)
            .where(Scan.batch_id == batch.id, Scan.tenant_id == batch.tenant_id)
            .order_by(Scan.created_at, Scan.id))
