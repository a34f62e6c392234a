"""The one preprocessing path: any decoded image -> the model's input tensor.

Training, evaluation, the offline `predict` command and the worker all call `preprocess`,
so the network always sees the same thing (`tests/shared/test_preprocessing.py` checks that
no other function prepares the model's input). The model input's crop box comes with it, so
a map can be taken back to the image's own frame without recomputing it
(`worker.model.gradcam_postprocess.to_original_frame`).
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

from typing import Final, NamedTuple

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


def square_placement(h: int, w: int) -> tuple[int, int, int]:
    """(side, row, column): the square an h x w crop is padded to, and where the crop sits in
    it (centred). `to_original_frame` reads the same placement back."""
    side = max(h, w)
    return side, (side - h) // 2, (side - w) // 2


def pad_to_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    side, y, x = square_placement(h, w)
    out = np.zeros((side, side), dtype=np.float32)
    out[y : y + h, x : x + w] = img
    return out


class Preprocessed(NamedTuple):
    image: np.ndarray  # float32 (size, size, 1) in [0, 1]: the model's input
    box: tuple[int, int, int, int]  # (top, bottom, left, right): the crop, in the image's pixels
    scaled: np.ndarray  # float32 HxW, the whole frame scaled to [0, 1] (step 2); the overlay reuses it


def preprocess(pixels: np.ndarray, size: int) -> Preprocessed:
    """Any decoded image (HxW or HxWxC, any dtype) -> the model's input, the crop box it used
    and the whole frame scaled to [0, 1] (which the worker's overlay reuses instead of
    computing the percentiles again)."""
    scaled = scale_intensity(to_grayscale(pixels))
    box = head_bounding_box(scaled)
    return Preprocessed(to_model_frame(scaled, box, size)[..., np.newaxis], box, scaled)


def to_model_frame(plane: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop, pad and resize any HxW plane (image, lesion mask) exactly as `preprocess` does."""
    top, bottom, left, right = box
    square = pad_to_square(np.asarray(plane, dtype=np.float32)[top:bottom, left:right])
    resized = Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
