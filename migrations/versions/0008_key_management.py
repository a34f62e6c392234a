"""Key management: API keys that expire and record their last use; a webhook secret per tenant.

Existing keys keep no expiry (they were issued without one; `neuroscan keys rotate` gives them
one). Existing tenants keep signing with the deployment's secret (WEBHOOK_SECRET, or the one
derived from SECRET_KEY) until `neuroscan webhook-secret --tenant NAME --rotate` gives them
their own, so that no receiver stops verifying at the upgrade; new tenants get their own.

Revision ID: 0008_key_management
Revises: 0006_data_lifecycle
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_key_management"
down_revision: str | None = "0006_data_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("tenants", sa.Column("webhook_secret", sa.String(128), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN in place: a table copy on SQLite would drop `tenants` and
    # cascade into every scan (recreate="never" refuses to fall back to one).
    with op.batch_alter_table("tenants", recreate="never") as batch:
        batch.drop_column("webhook_secret")
    with op.batch_alter_table("users", recreate="never") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
