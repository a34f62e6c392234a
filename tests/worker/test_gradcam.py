"""Batched Grad-CAM, in the manner of MONAI's CAM tests: a tiny seeded random network."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from worker.model import ModelConfig, build_model
from worker.model.gradcam import make_explainer, make_logits, make_predictor, split_model

CONFIG = ModelConfig.tiny()
N = 5


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model(CONFIG)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    out = np.zeros((N, 64, 64, 1), np.float32)
    for i in range(N):  # a bright blob at a different place in each image, on noise
        cy, cx = rng.integers(12, 52, size=2)
        out[i, ..., 0] = 0.3 * rng.random((64, 64)) + np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30)
    return np.clip(out, 0, 1)


def _all(n: int, c: int) -> np.ndarray:
    return np.full(n, c, np.int32)


def test_shapes_and_range(model, images) -> None:
    probs, cams = make_explainer(model, CONFIG.cam_layer)(images, _all(N, -1))
    assert probs.shape == (N, CONFIG.num_classes)
    assert cams.shape == (N, 64, 64)
    cams = cams.numpy()
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    assert np.all(cams.reshape(N, -1).max(axis=1) > 0.9)  # normalised per image
    np.testing.assert_allclose(probs.numpy().sum(axis=1), 1.0, atol=1e-5)


def test_probabilities_match_model_and_temperature(model, images) -> None:
    logits = model(images, training=False).numpy()
    for t in (1.0, 2.5):
        probs, _ = make_explainer(model, CONFIG.cam_layer, temperature=t)(images, _all(N, -1))
        np.testing.assert_allclose(probs.numpy(), tf.nn.softmax(logits / t).numpy(), atol=1e-6)
        np.testing.assert_allclose(make_predictor(model, t)(images).numpy(), probs.numpy(), atol=1e-6)


def test_default_class_is_argmax(model, images) -> None:
    explain = make_explainer(model, CONFIG.cam_layer)
    probs, default_cams = explain(images, _all(N, -1))
    predicted = np.argmax(probs.numpy(), axis=1)
    _, chosen_cams = explain(images, predicted.astype(np.int32))
    np.testing.assert_allclose(default_cams.numpy(), chosen_cams.numpy(), atol=1e-6)
    other = (predicted + 1) % CONFIG.num_classes
    _, other_cams = explain(images, other.astype(np.int32))
    assert not np.allclose(other_cams.numpy(), default_cams.numpy(), atol=1e-3)


def test_matches_reference_gradcam(model, images) -> None:
    """Against a straightforward, unbatched Grad-CAM over the whole model (eager)."""
    explain = make_explainer(model, CONFIG.cam_layer)
    cam_layer = model.get_layer(CONFIG.cam_layer)
    full = keras.Model(model.inputs[0], [cam_layer.output, model.outputs[0]])
    _, cams = explain(images, _all(N, 2))
    for i in range(N):
        with tf.GradientTape() as tape:
            feats, logits = full(images[i : i + 1], training=False)
            score = logits[0, 2]
        grads = tape.gradient(score, feats)
        ref = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(grads, axis=(1, 2), keepdims=True) * feats, -1))
        ref = ref / (tf.reduce_max(ref) + 1e-7)
        ref = tf.image.resize(ref[..., None], (64, 64), method="lanczos3")[0, ..., 0].numpy()
        ref = np.clip(ref, 0.0, None) / (ref.max() + 1e-7)
        np.testing.assert_allclose(cams[i].numpy(), ref, atol=1e-4)


def test_batched_equals_single(model, images) -> None:
    explain = make_explainer(model, CONFIG.cam_layer)
    probs, cams = explain(images, _all(N, -1))
    for i in range(N):
        p1, c1 = explain(images[i : i + 1], _all(1, -1))
        np.testing.assert_allclose(p1.numpy()[0], probs.numpy()[i], atol=1e-5)
        np.testing.assert_allclose(c1.numpy()[0], cams.numpy()[i], atol=1e-5)


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_constant_image_gives_no_nan(model, value: float) -> None:
    explain = make_explainer(model, CONFIG.cam_layer)
    probs, cams = explain(np.full((2, 64, 64, 1), value, np.float32), _all(2, -1))
    assert np.isfinite(probs.numpy()).all() and np.isfinite(cams.numpy()).all()
    assert cams.numpy().min() >= 0.0 and cams.numpy().max() <= 1.0


def test_zero_map_stays_zero() -> None:
    """All-zero activations (e.g. a dead ReLU layer) give an all-zero map, not NaN."""
    keras.utils.set_random_seed(1)
    model = build_model(CONFIG)
    bn = model.get_layer("block3_1_bn")
    bn.gamma.assign(np.zeros(bn.gamma.shape, np.float32))
    bn.beta.assign(np.full(bn.beta.shape, -1.0, np.float32))  # ReLU(-1) = 0 everywhere
    _, cams = make_explainer(model, CONFIG.cam_layer)(np.random.rand(2, 64, 64, 1).astype(np.float32), _all(2, -1))
    np.testing.assert_array_equal(cams.numpy(), 0.0)


def test_split_model_shares_layers(model, images) -> None:
    body, head = split_model(model, CONFIG.cam_layer)
    np.testing.assert_allclose(head(body(images)).numpy(), model(images).numpy(), atol=1e-5)
    assert body.get_layer("stem_conv") is model.get_layer("stem_conv")  # not a copy


def test_mirror_averages_the_logits_of_both_views(model, images) -> None:
    mirrored = images[:, :, ::-1]
    both = (model(images, training=False).numpy() + model(mirrored.copy(), training=False).numpy()) / 2
    np.testing.assert_allclose(make_logits(model, mirror=True)(images).numpy(), both, atol=1e-5)
    probs, _ = make_explainer(model, CONFIG.cam_layer, temperature=1.7, mirror=True)(images, _all(N, -1))
    np.testing.assert_allclose(probs.numpy(), tf.nn.softmax(both / 1.7).numpy(), atol=1e-5)
    np.testing.assert_allclose(make_predictor(model, 1.7, mirror=True)(images).numpy(), probs.numpy(), atol=1e-5)


def test_mirror_makes_the_explanation_mirror_equivariant(model, images) -> None:
    """Mirroring the input mirrors the map and leaves the probabilities unchanged, exactly;
    without the mirror view the strided stem makes the network only roughly symmetric."""
    explain = make_explainer(model, CONFIG.cam_layer, mirror=True)
    probs, cams = explain(images, _all(N, -1))
    probs_m, cams_m = explain(images[:, :, ::-1].copy(), _all(N, -1))
    np.testing.assert_allclose(probs_m.numpy(), probs.numpy(), atol=1e-5)
    np.testing.assert_allclose(cams_m.numpy(), cams.numpy()[:, :, ::-1], atol=1e-4)
    assert cams.numpy().min() >= 0.0 and cams.numpy().max() <= 1.0
    plain = make_explainer(model, CONFIG.cam_layer)
    assert not np.allclose(plain(images[:, :, ::-1].copy(), _all(N, -1))[1].numpy(),
                           plain(images, _all(N, -1))[1].numpy()[:, :, ::-1], atol=1e-4)


def test_tumour_class_request_skips_the_background_class() -> None:
    """class_index -2: the best class other than the background one, in the same pass."""
    keras.utils.set_random_seed(3)
    model = build_model(CONFIG)
    images = np.random.default_rng(4).random((6, CONFIG.input_size, CONFIG.input_size, 1),
                                             dtype=np.float32)
    probs, _ = make_explainer(model, CONFIG.cam_layer)(images, np.full(6, -1, np.int32))
    background = int(np.argmax(probs.numpy()[0]))  # make image 0's prediction the background
    explain = make_explainer(model, CONFIG.cam_layer, background_class=background)
    _, cams = explain(images, np.full(6, -2, np.int32))
    masked = probs.numpy().copy()
    masked[:, background] = -1
    expected = np.argmax(masked, axis=1).astype(np.int32)
    _, asked = explain(images, expected)
    np.testing.assert_allclose(cams.numpy(), asked.numpy(), atol=1e-6)
