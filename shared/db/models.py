"""SQLAlchemy 2 models: tenants and their users (API keys), batches, scans, uploads, events.

One schema for PostgreSQL and SQLite: string UUID keys, portable JSON, timestamps always
returned timezone-aware in UTC (SQLite drops the zone, so a decorator puts it back).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.states import JobState


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use shared.db.models.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
EventId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSONType}


class Tenant(Base):
    """A hospital: every scan, batch and key belongs to exactly one."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Signs this tenant's webhooks (shared/webhooks.py); None: a tenant from before 0008,
    # signed with the deployment's WEBHOOK_SECRET until its own is made (`neuroscan
    # webhook-secret --rotate`).
    webhook_secret: Mapped[str | None] = mapped_column(String(128), default=None)


class User(Base):
    """The `users` table: a person or system of a tenant, holding one API key (hashed)."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    api_key_prefix: Mapped[str] = mapped_column(String(16))
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # In the future: revoked then (a rotated key's grace period). Expired keys and revoked
    # keys are refused with their own error codes (shared/db/tenants.py).
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)  # to the minute or so


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    callback_url: Mapped[str | None] = mapped_column(Text, default=None)
    total: Mapped[int] = mapped_column(default=0)
    # Set once, by whichever worker sees the last scan finish: the batch webhook fires once.
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class Scan(Base):
    """One uploaded image and everything that happened to it (table `scan_results`)."""

    __tablename__ = "scan_results"
    __table_args__ = (
        Index("ix_scan_results_tenant_created", "tenant_id", "created_at"),
        Index("ix_scan_results_state_created", "state", "created_at"),
        Index("ix_scan_results_state_lease", "state", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    batch_id: Mapped[str | None] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), index=True, default=None)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    filename: Mapped[str | None] = mapped_column(String(255), default=None)
    format: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    frame: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(default=0)
    # The worker task holding a `processing` scan, until when (its heartbeat renews it);
    # both None when no worker holds it. See worker/reconciler.py.
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # Times a worker's lease on this scan ran out before the scan was final (the worker died,
    # hung or lost the database): poison_input at SCAN_MAX_LOST_LEASES.
    lost_leases: Mapped[int] = mapped_column(default=0, server_default="0")
    # When the reconciler last sent a task for this scan (None: only the API's own send).
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    label: Mapped[str | None] = mapped_column(String(32), default=None)
    confidence: Mapped[float | None] = mapped_column(Float, default=None)
    probabilities: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    gate: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    model_name: Mapped[str | None] = mapped_column(String(100), default=None)
    model_version: Mapped[str | None] = mapped_column(String(50), default=None)
    model_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    image_ref: Mapped[str | None] = mapped_column(Text, default=None)
    heatmap_ref: Mapped[str | None] = mapped_column(Text, default=None)
    overlay_ref: Mapped[str | None] = mapped_column(Text, default=None)
    # A browser-displayable PNG of what the model saw, for originals a browser cannot show
    # (DICOM); None when the original itself displays.
    preview_ref: Mapped[str | None] = mapped_column(Text, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    timings: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    callback_url: Mapped[str | None] = mapped_column(Text, default=None)
    patient_ref: Mapped[str | None] = mapped_column(String(128), default=None)
    study_ref: Mapped[str | None] = mapped_column(String(128), default=None)

    # Declared so that one flush inserts a new batch before its scans (never loaded lazily).
    batch: Mapped[Batch | None] = relationship(lazy="raise")

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)


class ScanUpload(Base):
    """The accepted original bytes, written in the same transaction as the `queued` row, so
    that 202 Accepted means "we have it" even while the broker is down."""

    __tablename__ = "scan_uploads"

    scan_id: Mapped[str] = mapped_column(
        ForeignKey("scan_results.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    media_type: Mapped[str] = mapped_column(String(100))

    # Orders inserts: the scan row before its upload in the same flush.
    scan: Mapped[Scan] = relationship(lazy="raise")


class ScanEvent(Base):
    """One row per state change, written with the change; its id is the SSE event id."""

    __tablename__ = "scan_events"
    __table_args__ = (
        Index("ix_scan_events_scan_id_id", "scan_id", "id"),
        Index("ix_scan_events_batch_id_id", "batch_id", "id"),
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    scan_id: Mapped[str] = mapped_column(ForeignKey("scan_results.id", ondelete="CASCADE"))
    batch_id: Mapped[str | None] = mapped_column(String(36), default=None)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    # Orders inserts: the scan row before its events in the same flush.
    scan: Mapped[Scan] = relationship(lazy="raise")
