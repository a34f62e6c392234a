"""The one preprocessing function: any decoded image -> the model's input, its crop box and
the scaled frame; and the README's invariant that training, evaluation and serving all use it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from shared.labels import CLASSES
from shared.preprocessing import (
    head_bounding_box,
    pad_to_square,
    preprocess,
    scale_intensity,
    to_grayscale,
    to_model_frame,
)
from tests.support.images import brain_slice, encode

ROOT = Path(__file__).resolve().parents[2]


def _head_on_black(h: int, w: int) -> np.ndarray:
    """A bright disc off-centre in a wide black frame, with a few hot pixels in a corner."""
    yy, xx = np.mgrid[:h, :w]
    image = np.where((yy - h * 0.5) ** 2 + (xx - w * 0.3) ** 2 < (0.3 * h) ** 2, 900.0, 20.0)
    image[:3, -3:] = 60000.0  # scanner text / a hot pixel must not set the range
    return image.astype(np.float32)


def test_output_is_the_model_input_with_its_box_and_scaled_frame() -> None:
    image = _head_on_black(200, 320)
    prepared = preprocess(image, 64)
    assert prepared.image.shape == (64, 64, 1) and prepared.image.dtype == np.float32
    assert prepared.image.min() >= 0.0 and prepared.image.max() <= 1.0
    assert prepared.scaled.shape == (200, 320) and prepared.scaled.max() == pytest.approx(1.0)
    top, bottom, left, right = prepared.box
    # The disc spans rows 40..160 and columns 36..156; the box holds it with a small margin.
    assert top <= 40 and bottom >= 160 and left <= 36 and right >= 156
    assert right < 200  # the black right half is cut away
    np.testing.assert_array_equal(prepared.image[..., 0],
                                  to_model_frame(prepared.scaled, prepared.box, 64))


def test_constant_image_gives_zeros_not_nan() -> None:
    prepared = preprocess(np.full((50, 70), 123, np.uint16), 32)
    assert np.isfinite(prepared.image).all() and not prepared.image.any()
    assert prepared.box == (0, 50, 0, 70)  # nothing to crop to: the whole frame


def test_colour_and_grey_copies_preprocess_alike() -> None:
    grey = brain_slice(3, "glioma", 128)
    rgb = np.repeat(grey[..., np.newaxis], 3, axis=2)
    np.testing.assert_allclose(preprocess(rgb, 64).image, preprocess(grey, 64).image, atol=1e-5)
    with pytest.raises(ValueError, match="channel"):
        to_grayscale(np.zeros((8, 8, 2)))


def test_steps() -> None:
    gray = to_grayscale(_head_on_black(100, 160))
    scaled = scale_intensity(gray)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    top, bottom, left, right = head_bounding_box(scaled)
    assert (bottom - top) < 100 or (right - left) < 160
    square = pad_to_square(np.ones((4, 10), np.float32))
    assert square.shape == (10, 10) and square[:3].sum() == 0 and square[3:7].all() and square[7:].sum() == 0


def test_training_loader_feeds_the_network_what_preprocess_gives(tmp_path: Path) -> None:
    """The training arrays are `preprocess` itself (8-bit): what serving computes per image."""
    from research.training.data import load_folder

    for i, label in enumerate(CLASSES):
        (tmp_path / label).mkdir()
        (tmp_path / label / f"{i}.png").write_bytes(encode(brain_slice(i, label, 160)))
    loaded = load_folder(tmp_path, 64, workers=1)
    for i, label in enumerate(CLASSES):
        expected = np.round(preprocess(brain_slice(i, label, 160), 64).image[..., 0] * 255.0)
        np.testing.assert_array_equal(loaded.images[i], expected.astype(np.uint8))


# The modules that give images to the network: training, evaluation, the transfer proxy,
# the learned gate's features and serving (the worker and the offline `predict`).
FEEDERS = ["research/training/data.py", "research/evaluate.py", "research/transfer.py",
           "worker/ood.py", "worker/inference.py"]
# The steps that make the model's frame: only `preprocess` composes them.
FRAME_STEPS = {"head_bounding_box", "pad_to_square"}


def _imported_from_preprocessing(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "shared.preprocessing":
            names |= {alias.name for alias in node.names}
    return names


def test_one_preprocessing_function_feeds_training_evaluation_and_serving() -> None:
    """README invariant: every module that feeds the network calls `preprocess`, and no module
    outside shared/preprocessing.py builds the model's frame from the steps."""
    for feeder in FEEDERS:
        assert "preprocess" in _imported_from_preprocessing(ROOT / feeder), feeder
    for path in ROOT.glob("*/**/*.py"):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith((".venv/", "tests/")) or relative == "shared/preprocessing.py":
            continue
        assert not _imported_from_preprocessing(path) & FRAME_STEPS, relative
