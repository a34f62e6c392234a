"""Join the four revisions written side by side on top of 0006 (idempotency keys, key
management, the read audit, the webhook outbox) into one head. They touch different tables
and columns, so their order does not matter; this revision changes nothing itself.

Revision ID: 0011_merge_parallel_heads
Revises: 0007_idempotency_keys, 0008_key_management, 0009_read_audit, 0010_webhook_outbox
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0011_merge_parallel_heads"
down_revision: str | Sequence[str] | None = (
    "0007_idempotency_keys",
    "0008_key_management",
    "0009_read_audit",
    "0010_webhook_outbox",
)
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
