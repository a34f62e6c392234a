"""Grad-CAM post-processing: the coarse map upsampled in the graph, then taken back to the
image's own frame (the inverse of preprocessing's crop, pad and resize)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from shared.preprocessing import preprocess, to_model_frame
from worker.model.gradcam_postprocess import to_original_frame, upsample_cam


def _peak(cam: np.ndarray) -> np.ndarray:
    return np.array(np.unravel_index(int(np.argmax(cam)), cam.shape), float)


@pytest.mark.parametrize("centre", [(3.3, 9.6), (7.75, 7.25), (12.4, 4.5)])
def test_upsampled_peak_lies_between_cells(centre: tuple[float, float]) -> None:
    """A map sampled from a blob centred between cells: the upsampled maximum lands near the
    true centre, not on the nearest cell centre as a bilinear resize would put it."""
    yy, xx = np.mgrid[:16, :16].astype(np.float32)
    cy, cx = centre
    coarse = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0)[np.newaxis]
    up = upsample_cam(tf.constant(coarse), (128, 128)).numpy()[0]
    truth = (np.array(centre) + 0.5) * 8 - 0.5  # cell i covers pixels 8i..8i+7 (half-pixel centres)
    bilinear = tf.image.resize(coarse[..., None], (128, 128))[0, ..., 0].numpy()
    assert np.abs(_peak(up) - truth).max() <= 1.5
    assert np.abs(_peak(bilinear) - truth).max() > np.abs(_peak(up) - truth).max()
    assert up.min() >= 0.0 and up.max() == pytest.approx(1.0, abs=1e-6)


def test_all_zero_coarse_map_upsamples_to_zero_not_nan() -> None:
    up = upsample_cam(tf.zeros([2, 4, 4]), (32, 32)).numpy()
    assert up.shape == (2, 32, 32) and np.isfinite(up).all()
    np.testing.assert_array_equal(up, 0.0)


def _head(h: int, w: int) -> np.ndarray:
    """A bright ellipse (a "head") on black, off-centre, with a smooth gradient inside."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    inside = ((yy - 0.55 * h) / (0.3 * h)) ** 2 + ((xx - 0.45 * w) / (0.3 * w)) ** 2 < 1.0
    return np.where(inside, 0.4 + 0.6 * xx / w, 0.0).astype(np.float32)


@pytest.mark.parametrize("shape", [(240, 180), (180, 240), (200, 200)])
def test_to_original_frame_round_trip(shape: tuple[int, int]) -> None:
    """Into the model frame and back: a smooth plane comes back where it was (within the
    blur of two bilinear resizes), and nothing appears outside the crop box."""
    image = _head(*shape)
    prepared = preprocess(image, 128)
    top, bottom, left, right = prepared.box
    assert (bottom - top, right - left) != shape  # the head was cropped: the box matters

    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    plane = np.exp(-(((yy - 0.55 * shape[0]) / 40) ** 2 + ((xx - 0.45 * shape[1]) / 30) ** 2))
    back = to_original_frame(to_model_frame(plane, prepared.box, 128), prepared.box, shape)

    assert back.shape == shape and back.dtype == np.float32
    inner = (slice(top + 2, bottom - 2), slice(left + 2, right - 2))
    assert np.abs(back[inner] - plane[inner]).max() < 0.05
    peak = np.unravel_index(int(np.argmax(back)), shape)
    assert np.abs(np.subtract(peak, np.unravel_index(int(np.argmax(plane)), shape))).max() <= 2
    outside = np.ones(shape, bool)
    outside[top:bottom, left:right] = False
    assert not back[outside].any()  # the model never saw those pixels


def test_to_original_frame_of_the_model_input_is_the_scaled_image() -> None:
    """preprocess's own output, mapped back, lies over the scaled frame it was cut from."""
    image = _head(300, 220)
    prepared = preprocess(image, 128)
    back = to_original_frame(prepared.image[..., 0], prepared.box, image.shape)
    top, bottom, left, right = prepared.box
    inner = (slice(top + 3, bottom - 3), slice(left + 3, right - 3))
    # Edges of the ellipse blur in two resizes; the bulk matches closely.
    assert np.median(np.abs(back[inner] - prepared.scaled[inner])) < 0.02
