"""Tables of the data lifecycle (migration 0006): the audit log and per-tenant retention."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.models import Base, EventId, utcnow


class AuditEvent(Base):
    """Append-only: who removed (or exported) what, when. Never updated, never purged by the
    retention it records; `key_id` is the API key's `users.id` (None: the service itself)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_tenant_at", "tenant_id", "at"),)

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    # No foreign key: the record of a deletion outlives what it deleted.
    tenant_id: Mapped[str | None] = mapped_column(String(36), default=None)
    key_id: Mapped[str | None] = mapped_column(String(36), default=None)
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    request_id: Mapped[str | None] = mapped_column(String(64), default=None)
    detail: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class TenantRetention(Base):
    """A tenant's own retention, in days, where it differs from the deployment's defaults
    (RETENTION_*_DAYS); None: the default; 0: kept until deleted on request."""

    __tablename__ = "tenant_retention"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    originals_days: Mapped[int | None] = mapped_column(default=None)
    derived_days: Mapped[int | None] = mapped_column(default=None)
    results_days: Mapped[int | None] = mapped_column(default=None)
    events_days: Mapped[int | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
