"""Batched Grad-CAM: class probabilities and class-activation maps from one compiled graph.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017. For class c and the last conv block's activations A (H'xW'xK):
α_k = mean over space of ∂y_c/∂A_k, map = ReLU(Σ_k α_k A_k), scaled to [0, 1] per image.

The coarse map (16x16 for the shipped model) is upsampled with a Lanczos-3 kernel, not
bilinearly: a bilinear map always peaks exactly at a cell centre, 8 px apart at 128 px, so
a lesion smaller than a cell is often "missed" by a map that is right about it. Lanczos
interpolation puts the peak between cells where the neighbouring cells say it is (with the
same weights, the strict pointing game on the test set rose from 0.874 to 0.939 for model
1.1.0 and from 0.881 to 0.929 for 1.2.0; docs/model.md).

The model is split (not edited) into a body (image -> A) and a head (A -> logits). The body
runs once, forward only; the gradient tape covers just the head, so the explanation costs
little beyond inference.

Example:
    >>> import numpy as np
    >>> from worker.model import ModelConfig, build_model
    >>> from worker.model.gradcam import make_explainer
    >>> config = ModelConfig.tiny()
    >>> explain = make_explainer(build_model(config), config.cam_layer)
    >>> images = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    >>> probs, cams = explain(images, np.array([-1, 2], dtype=np.int32))  # -1: predicted class
    >>> probs.shape, cams.shape
    (TensorShape([2, 4]), TensorShape([2, 64, 64]))
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import keras
import tensorflow as tf

EPSILON = 1e-7
UPSAMPLING = "lanczos3"  # see the module docstring; tf.image.resize's name for the kernel

Explainer = Callable[..., tuple[tf.Tensor, tf.Tensor]]


def split_model(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.Model]:
    """(body: image -> A, head: A -> logits), sharing the model's layers and weights."""
    features = model.get_layer(layer_name).output
    # Keras 3 builds a functional model between any two tensors of the graph, reusing the
    # same layer objects: no copy, no edit of the served model.
    return (keras.Model(model.inputs[0], features, name="cam_body"),
            keras.Model(features, model.outputs[0], name="cam_head"))


def _views(images: tf.Tensor, mirror: bool) -> tf.Tensor:
    """The batch, followed by its left-right mirror images when `mirror` is on."""
    return tf.concat([images, tf.reverse(images, axis=[2])], axis=0) if mirror else images


def _merge(logits: tf.Tensor, n: tf.Tensor, mirror: bool) -> tf.Tensor:
    """(2N, C) view logits -> (N, C): the mean over an image and its mirror image."""
    return (logits[:n] + logits[n:]) / 2.0 if mirror else logits


