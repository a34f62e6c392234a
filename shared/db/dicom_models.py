"""Tables of DICOM networking (migration 0005): series, their instances, re-identification.

A series groups the scans whose de-identified SeriesInstanceUID is the same (the remapped UID:
the original never reaches the database in clear). Its re-identification record, the original
Study/Series/SOP Instance UIDs and nothing else, is kept encrypted (`shared.reid`) with a key
that lives outside the database, only to file the results under the original study, and is
deleted after DICOM_REID_RETENTION_S.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.models import Base, new_id, utcnow


class DicomSeries(Base):
    """One received series and, once its slices are final, its series finding."""

    __tablename__ = "dicom_series"
    __table_args__ = (
        UniqueConstraint("tenant_id", "series_uid", name="uq_dicom_series_tenant_uid"),
        Index("ix_dicom_series_tenant_created", "tenant_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    series_uid: Mapped[str] = mapped_column(String(64))  # de-identified (remapped)
    study_ref: Mapped[str | None] = mapped_column(String(128), default=None)
    patient_ref: Mapped[str | None] = mapped_column(String(128), default=None)
    source: Mapped[str] = mapped_column(String(16))  # "stow-rs" or "c-store"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_instance_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set by POST /v1/series/{id}/complete, or by the settle time, when the finding is made.
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    # receiving -> processing -> succeeded | failed
    state: Mapped[str] = mapped_column(String(16), default="receiving")
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    label: Mapped[str | None] = mapped_column(String(32), default=None)
    probability: Mapped[float | None] = mapped_column(Float, default=None)
    tumour_probability: Mapped[float | None] = mapped_column(Float, default=None)
    key_scan_id: Mapped[str | None] = mapped_column(String(36), default=None)
    finding: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    # Results back into the PACS: not_configured | pending | delivered | failed
    delivery_state: Mapped[str | None] = mapped_column(String(16), default=None)
    delivery_error: Mapped[str | None] = mapped_column(Text, default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    delivered: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # new UIDs we sent
    # AES-GCM ciphertext of {"study_uid", "series_uid"} (originals); None once purged.
    reid: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    reid_expires_at: Mapped[datetime | None] = mapped_column(default=None)


class DicomInstance(Base):
    """One slice of a series: its scan, its position, and its original SOP UIDs (encrypted)."""

    __tablename__ = "dicom_instances"

    scan_id: Mapped[str] = mapped_column(
        ForeignKey("scan_results.id", ondelete="CASCADE"), primary_key=True)
    series_id: Mapped[str] = mapped_column(
        ForeignKey("dicom_series.id", ondelete="CASCADE"), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64))  # de-identified (remapped)
    instance_number: Mapped[int | None] = mapped_column(Integer, default=None)
    # AES-GCM ciphertext of {"sop_uid", "sop_class_uid"} (originals); None once purged.
    reid: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
