"""dicom_series and dicom_instances: DICOM series, their findings and re-identification records.

Revision ID: 0005_dicom_series
Revises: 0004_scan_leases
Create Date: 2025-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_dicom_series"
down_revision: str | None = "0004_scan_leases"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "dicom_series",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("study_ref", sa.String(128)),
        sa.Column("patient_ref", sa.String(128)),
        sa.Column("source", sa.String(16), nullable=False),
        _ts("created_at", False), _ts("last_instance_at", False), _ts("completed_at"),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("finished_at"),
        sa.Column("label", sa.String(32)),
        sa.Column("probability", sa.Float()),
        sa.Column("tumour_probability", sa.Float()),
        sa.Column("key_scan_id", sa.String(36)),
        sa.Column("finding", _JSON),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text()),
        sa.Column("delivery_state", sa.String(16)),
        sa.Column("delivery_error", sa.Text()),
        _ts("delivered_at"),
        sa.Column("delivered", _JSON),
        sa.Column("reid", sa.LargeBinary()),
        _ts("reid_expires_at"),
        sa.UniqueConstraint("tenant_id", "series_uid", name="uq_dicom_series_tenant_uid"),
    )
    op.create_index("ix_dicom_series_tenant_created", "dicom_series", ["tenant_id", "created_at"])
    op.create_table(
        "dicom_instances",
        sa.Column("scan_id", sa.String(36), sa.ForeignKey("scan_results.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("series_id", sa.String(36), sa.ForeignKey("dicom_series.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("sop_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.Integer()),
        sa.Column("reid", sa.LargeBinary()),
    )
    op.create_index("ix_dicom_instances_series_id", "dicom_instances", ["series_id"])


def downgrade() -> None:
    op.drop_index("ix_dicom_instances_series_id", table_name="dicom_instances")
    op.drop_table("dicom_instances")
    op.drop_index("ix_dicom_series_tenant_created", table_name="dicom_series")
    op.drop_table("dicom_series")
