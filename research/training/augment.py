"""Random geometry and intensity for training batches, on model-frame tensors (TensorFlow).

Applied after preprocessing, inside the tf.data pipeline: the image and its lesion mask move
together, so the lesion targets stay on the lesion.
"""

from __future__ import annotations

import math
from typing import Any

from research.training.lesion_supervision import LESION_CHANNELS

MAX_ROTATION = math.radians(11.0)


def flip_and_rotate(images: Any, mirror: Any, angle: Any, out_size: int | None = None,
                    zoom: Any = None) -> Any:
    """Resample (N,H,W,C) images once: mirrored left-right where `mirror` is -1, rotated by
    `angle` (radians) about the centre, magnified by `zoom` (per image; < 1 shrinks the head
    in the frame) and, when `out_size` is given, scaled to out_size x out_size; bilinear,
    zeros outside (air).

    One projective resampling instead of a flip, a rotation and a resize: on two cores the
    augmentation shares the CPU with the training step, so every full-batch pass counts."""
    import tensorflow as tf

    h, w = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
    out_shape = tf.shape(images)[1:3] if out_size is None else tf.constant([out_size, out_size])
    oh, ow = tf.cast(out_shape[0], tf.float32), tf.cast(out_shape[1], tf.float32)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    ox, oy = (ow - 1.0) / 2.0, (oh - 1.0) / 2.0
    sx, sy = w / ow, h / oh  # input pixels per output pixel
    if zoom is not None:
        sx, sy = sx / zoom, sy / zoom
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) reads input R(angle) @ diag(mirror, 1) @ S @ ((x, y) - o) + c.
    transforms = tf.stack([cos * mirror * sx, -sin * sy, cx - cos * mirror * sx * ox + sin * sy * oy,
                           sin * mirror * sx, cos * sy, cy - sin * mirror * sx * ox - cos * sy * oy,
                           tf.zeros_like(cos), tf.zeros_like(cos)], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=out_shape,
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")


ZOOM = (0.8, 1.1)
CURVE_KNOTS = 6


def random_intensity_curve(x: Any, share: float = 0.6) -> Any:
    """A random monotone piecewise-linear intensity mapping per image (knots at even input
    levels, increments drawn from a flat Dirichlet), applied to a share of the batch.

    Scanner, sequence and export differ in how tissue intensities are spaced, not only in an
    overall gamma; a network that has seen arbitrary monotone remappings of the same anatomy
    leans less on absolute grey levels (the histogram randomisation of SynthSeg-style
    training, here at train time)."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    steps = -tf.math.log(tf.random.uniform([n, CURVE_KNOTS], 1e-6, 1.0))  # Dirichlet(1,...,1)
    knots = tf.concat([tf.zeros([n, 1]), tf.cumsum(steps, axis=1) / tf.reduce_sum(steps, 1, keepdims=True)], 1)
    pos = x * CURVE_KNOTS
    i = tf.clip_by_value(tf.cast(tf.floor(pos), tf.int32), 0, CURVE_KNOTS - 1)
    frac = pos - tf.cast(i, tf.float32)
    flat = tf.reshape(i, [n, -1])
    lo = tf.reshape(tf.gather(knots, flat, batch_dims=1), tf.shape(x))
    hi = tf.reshape(tf.gather(knots, flat + 1, batch_dims=1), tf.shape(x))
    curved = lo + frac * (hi - lo)
    use = tf.cast(tf.random.uniform([n, 1, 1, 1]) < share, tf.float32)
    return use * curved + (1.0 - use) * x


def augmenter(downsampling: int, out_size: int | None = None):  # noqa: ANN202 - a tf.data map function
    """Random geometry and intensity for a batch; images come out `out_size` square (default:
    as stored), with lesion targets on the matching CAM grid (one cell per `downsampling` px)."""
    import tensorflow as tf

    def augment(x: tf.Tensor, m: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        # Image and mask travel as two channels of one tensor, so geometry moves both alike.
        both = tf.cast(tf.stack([x, m], axis=-1), tf.float32) / 255.0
        n = tf.shape(both)[0]
        # Left-right flip (only: the skull base stays below) and a rotation, in one resampling.
        mirror = tf.where(tf.random.uniform([n]) < 0.5, -1.0, 1.0)
        # Head size in the frame: the crop to the head leaves 0.8-1.1 of it (skull margins,
        # neck, head shape differ between patients and exports).
        zoom = tf.exp(tf.random.uniform([n], math.log(ZOOM[0]), math.log(ZOOM[1])))
        both = flip_and_rotate(both, mirror, tf.random.uniform([n], -MAX_ROTATION, MAX_ROTATION), out_size,
                               zoom=zoom)
        x, m = both[..., :1], both[..., 1:]
        x = random_intensity_curve(tf.clip_by_value(x, 0.0, 1.0))
        gamma = tf.exp(tf.random.uniform([n, 1, 1, 1], -0.3, 0.3))
        x = x ** gamma
        x = x * tf.random.uniform([n, 1, 1, 1], 0.85, 1.15) + tf.random.uniform([n, 1, 1, 1], -0.05, 0.05)
        x = x + tf.random.normal(tf.shape(x)) * tf.random.uniform([n, 1, 1, 1], 0.0, 0.03)
        k = downsampling
        lesion = tf.cast(tf.nn.max_pool2d(m, k, k, "VALID") > 0.5, tf.float32)  # cell touches lesion
        channels = tf.gather(tf.constant(LESION_CHANNELS), y)[:, tf.newaxis, tf.newaxis, :]
        return tf.clip_by_value(x, 0.0, 1.0), {"logits": y, "lesion": lesion * channels}

    return augment
