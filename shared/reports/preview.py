"""The submitted image as a PNG for reports (DICOM and JPEG originals are not PNG)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.errors import InputError
from shared.imaging import decode_image


def preview_png(data: bytes | None, frame: int | None = None, max_side: int = 512) -> bytes | None:
    """What the model saw, as 8-bit PNG at most `max_side` pixels; None if it cannot be read."""
    if not data:
        return None
    try:
        img = decode_image(data, frame=frame)
    except InputError:
        return None
    pixels = np.clip(img.pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels)
    picture.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()
