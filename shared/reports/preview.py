"""The submitted image as a PNG for reports (DICOM and JPEG originals are not PNG).

Reports draw from the worker's stored preview where there is one (every DICOM, and every PNG
or JPEG larger than DECODE_MAX_SIDE); what reaches this function otherwise is an original no
larger than that, or the preview itself. Either way it is decoded shrunk to `max_side` in
bounded memory (`shared.imaging`), never at full size.
"""

from __future__ import annotations

from shared.errors import InputError
from shared.imaging import decode_image, to_png_bytes


def preview_png(data: bytes | None, frame: int | None = None, max_side: int = 512) -> bytes | None:
    """What the model saw, as 8-bit PNG at most `max_side` pixels; None if it cannot be read."""
    if not data:
        return None
    try:
        img = decode_image(data, frame=frame, max_side=max_side)
    except InputError:
        return None
    return to_png_bytes(img.pixels, max_side=max_side)
