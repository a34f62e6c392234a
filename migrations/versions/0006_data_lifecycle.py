"""Data lifecycle: audit_events, tenant_retention; originals already in storage leave the database.

Every scan a worker finished had its original written to storage (`image_ref`) and kept in
`scan_uploads` too. Those blobs are duplicates: this revision deletes them, with no storage
access. Blobs of scans not final yet stay; the worker deletes each when it stores the original
and writes the result. Blobs of scans that ended without an `image_ref` (undecodable files,
poison inputs) stay until the originals' retention removes them.

The space returns to the database's free list, not to the disk: PostgreSQL reuses it
(`VACUUM FULL scan_uploads` gives it back), SQLite too (`VACUUM` gives it back).

Revision ID: 0006_data_lifecycle
Revises: 0005_dicom_series
Create Date: 2025-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_data_lifecycle"
down_revision: str | None = "0005_dicom_series"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(36), nullable=True),
        sa.Column("key_id", sa.String(36), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(100), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("detail", _JSON, nullable=True),
    )
    op.create_index("ix_audit_events_tenant_at", "audit_events", ["tenant_id", "at"])
    op.create_table(
        "tenant_retention",
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("originals_days", sa.Integer(), nullable=True),
        sa.Column("derived_days", sa.Integer(), nullable=True),
        sa.Column("results_days", sa.Integer(), nullable=True),
        sa.Column("events_days", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        "DELETE FROM scan_uploads WHERE scan_id IN (SELECT id FROM scan_results "
        "WHERE state IN ('succeeded', 'failed') AND image_ref IS NOT NULL)")


def downgrade() -> None:
    # The deleted blobs are not brought back: the originals are in storage (`image_ref`).
    op.drop_table("tenant_retention")
    op.drop_index("ix_audit_events_tenant_at", table_name="audit_events")
    op.drop_table("audit_events")
