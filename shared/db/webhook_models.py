"""Tables of the hospital integration (migration 0002): one row per webhook delivery attempt."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.models import Base, EventId, utcnow


class WebhookDelivery(Base):
    """Each POST we tried: where (the URL the client gave), which try, and what came back."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_scan_id", "scan_id"),
        Index("ix_webhook_deliveries_batch_id", "batch_id"),
        Index("ix_webhook_deliveries_state_due", "state", "due_at"),
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    scan_id: Mapped[str | None] = mapped_column(
        ForeignKey("scan_results.id", ondelete="CASCADE"), default=None)
    batch_id: Mapped[str | None] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), default=None)
    url: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(default=1)
    status_code: Mapped[int | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The outbox (migration 0010, shared/webhooks.py): `pending` (planned, due at `due_at`;
    # a task last sent at `enqueued_at`), `sending` (a worker claimed it at `claimed_at`) or
    # `done` (made: `status_code`/`error` say how it went).
    state: Mapped[str] = mapped_column(String(16), default="done", server_default="done")
    due_at: Mapped[datetime | None] = mapped_column(default=None)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
