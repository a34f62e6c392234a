"""Errors with a stable machine-readable code, shown to clients as {"error": {"code", "message"}}."""

from __future__ import annotations


class NeuroScanError(Exception):
    """Base class: `code` is part of the public contract, `message` is a sentence for people."""

    code: str = "internal_error"
    http_status: int = 500

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InputError(NeuroScanError):
    """The upload itself is unacceptable; retrying the same bytes will never succeed."""

    code = "invalid_input"
    http_status = 422


# Codes used for uploads (documented in the README's error table).
EMPTY_FILE = "empty_file"
FILE_TOO_LARGE = "file_too_large"  # 413
UNSUPPORTED_TYPE = "unsupported_media_type"  # 415
UNDECODABLE = "undecodable_image"
IMAGE_TOO_SMALL = "image_too_small"
IMAGE_TOO_LARGE = "image_too_large"
BAD_ASPECT_RATIO = "bad_aspect_ratio"
NOT_BRAIN_MRI = "not_brain_mri"


class ServiceBusy(NeuroScanError):
    """The service is saturated (connection pool, SQLite's single writer): try again shortly.

    Answered 503 with `Retry-After`; nothing was stored."""

    code = "unavailable"
    http_status = 503

    def __init__(self, message: str, *, retry_after_s: int = 2):
        super().__init__(message)
        self.retry_after_s = retry_after_s
