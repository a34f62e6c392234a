"""Initial schema: tenants, users (API keys), batches, scan_results, scan_uploads, scan_events.

Written by hand with portable types so the same revision runs on PostgreSQL and SQLite.

Revision ID: 0001_initial
Revises:
Create Date: 2025-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TS = sa.DateTime(timezone=True)


def _id() -> sa.Column:
    return sa.Column("id", sa.String(36), primary_key=True)


def _tenant_fk() -> sa.Column:
    return sa.Column("tenant_id", sa.String(36),
                     sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "tenants",
        _id(),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "users",
        _id(),
        _tenant_fk(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("api_key_prefix", sa.String(16), nullable=False),
        sa.Column("api_key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
    )
    op.create_index("ix_users_tenant_id", "users", ["tenant_id"])
    op.create_table(
        "batches",
        _id(),
        _tenant_fk(),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
    )
    op.create_index("ix_batches_tenant_id", "batches", ["tenant_id"])
    op.create_table(
        "scan_results",
        _id(),
        _tenant_fk(),
        sa.Column("batch_id", sa.String(36), sa.ForeignKey("batches.id", ondelete="CASCADE"),
                  nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("filename", sa.String(255), nullable=True),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("frame", sa.Integer(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(32), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("probabilities", _JSON, nullable=True),
        sa.Column("gate", _JSON, nullable=True),
        sa.Column("model_name", sa.String(100), nullable=True),
        sa.Column("model_version", sa.String(50), nullable=True),
        sa.Column("model_sha256", sa.String(64), nullable=True),
        sa.Column("image_ref", sa.Text(), nullable=True),
        sa.Column("heatmap_ref", sa.Text(), nullable=True),
        sa.Column("overlay_ref", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("timings", _JSON, nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("patient_ref", sa.String(128), nullable=True),
        sa.Column("study_ref", sa.String(128), nullable=True),
    )
    op.create_index("ix_scan_results_batch_id", "scan_results", ["batch_id"])
    op.create_index("ix_scan_results_tenant_created", "scan_results", ["tenant_id", "created_at"])
    op.create_index("ix_scan_results_state_created", "scan_results", ["state", "created_at"])
    op.create_table(
        "scan_uploads",
        sa.Column("scan_id", sa.String(36), sa.ForeignKey("scan_results.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("media_type", sa.String(100), nullable=False),
    )
    op.create_table(
        "scan_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        _tenant_fk(),
        sa.Column("scan_id", sa.String(36), sa.ForeignKey("scan_results.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("batch_id", sa.String(36), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_scan_events_scan_id_id", "scan_events", ["scan_id", "id"])
    op.create_index("ix_scan_events_batch_id_id", "scan_events", ["batch_id", "id"])


def downgrade() -> None:
    for table in ("scan_events", "scan_uploads", "scan_results", "batches", "users", "tenants"):
        op.drop_table(table)
