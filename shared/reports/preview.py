"""The submitted image as a PNG for reports (DICOM and JPEG originals are not PNG)."""

from __future__ import annotations

from shared.errors import InputError
from shared.imaging import decode_image, to_png_bytes


def preview_png(data: bytes | None, frame: int | None = None, max_side: int = 512) -> bytes | None:
    """What the model saw, as 8-bit PNG at most `max_side` pixels; None if it cannot be read."""
    if not data:
        return None
    try:
        img = decode_image(data, frame=frame)
    except InputError:
        return None
    return to_png_bytes(img.pixels, max_side=max_side)
