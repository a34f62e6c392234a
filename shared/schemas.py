"""Response bodies of the public API (v1), with the examples shown in OpenAPI.

`scan_out` turns a `scan_results` row into a `ScanOut`, signing image links on the way; the
API, the PDF report and the FHIR export all describe a scan through it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.db.models import Batch, Scan
from shared.explanation import Explanation, explanation_for
from shared.labels import CLASSES
from shared.states import FINAL_STATES, JobState


class ErrorBody(BaseModel):
    code: str = Field(examples=["unsupported_media_type"])
    message: str = Field(examples=["Unsupported file type: send a PNG, JPEG or DICOM image."])


class ErrorResponse(BaseModel):
    error: ErrorBody


class Prediction(BaseModel):
    label: str = Field(examples=["glioma"])
    confidence: float = Field(examples=[0.93])
    probabilities: dict[str, float] = Field(examples=[{
        "glioma": 0.93, "meningioma": 0.04, "notumor": 0.01, "pituitary": 0.02}])


class ModelInfo(BaseModel):
    name: str = Field(examples=["neuroscan-cnn"])
    version: str = Field(examples=["1.0.0"])
    sha256: str = Field(examples=["9f2c…"])


class ScanLinks(BaseModel):
    self: str
    events: str
    report: str
    batch: str | None = None


class ScanOut(BaseModel):
    """A scan: its state, and once it succeeded the prediction and signed image links."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    state: JobState = Field(examples=[JobState.SUCCEEDED])
    filename: str | None = Field(default=None, examples=["case-0042.png"])
    format: str = Field(examples=["png"])
    size_bytes: int
    sha256: str
    batch_id: str | None = None
    prediction: Prediction | None = None
    gate: dict[str, Any] | None = None
    model: ModelInfo | None = None
    image_url: str | None = None
    preview_url: str | None = Field(default=None, description=(
        "A link a browser can display (once stored): a PNG rendition of the analysed frame for "
        "originals browsers cannot show (DICOM), else the original itself (as image_url)."))
    heatmap_url: str | None = None
    overlay_url: str | None = None
    explanation: Explanation | None = Field(default=None, description=(
        "What the heatmap shows: the finding's class, or for a no-tumour finding the most "
        "likely tumour class, with its probability and a sentence on what the map means."))
    error: ErrorBody | None = None
    timings: dict[str, Any] | None = None
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    patient_ref: str | None = None
    study_ref: str | None = None
    links: ScanLinks


class ScanAccepted(BaseModel):
    id: str
    state: JobState = Field(examples=[JobState.QUEUED])
    links: ScanLinks


class RejectedFile(BaseModel):
    filename: str | None
    error: ErrorBody


class BatchLinks(BaseModel):
    self: str
    events: str
    report: str


class BatchAccepted(BaseModel):
    id: str
    state: JobState = Field(examples=[JobState.QUEUED])
    scan_ids: list[str]
    rejected: list[RejectedFile] = []
    links: BatchLinks


class BatchOut(BaseModel):
    id: str
    created_at: datetime
    finished_at: datetime | None = None
    total: int
    counts: dict[str, int] = Field(examples=[{
        "queued": 10, "processing": 16, "succeeded": 20, "failed": 4}])
    done: bool
    scans: list[ScanOut]
    links: BatchLinks


class ScanPage(BaseModel):
    items: list[ScanOut]
    page: int
    page_size: int
    total: int


class TenantOut(BaseModel):
    id: str
    name: str


class UserOut(BaseModel):
    id: str
    name: str
    api_key_prefix: str
    created_at: datetime
    expires_at: datetime | None = None  # the key's; None: it does not expire


class MeOut(BaseModel):
    tenant: TenantOut
    user: UserOut


def scan_links(scan_id: str, batch_id: str | None = None) -> ScanLinks:
    return ScanLinks(self=f"/v1/scans/{scan_id}", events=f"/v1/scans/{scan_id}/events",
                     report=f"/v1/scans/{scan_id}/report.pdf",
                     batch=f"/v1/batches/{batch_id}" if batch_id else None)


def batch_links(batch_id: str) -> BatchLinks:
    return BatchLinks(self=f"/v1/batches/{batch_id}", events=f"/v1/batches/{batch_id}/events",
                      report=f"/v1/batches/{batch_id}/report.pdf")


def scan_out(scan: Scan, sign_url: Callable[[str], str]) -> ScanOut:
    """`sign_url(ref)` turns a storage ref into a signed, expiring link."""
    def link(ref: str | None) -> str | None:
        return sign_url(ref) if ref else None

    prediction = None
    if scan.label is not None and scan.probabilities is not None:
        # In CLASSES order: JSONB does not keep key order.
        probabilities = {c: float(scan.probabilities[c]) for c in CLASSES
                         if c in scan.probabilities}
        prediction = Prediction(label=scan.label, confidence=float(scan.confidence or 0.0),
                                probabilities=probabilities)
    model = None
    if scan.model_name:
        model = ModelInfo(name=scan.model_name, version=scan.model_version or "",
                          sha256=scan.model_sha256 or "")
    image_url = link(scan.image_ref)
    # PNG and JPEG display as they are; other formats only through their stored rendition.
    preview_url = link(scan.preview_ref) or (image_url if scan.format in ("png", "jpeg") else None)
    error = None
    if scan.error_code:
        error = ErrorBody(code=scan.error_code, message=scan.error_message or "")
    return ScanOut(
        id=scan.id, state=scan.state, filename=scan.filename, format=scan.format,
        size_bytes=scan.size_bytes, sha256=scan.sha256, batch_id=scan.batch_id,
        prediction=prediction, gate=scan.gate, model=model,
        image_url=image_url, preview_url=preview_url, heatmap_url=link(scan.heatmap_ref),
        overlay_url=link(scan.overlay_ref),
        explanation=explanation_for(prediction.label, prediction.probabilities)
        if prediction and scan.heatmap_ref else None,
        error=error, timings=scan.timings,
        attempts=scan.attempts, created_at=scan.created_at, started_at=scan.started_at,
        finished_at=scan.finished_at, patient_ref=scan.patient_ref, study_ref=scan.study_ref,
        links=scan_links(scan.id, scan.batch_id),
    )


def batch_out(batch: Batch, scans: list[Scan], sign_url: Callable[[str], str]) -> BatchOut:
    counts = {state.value: 0 for state in JobState}
    for scan in scans:
        counts[scan.state] = counts.get(scan.state, 0) + 1
    done = bool(scans) and sum(counts[state] for state in FINAL_STATES) == len(scans)
    finished_at = batch.finished_at
    if done and finished_at is None:
        # The worker records the batch's end just after committing its last scan (so two
        # workers finishing the last two scans cannot both miss it); a reader in between
        # sees every scan final, and the batch ended when its last scan did.
        finished_at = max((s.finished_at for s in scans if s.finished_at), default=None)
    return BatchOut(id=batch.id, created_at=batch.created_at, finished_at=finished_at,
                    total=batch.total, counts=counts, done=done,
                    scans=[scan_out(s, sign_url) for s in scans], links=batch_links(batch.id))
