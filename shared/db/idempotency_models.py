"""The Idempotency-Key record (migration 0007): a submission's answer, kept for replay."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.models import Base, utcnow


class IdempotencyKey(Base):
    """One accepted submission per (tenant, key): the request's fingerprint and the answer it
    got. Written in the transaction that stores the scans, so the key exists exactly when the
    scans do; a second request with the key gets this answer back (api/idempotency.py)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    route: Mapped[str] = mapped_column(String(32))  # "scans" or "batches"
    fingerprint: Mapped[str] = mapped_column(String(64))  # SHA-256 of what the request asked
    status_code: Mapped[int]
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
