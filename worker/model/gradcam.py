"""Batched Grad-CAM: class probabilities and class-activation maps from one compiled graph.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017. For class c and the last conv block's activations A (H'xW'xK):
α_k = mean over space of ∂y_c/∂A_k, map = ReLU(Σ_k α_k A_k), scaled to [0, 1] per image.

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

EPSILON = 1e-7

Explainer = Callable[..., tuple[tf.Tensor, tf.Tensor]]


def split_model(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.Model]:
    """(body: image -> A, head: A -> logits), sharing the model's layers and weights."""
    features = model.get_layer(layer_name).output
    # Keras 3 builds a functional model between any two tensors of the graph, reusing the
    # same layer objects: no copy, no edit of the served model.
    return (keras.Model(model.inputs[0], features, name="cam_body"),
            keras.Model(features, model.outputs[0], name="cam_head"))


def make_explainer(model: keras.Model, layer_name: str, temperature: float = 1.0) -> Explainer:
    """A compiled fn(images (N,S,S,1), class_index (N,) int32, -1 = argmax) -> (probs (N,C), cams (N,S,S))."""
    body, head = split_model(model, layer_name)
    size = model.inputs[0].shape[1:3]

    @tf.function(input_signature=[tf.TensorSpec([None, *size, 1], tf.float32),
                                  tf.TensorSpec([None], tf.int32)], reduce_retracing=True)
    def explain(images: tf.Tensor, class_index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        feats = body(images, training=False)  # forward once, outside the tape: no gradient needed
        with tf.GradientTape() as tape:
            tape.watch(feats)  # A is an intermediate tensor, not a variable
            logits = head(feats, training=False)
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
            chosen = tf.where(class_index >= 0, class_index, predicted)
            # Summing the chosen scores over the batch is safe: image i's score depends on A_i only.
            score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
        grads = tape.gradient(score, feats)
        alpha = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # channel importance α_k
        cam = tf.nn.relu(tf.reduce_sum(alpha * feats, axis=-1))  # keep evidence FOR class c only
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = cam / (peak + EPSILON)  # per-image [0, 1]; an all-zero map stays zero, never NaN
        cam = tf.image.resize(cam[..., tf.newaxis], size, method="bilinear")[..., 0]
        probs = tf.nn.softmax(logits / temperature, axis=-1)  # temperature-calibrated (Guo et al. 2017)
        return probs, tf.clip_by_value(cam, 0.0, 1.0)

    return explain


def make_predictor(model: keras.Model, temperature: float = 1.0) -> Callable[[tf.Tensor], tf.Tensor]:
    """Probabilities only, compiled the same way: the baseline for the Grad-CAM overhead benchmark."""
    size = model.inputs[0].shape[1:3]

    @tf.function(input_signature=[tf.TensorSpec([None, *size, 1], tf.float32)], reduce_retracing=True)
    def predict(images: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(model(images, training=False) / temperature, axis=-1)

    return predict
