"""scan_results: processing leases, lost-lease count and last re-send time (the reconciler).

Revision ID: 0004_scan_leases
Revises: 0003_preview_ref
Create Date: 2025-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_scan_leases"
down_revision: str | None = "0003_preview_ref"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Never a table copy on SQLite (see 0003): plain ADD COLUMN, nullable or with a default.
    with op.batch_alter_table("scan_results", recreate="never") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("lost_leases", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_scan_results_state_lease", "scan_results", ["state", "lease_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_scan_results_state_lease", table_name="scan_results")
    with op.batch_alter_table("scan_results", recreate="never") as batch:
        for name in ("enqueued_at", "lost_leases", "lease_expires_at", "lease_owner"):
            batch.drop_column(name)
