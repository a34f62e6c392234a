"""The heatmap and overlay PNGs people look at (worker/overlay.py)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from shared.preprocessing import preprocess
from tests.support.images import brain_slice
from worker import overlay


def _cam(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((yy - h * 0.3) ** 2 + (xx - w * 0.6) ** 2) / (0.01 * h * w)).astype(np.float32)


def _decode(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


def test_colorize_maps_the_ends_of_the_scale_to_jet() -> None:
    bgr = overlay.colorize(np.array([[0.0, 1.0]], np.float32))
    assert bgr.shape == (1, 2, 3) and bgr.dtype == np.uint8
    assert bgr[0, 0, 0] > 100 and bgr[0, 0, 2] == 0  # 0: blue
    assert bgr[0, 1, 2] > 100 and bgr[0, 1, 0] == 0  # 1: red


def test_heatmap_png_is_the_colour_map_in_the_original_frame() -> None:
    cam = _cam(90, 120)
    png = overlay.heatmap_png(cam)
    assert Image.open(io.BytesIO(png)).mode == "P"  # indexed colour: the map's 256 levels
    np.testing.assert_array_equal(_decode(png), overlay.colorize(cam))


def test_blend_shows_the_plain_scan_where_the_map_is_zero() -> None:
    pixels = brain_slice(2, "meningioma", 128)
    cam = np.zeros((128, 128), np.float32)
    cam[10:30, 10:30] = 1.0
    blended = overlay.blend(pixels, cam)
    gray = cv2.cvtColor(overlay.blend(pixels, np.zeros_like(cam)), cv2.COLOR_BGR2GRAY)
    untouched = np.ones(cam.shape, bool)
    untouched[10:30, 10:30] = False
    np.testing.assert_array_equal(blended[untouched], overlay.blend(pixels, np.zeros_like(cam))[untouched])
    assert np.abs(blended[10:30, 10:30].astype(int) - gray[10:30, 10:30, None]).max() > 40  # coloured
    # At the peak the colour covers MAX_ALPHA of the pixel, never all of it.
    red = overlay.colorize(np.ones((1, 1), np.float32))[0, 0].astype(float)
    expected = overlay.MAX_ALPHA * red + (1 - overlay.MAX_ALPHA) * gray[20, 20]
    np.testing.assert_allclose(blended[20, 20], expected, atol=2)


def test_blend_reuses_the_scaled_frame_from_preprocessing() -> None:
    pixels = brain_slice(4, "glioma", 160)
    cam = _cam(160, 160)
    scaled = preprocess(pixels, 64).scaled
    np.testing.assert_array_equal(overlay.blend(pixels, cam, scaled), overlay.blend(pixels, cam))


def test_blend_refuses_a_map_of_another_size() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        overlay.blend(np.zeros((20, 30), np.uint8), np.zeros((30, 20), np.float32))


def test_overlay_png_is_capped_in_size_keeping_the_aspect() -> None:
    big = np.tile(brain_slice(1, "pituitary", 256), (8, 5))  # 2048 x 1280
    png = overlay.overlay_png(big, _cam(*big.shape))
    assert _decode(png).shape == (overlay.OVERLAY_MAX_SIDE, 640, 3)
    small = brain_slice(1, "pituitary", 256)
    assert _decode(overlay.overlay_png(small, _cam(256, 256))).shape == (256, 256, 3)