def make_explainer(model: keras.Model, layer_name: str, temperature: float = 1.0, *,
                   mirror: bool = False, background_class: int | None = None,
                   with_features: bool = False) -> Explainer:
    """A compiled fn(images (N,S,S,1), class_index (N,) int32, -1 = argmax) -> (probs (N,C), cams (N,S,S)).

    class_index -2 asks for the highest-scoring class other than `background_class` ("no
    tumour"): the predicted class when that is a tumour, else the most likely tumour class,
    in the same pass.

    With `with_features` a third output is each image's pooled CAM-layer activations (mean
    and max over space, mean over the mirror views): the input gate's learned score reads
    them (`worker.ood`), at the cost of two reductions.

    With `mirror` (test-time augmentation, the model card's choice) each image is scored
    together with its left-right mirror image: the logits are averaged, and the map is
    Grad-CAM of that averaged score, i.e. both views' weighted activations, the mirrored one
    flipped back, summed before the ReLU. The explanation is then exactly mirror-equivariant."""
    body, head = split_model(model, layer_name)
    size = model.inputs[0].shape[1:3]

    @tf.function(input_signature=[tf.TensorSpec([None, *size, 1], tf.float32),
                                  tf.TensorSpec([None], tf.int32)], reduce_retracing=True)
    def explain(images: tf.Tensor, class_index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        n = tf.shape(images)[0]
        feats = body(_views(images, mirror), training=False)  # forward once, outside the tape
        with tf.GradientTape() as tape:
            tape.watch(feats)  # A is an intermediate tensor, not a variable
            logits = _merge(head(feats, training=False), n, mirror)
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
            foreground = predicted
            if background_class is not None:
                hidden = tf.one_hot(background_class, tf.shape(logits)[1], on_value=-1e9)
                foreground = tf.argmax(logits + hidden, axis=-1, output_type=tf.int32)
            chosen = tf.where(class_index >= 0, class_index,
                              tf.where(class_index == -2, foreground, predicted))
            # Summing the chosen scores over the batch is safe: image i's score depends on A_i only.
            score = tf.reduce_sum(logits * tf.one_hot(chosen, tf.shape(logits)[1]))
        grads = tape.gradient(score, feats)
        alpha = tf.reduce_mean(grads, axis=(1, 2))  # channel importance α_k, (views, K)
        weighted = tf.einsum("nhwk,nk->nhw", feats, alpha)  # Σ_k α_k A_k
        if mirror:  # the mirror view's evidence, flipped back onto the image
            weighted = weighted[:n] + tf.reverse(weighted[n:], axis=[2])
        cam = tf.nn.relu(weighted)  # keep evidence FOR class c only
        probs = tf.nn.softmax(logits / temperature, axis=-1)  # temperature-calibrated (Guo et al. 2017)
        if with_features:
            pooled = tf.concat([tf.reduce_mean(feats, axis=(1, 2)), tf.reduce_max(feats, axis=(1, 2))], -1)
            pooled = _merge(pooled, n, mirror)
            return probs, upsample_cam(cam, size), pooled
        return probs, upsample_cam(cam, size)

    return explain


def upsample_cam(cam: tf.Tensor, size: tuple[int, int] | tf.TensorShape) -> tf.Tensor:
    """Coarse non-negative maps (N, h, w) -> (N, *size) in [0, 1], each peaking at 1.

    The Lanczos kernel's negative lobes ring (clipped at 0) and its peak can overshoot, so
    the map is normalised after the resize (the resize is linear: normalising before it too
    would change nothing). An all-zero map stays zero, never NaN."""
    h, w = int(cam.shape[1]), int(cam.shape[2])
    rows, cols = _resize_matrix(h, int(size[0])), _resize_matrix(w, int(size[1]))
    # Separable and linear: rows @ map @ cols^T, two small batched matrix products, several
    # times cheaper on CPU than tf.image.resize's general Lanczos kernel.
    cam = tf.nn.relu(tf.matmul(tf.matmul(rows, cam), cols, transpose_b=True))
    return cam / (tf.reduce_max(cam, axis=(1, 2), keepdims=True) + EPSILON)


@functools.lru_cache(maxsize=8)
def _resize_matrix(n_in: int, n_out: int) -> tf.Tensor:
    """(n_out, n_in): tf.image.resize's 1-D `UPSAMPLING` kernel as a matrix, read off by
    resizing the unit vectors (a width-1 axis is left as it is)."""
    with tf.init_scope():  # eager even when first asked for inside a tf.function trace
        units = tf.eye(n_in)[:, :, tf.newaxis, tf.newaxis]  # n_in images of n_in x 1
        columns = tf.image.resize(units, (n_out, 1), method=UPSAMPLING)[:, :, 0, 0]
        return tf.constant(tf.transpose(columns).numpy())


def make_logits(model: keras.Model, *, mirror: bool = False) -> Callable[[tf.Tensor], tf.Tensor]:
    """The served logits (before temperature), compiled: what calibration and evaluation read."""
    size = model.inputs[0].shape[1:3]

    @tf.function(input_signature=[tf.TensorSpec([None, *size, 1], tf.float32)], reduce_retracing=True)
    def logits(images: tf.Tensor) -> tf.Tensor:
        return _merge(model(_views(images, mirror), training=False), tf.shape(images)[0], mirror)

    return logits


def make_predictor(model: keras.Model, temperature: float = 1.0, *,
                   mirror: bool = False) -> Callable[[tf.Tensor], tf.Tensor]:
    """Probabilities only, compiled the same way: the baseline for the Grad-CAM overhead benchmark."""
    logits = make_logits(model, mirror=mirror)
    size = model.inputs[0].shape[1:3]

    @tf.function(input_signature=[tf.TensorSpec([None, *size, 1], tf.float32)], reduce_retracing=True)
    def predict(images: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(logits(images) / temperature, axis=-1)

    return predict
