"""Batched Grad-CAM: class probabilities and class-activation maps from one compiled graph.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017. For class c and the last conv block's activations A (H'xW'xK):
α_k = mean over space of ∂y_c/∂A_k, map = ReLU(Σ_k α_k A_k), scaled to [0, 1] per image.

The coarse map is upsampled and taken back to the image's frame by
`worker.model.gradcam_postprocess`.

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

from collections.abc import Callable

import keras
import tensorflow as tf

from worker.model.gradcam_postprocess import upsample_cam

Explainer = Callable[..., tuple[tf.Tensor, tf.Tensor]]


def split_model(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.Model]:
    """(body: image -> A, head: A -> logits), sharing the model's layers and weights."""
    features = model.get_layer(layer_name).output
    # Keras 3 builds a functional model between any two tensors of the graph, reusing the
    # same layer objects: no copy, no edit of the served model.
    return (keras.Model(model.inputs[0], features, name="cam_body"),
            keras.Model(features, model.outputs[0], name="cam_head"))


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
    def explain(images: tf.Tensor, class_index: tf.Tensor) -> tuple[tf.Tensor, ...]:
        n = tf.shape(images)[0]
        # The mirror views go in here ...
        feats = body(_views(images, mirror), training=False)  # A: forward once, outside the tape
        with tf.GradientTape() as tape:
            tape.watch(feats)  # A is an intermediate tensor, not a variable
            logits = _merge_views(head(feats, training=False), n, mirror)  # ... their scores averaged ...
            chosen = choose_class(logits, class_index, background_class)
            # Summing the chosen scores over the batch is safe: image i's score depends on A_i only.
            score = tf.reduce_sum(logits * tf.one_hot(chosen, tf.shape(logits)[1]))
        grads = tape.gradient(score, feats)
        alpha = tf.reduce_mean(grads, axis=(1, 2))  # channel importance α_k, (views, K)
        weighted = tf.einsum("nhwk,nk->nhw", feats, alpha)  # Σ_k α_k A_k
        weighted = _fold_views(weighted, n, mirror)  # ... and their evidence flipped back and added
        cam = tf.nn.relu(weighted)  # keep evidence FOR class c only
        probs = tf.nn.softmax(logits / temperature, axis=-1)  # temperature-calibrated (Guo et al. 2017)
        if not with_features:
            return probs, upsample_cam(cam, size)
        pooled = tf.concat([tf.reduce_mean(feats, axis=(1, 2)), tf.reduce_max(feats, axis=(1, 2))], -1)
        return probs, upsample_cam(cam, size), _merge_views(pooled, n, mirror)

    return explain


def choose_class(logits: tf.Tensor, class_index: tf.Tensor, background_class: int | None) -> tf.Tensor:
    """The class each image's map explains: `class_index` where >= 0, the predicted class for
    -1, and for -2 the highest-scoring class other than `background_class`."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    foreground = predicted
    if background_class is not None:
        hidden = tf.one_hot(background_class, tf.shape(logits)[1], on_value=-1e9)
        foreground = tf.argmax(logits + hidden, axis=-1, output_type=tf.int32)
    return tf.where(class_index >= 0, class_index, tf.where(class_index == -2, foreground, predicted))


def _views(images: tf.Tensor, mirror: bool) -> tf.Tensor:
    """The batch, followed by its left-right mirror images when `mirror` is on."""
    return tf.concat([images, tf.reverse(images, axis=[2])], axis=0) if mirror else images


def _merge_views(per_view: tf.Tensor, n: tf.Tensor, mirror: bool) -> tf.Tensor:
    """(2N, ...) values per view -> (N, ...): the mean over an image and its mirror image."""
    return (per_view[:n] + per_view[n:]) / 2.0 if mirror else per_view


def _fold_views(maps: tf.Tensor, n: tf.Tensor, mirror: bool) -> tf.Tensor:
    """(2N, h, w) maps per view -> (N, h, w): the mirror view's map flipped back onto the
    image and added (the gradient of the averaged score already carries the 1/2)."""
    return maps[:n] + tf.reverse(maps[n:], axis=[2]) if mirror else maps


def make_logits(model: keras.Model, *, mirror: bool = False) -> Callable[[tf.Tensor], tf.Tensor]:
    """The served logits (before temperature), compiled: what calibration and evaluation read."""
    size = model.inputs[0].shape[1:3]

    @tf.function(input_signature=[tf.TensorSpec([None, *size, 1], tf.float32)], reduce_retracing=True)
    def logits(images: tf.Tensor) -> tf.Tensor:
        return _merge_views(model(_views(images, mirror), training=False), tf.shape(images)[0], mirror)

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
