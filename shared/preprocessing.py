"""The one preprocessing path: any decoded image -> the model's input tensor.

Training, evaluation, the offline `predict` command and the worker all call
`preprocess` (or `preprocess_batch`), so the network always sees the same thing.
NumPy and Pillow only: the API imports this module too, and has no TensorFlow.

Steps, each for a reason:
1. grayscale: MRI is single-channel; colour JPEG exports carry no extra information;
2. robust intensity scaling (0.5th..99.5th percentile -> 0..1): scanners, exports and
   windowing differ by orders of magnitude, a few hot pixels must not set the range;
3. crop to the head's bounding box (with a margin): clinical framing varies, the head's
   extent does not; this removes most of the field-of-view variation before resizing;
4. pad to square, centred: keeps the anatomy's aspect ratio instead of stretching it;
5. antialiased resize to the model's input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
from PIL import Image

PREPROCESSING_ID: Final[str] = "gray-p0.5-99.5-headcrop-padsquare-v1"
"""Recorded in every model card; bump when the steps below change."""

_LOW_PCT, _HIGH_PCT = 0.5, 99.5
_FOREGROUND_LEVEL = 0.08  # of the scaled range; background air in MRI sits well below it
_CROP_MARGIN = 0.04  # of the larger side, so the skull edge is never cut
_MIN_CROP_FRACTION = 0.25  # a "head" smaller than this is noise; keep the whole frame


def to_grayscale(pixels: np.ndarray) -> np.ndarray:
    """HxW or HxWxC (C = 1, 3 or 4) array -> float32 HxW, using Rec. 601 luma for colour."""
    arr = np.asarray(pixels)
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        elif arr.shape[2] in (3, 4):
            rgb = arr[..., :3].astype(np.float32)
            arr = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        else:
            raise ValueError(f"unsupported channel count {arr.shape[2]}")
    elif arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def scale_intensity(gray: np.ndarray) -> np.ndarray:
    """Robustly map intensities to [0, 1]; a constant image becomes all zeros (never NaN)."""
    lo, hi = np.percentile(gray, [_LOW_PCT, _HIGH_PCT])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo < 1e-6:
        return np.zeros_like(gray, dtype=np.float32)
    return np.clip((gray - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def head_bounding_box(scaled: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the foreground, with a margin; the whole frame if unsure."""
    h, w = scaled.shape
    mask = scaled > _FOREGROUND_LEVEL
    # A row/column belongs to the head when a meaningful share of it is foreground;
    # this ignores isolated bright pixels, labels and scanner text in the corners.
    rows = np.flatnonzero(mask.sum(axis=1) > 0.02 * w)
    cols = np.flatnonzero(mask.sum(axis=0) > 0.02 * h)
    if rows.size == 0 or cols.size == 0:
        return 0, h, 0, w
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if (bottom - top) < _MIN_CROP_FRACTION * h or (right - left) < _MIN_CROP_FRACTION * w:
        return 0, h, 0, w
    margin = int(round(_CROP_MARGIN * max(h, w)))
    return max(0, top - margin), min(h, bottom + margin), max(0, left - margin), min(w, right + margin)


def pad_to_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    side = max(h, w)
    out = np.zeros((side, side), dtype=np.float32)
    y, x = (side - h) // 2, (side - w) // 2
    out[y : y + h, x : x + w] = img
    return out


def preprocess(pixels: np.ndarray, size: int) -> np.ndarray:
    """Any decoded image (HxW or HxWxC, any dtype) -> float32 (size, size, 1) in [0, 1]."""
    return preprocess_with_box(pixels, size)[0]


def preprocess_with_box(pixels: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`preprocess`, plus the crop box it used (to map heatmaps back without recomputing it)."""
    x, box, _ = preprocess_with_scaled(pixels, size)
    return x, box


def preprocess_with_scaled(pixels: np.ndarray, size: int
                           ) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray]:
    """`preprocess_with_box`, plus the whole frame scaled to [0, 1] (step 2), which the
    worker's overlay reuses instead of computing the percentiles again."""
    scaled = scale_intensity(to_grayscale(pixels))
    box = head_bounding_box(scaled)
    return to_model_frame(scaled, box, size)[..., np.newaxis], box, scaled


def preprocess_batch(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Several images -> float32 (N, size, size, 1)."""
    if not images:
        return np.zeros((0, size, size, 1), dtype=np.float32)
    return np.stack([preprocess(img, size) for img in images])


def crop_box_for(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """The crop `preprocess` applies to this image, in its own pixel coordinates."""
    return head_bounding_box(scale_intensity(to_grayscale(pixels)))


def to_model_frame(plane: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop, pad and resize any HxW plane (image, lesion mask) exactly as `preprocess` does."""
    top, bottom, left, right = box
    square = pad_to_square(np.asarray(plane, dtype=np.float32)[top:bottom, left:right])
    resized = Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def to_original_frame(
    plane: np.ndarray, box: tuple[int, int, int, int], original_shape: tuple[int, int]
) -> np.ndarray:
    """Inverse of `to_model_frame`: a (size, size) map (e.g. Grad-CAM) -> the original HxW frame.

    Outside the crop box the result is 0 (the model never saw those pixels)."""
    top, bottom, left, right = box
    h, w = bottom - top, right - left
    side = max(h, w)
    square = Image.fromarray(np.asarray(plane, dtype=np.float32)).resize(
        (side, side), Image.Resampling.BILINEAR
    )
    y, x = (side - h) // 2, (side - w) // 2
    out = np.zeros(original_shape, dtype=np.float32)
    out[top:bottom, left:right] = np.asarray(square, dtype=np.float32)[y : y + h, x : x + w]
    return out
