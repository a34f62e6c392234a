"""Deep supervision of the Grad-CAM layer with lesion masks (training only).

One auxiliary 1x1-conv lesion map per tumour kind on the CAM layer, a binary "this cell touches
a lesion of that kind" target, and a class-balanced loss. The auxiliary head is dropped after
training, so serving never sees it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.labels import CLASSES

# Lesion-map channel per class: one map per tumour kind, none for notumor.
_TUMOURS = [c for c in CLASSES if c != "notumor"]
LESION_CHANNELS = np.array([[float(c == t) for t in _TUMOURS] for c in CLASSES], np.float32)


def lesion_targets(masks: np.ndarray, labels: np.ndarray, cam_resolution: int) -> np.ndarray:
    """uint8 (N,S,S) masks -> (N,R,R,3): 1 where a CAM cell touches a lesion of that kind.

    Binary "touches" rather than the covered share, so a pituitary lesion smaller than one
    cell still gives a full-strength target."""
    n, size = masks.shape[0], masks.shape[1]
    k = size // cam_resolution
    touch = (masks > 127).reshape(n, cam_resolution, k, cam_resolution, k).max(axis=(2, 4))
    return touch[..., np.newaxis].astype(np.float32) * LESION_CHANNELS[labels][:, np.newaxis, np.newaxis, :]


def lesion_loss(target: Any, logits: Any) -> Any:
    """Class-balanced BCE per image: mean over lesion cells + mean over the other cells.

    Lesions cover a few of the 768 cells; a plain mean would let "no lesion anywhere" win."""
    import tensorflow as tf

    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)
    pos, neg = target, 1.0 - target
    pos_term = tf.reduce_sum(bce * pos, axis=[1, 2, 3]) / tf.maximum(tf.reduce_sum(pos, axis=[1, 2, 3]), 1.0)
    neg_term = tf.reduce_sum(bce * neg, axis=[1, 2, 3]) / tf.maximum(tf.reduce_sum(neg, axis=[1, 2, 3]), 1.0)
    return pos_term + neg_term


def training_model(base: Any, cam_layer: str) -> Any:
    """The served network plus auxiliary 1x1-conv lesion maps (one per tumour kind) on the
    Grad-CAM layer.

    With lesion masks (the synthetic data has them) this deep supervision teaches the last
    conv block where lesions are, far faster than the class label alone; the auxiliary head
    is dropped after training (only `base` is saved), so serving is unchanged. (Serving the
    supervised maps as the class head instead was tried and rejected: same accuracy, but a
    pointing game of 0.40 against 0.87; docs/model.md.)"""
    import keras

    aux = keras.layers.Conv2D(LESION_CHANNELS.shape[1], 1, dtype="float32", name="aux_lesion")(
        base.get_layer(cam_layer).output)
    return keras.Model(base.inputs[0], {"logits": base.outputs[0], "lesion": aux}, name="trainer")
