"""Render a Grad-CAM map for people: a colour heatmap, and the heatmap blended on the scan.

Presentation only; the map itself comes from `worker.model.gradcam`. OpenCV works in BGR,
so the PNGs are encoded straight from BGR arrays.
"""

from __future__ import annotations

import cv2
import numpy as np

from shared.preprocessing import scale_intensity, to_grayscale

COLORMAP = cv2.COLORMAP_JET
MAX_ALPHA = 0.55  # at the map's peak the colour covers 55%; the anatomy stays readable under it


def _encode_png(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:  # pragma: no cover - OpenCV fails only on invalid arrays
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def colorize(cam: np.ndarray) -> np.ndarray:
    """HxW map in [0, 1] -> HxWx3 uint8 BGR colour image."""
    levels = np.round(np.clip(np.nan_to_num(cam), 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.applyColorMap(levels, COLORMAP)


def blend(pixels: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The scan (any decoded pixels, same HxW as `cam`) with the heatmap laid over it, BGR uint8.

    Opacity follows the map, so regions the model ignored show the plain scan."""
    gray = scale_intensity(to_grayscale(pixels))
    if gray.shape != cam.shape:
        raise ValueError(f"image {gray.shape} and map {cam.shape} differ in size")
    base = np.repeat(gray[..., np.newaxis] * 255.0, 3, axis=2)
    alpha = (MAX_ALPHA * np.clip(cam, 0.0, 1.0))[..., np.newaxis]
    out = base * (1.0 - alpha) + colorize(cam).astype(np.float32) * alpha
    return np.round(out).astype(np.uint8)


def heatmap_png(cam: np.ndarray) -> bytes:
    return _encode_png(colorize(cam))


def overlay_png(pixels: np.ndarray, cam: np.ndarray) -> bytes:
    return _encode_png(blend(pixels, cam))
