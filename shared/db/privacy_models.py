"""A tenant's privacy choices (migration 0009): whether client file names may leave the API."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, false
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.models import Base, utcnow


class TenantPrivacy(Base):
    """No row, or `share_filenames` false: the file names clients upload stay in the result
    API (for their owner) and out of PDF reports and webhook payloads."""

    __tablename__ = "tenant_privacy"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    share_filenames: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
