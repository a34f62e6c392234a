"""scan_results.preview_ref: a browser-displayable rendition of originals browsers cannot show.

Revision ID: 0003_preview_ref
Revises: 0002_webhook_deliveries
Create Date: 2025-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_preview_ref"
down_revision: str | None = "0002_webhook_deliveries"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode (env.py turns it on for SQLite) but never a table copy: copying scan_results
    # drops the old table, and with foreign_keys=ON that cascades into scan_uploads and
    # scan_events. Plain ADD/DROP COLUMN work on PostgreSQL and on SQLite >= 3.35.
    with op.batch_alter_table("scan_results", recreate="never") as batch:
        batch.add_column(sa.Column("preview_ref", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scan_results", recreate="never") as batch:
        batch.drop_column("preview_ref")
