"""webhook_deliveries as the outbox: each row is one try, planned (`pending`), in flight
(`sending`) or made (`done`).

A scan's first row is written `pending` in the transaction that makes the scan final
(shared/webhooks.py); a try that is worth repeating writes the next one, due after its
backoff. The reconciler re-sends rows still pending WEBHOOK_RESEND_AGE_S after they were due
(the broker was down), so no webhook is lost between "result written" and "task sent".
Rows from before this revision were all tries already made: `done`.

Revision ID: 0010_webhook_outbox
Revises: 0006_data_lifecycle
Create Date: 2025-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_webhook_outbox"
down_revision: str | None = "0006_data_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Never a table copy on SQLite (see 0003): plain ADD COLUMN, nullable or with a default.
    with op.batch_alter_table("webhook_deliveries", recreate="never") as batch:
        batch.add_column(sa.Column("state", sa.String(16), nullable=False,
                                   server_default="done"))
        batch.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_webhook_deliveries_state_due", "webhook_deliveries", ["state", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_state_due", table_name="webhook_deliveries")
    with op.batch_alter_table("webhook_deliveries", recreate="never") as batch:
        for name in ("claimed_at", "enqueued_at", "due_at", "state"):
            batch.drop_column(name)
