"""Render a Grad-CAM map for people: a colour heatmap, and the heatmap blended on the scan.

Presentation only; the map itself comes from `worker.model.gradcam`. OpenCV works in BGR,
so the PNGs are encoded straight from BGR arrays. Both stay PNG (lossless, and what every
consumer of the links expects); docs/performance.md has PNG, WebP and JPEG measured side by
side. The work is done in OpenCV's vectorised kernels on uint8 wherever the result is uint8
anyway (the first version's float32 NumPy blend cost more than the model pass per image).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from shared.preprocessing import scale_intensity, to_grayscale

COLORMAP = cv2.COLORMAP_JET
MAX_ALPHA = 0.55  # at the map's peak the colour covers 55%; the anatomy stays readable under it
# The overlay is for looking at (page, PDF, key-slice capture): past this side it is drawn
# smaller, so that a huge upload costs a bounded encode. The heatmap keeps the original frame.
OVERLAY_MAX_SIDE = 1024


def _encode_png(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:  # pragma: no cover - OpenCV fails only on invalid arrays
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _levels(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 0..255, rounded and saturated (NaN -> 0) in one OpenCV pass."""
    return cv2.convertScaleAbs(np.asarray(unit, dtype=np.float32), alpha=255.0)


def colorize(cam: np.ndarray) -> np.ndarray:
    """HxW map in [0, 1] -> HxWx3 uint8 BGR colour image."""
    return cv2.applyColorMap(_levels(cam), COLORMAP)


def blend(pixels: np.ndarray, cam: np.ndarray, scaled: np.ndarray | None = None) -> np.ndarray:
    """The scan (any decoded pixels, same HxW as `cam`) with the heatmap laid over it, BGR uint8.

    Opacity follows the map, so regions the model ignored show the plain scan. `scaled` is
    the scan's grayscale already scaled to [0, 1] (`shared.preprocessing.scale_intensity`),
    when the caller has it: preprocessing computed it, and computing it again is most of
    the cost of a blend."""
    gray = scale_intensity(to_grayscale(pixels)) if scaled is None else scaled
    if gray.shape != cam.shape:
        raise ValueError(f"image {gray.shape} and map {cam.shape} differ in size")
    base = cv2.cvtColor(_levels(gray), cv2.COLOR_GRAY2BGR)
    alpha = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0) * np.float32(MAX_ALPHA)
    # (w1*colour + w2*base) / (w1 + w2) with w1 + w2 = 1 per pixel: the alpha blend.
    return cv2.blendLinear(colorize(cam), base, alpha, np.float32(1.0) - alpha)


# The colour map is a 256-entry lookup table, so the heatmap is exactly an indexed-colour
# PNG: one byte per pixel and the table as its palette, the same pixels as the RGB image
# (decoders expand it), a third of the bytes to filter and deflate: 3x faster, half the size.
_PALETTE = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, np.newaxis],
                             COLORMAP)[:, 0, ::-1].tobytes()  # BGR -> RGB


def heatmap_png(cam: np.ndarray) -> bytes:
    image = Image.fromarray(_levels(cam))
    image.putpalette(_PALETTE)
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def overlay_png(pixels: np.ndarray, cam: np.ndarray, scaled: np.ndarray | None = None) -> bytes:
    """The blend as PNG, at most OVERLAY_MAX_SIDE on its longer side."""
    gray = scale_intensity(to_grayscale(pixels)) if scaled is None else scaled
    factor = OVERLAY_MAX_SIDE / max(gray.shape)
    if factor < 1:
        size = (max(1, round(gray.shape[1] * factor)), max(1, round(gray.shape[0] * factor)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        cam = cv2.resize(np.asarray(cam, dtype=np.float32), size, interpolation=cv2.INTER_AREA)
    return _encode_png(blend(gray, cam, gray))
