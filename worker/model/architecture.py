"""The network, built from code (never deserialised from a saved config).

Layer names are stable and meaningful because weight injection matches on them and
Grad-CAM splits the model at `config.cam_layer`.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from worker.model.config import ModelConfig


class FusedBatchNormalization(layers.BatchNormalization):
    """Keras batch normalisation whose training step runs TensorFlow's fused kernel.

    Keras 3 normalises with a chain of separate ops, upcasting bfloat16 activations to
    float32 on the way; on two CPU cores in bfloat16 that took about two thirds of a training
    step (287 images/s against 828 without normalisation). The fused kernel computes the same
    thing (the running variance takes the unbiased batch variance) in one pass. Its bfloat16
    path is slow at 16-24 channels too, one reason the 64x64 stages go without normalisation
    (`ModelConfig.batch_norm_from`). Inference is Keras' own code, so serving is exactly
    the standard layer, and the weights (gamma, beta, moving mean, moving variance) are the
    standard layer's: weight injection cannot tell the two apart."""

    def call(self, inputs, training=None, mask=None):  # noqa: ANN001, ANN201 - Keras signature
        if not training or not self.trainable or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        y, mean, variance, *_ = tf.compat.v1.nn.fused_batch_norm(
            inputs, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32),
            mean=self.moving_mean, variance=self.moving_variance, epsilon=self.epsilon,
            is_training=True, exponential_avg_factor=1.0 - self.momentum)
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return y


def _conv_relu(x: keras.KerasTensor, filters: int, name: str, *, strides: int = 1,
               dilation: int = 1, norm: bool = True, out_name: str | None = None) -> keras.KerasTensor:
    # With batch normalisation the conv has no bias: BatchNormalization's beta does that job.
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", dilation_rate=dilation,
                      use_bias=not norm, kernel_initializer="he_normal", name=f"{name}_conv")(x)
    if norm:
        x = FusedBatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=out_name or f"{name}_relu")(x)


def build_model(config: ModelConfig, *, any_size: bool = False) -> keras.Model:
    """image (S, S, 1) in [0, 1] -> logits over `config.classes` (temperature applied later).

    `any_size`: accept any image side (a multiple of `config.downsampling`) instead of
    `config.input_size`, with the same weights; training uses it to spend its first epochs on
    smaller images. Serving always builds the fixed-size network."""
    side = None if any_size else config.input_size
    inputs = keras.Input((side, side, 1), name="image")
    x = _conv_relu(inputs, config.stem_filters, "stem", strides=2, norm=config.batch_norm_from <= 0)
    last_block = len(config.block_filters) - 1
    for b, filters in enumerate(config.block_filters):
        is_last = b == last_block
        for c in range(config.convs_per_block):
            final_conv = is_last and c == config.convs_per_block - 1
            x = _conv_relu(
                x, filters, f"block{b + 1}_{c + 1}",
                dilation=config.last_block_dilation if is_last else 1,
                norm=config.batch_norm_from <= b + 1,
                # Grad-CAM reads this layer's output: the last conv block's activations A.
                out_name=config.cam_layer if final_conv else None)
        if not is_last:
            x = layers.MaxPooling2D(2, name=f"block{b + 1}_pool")(x)
    # Head: everything after the CAM layer; Grad-CAM differentiates through this part only.
    features = x
    x = layers.GlobalAveragePooling2D(name="gap")(features)
    if config.head_pooling == "avg+max":
        x = layers.Concatenate(name="pooled")([x, layers.GlobalMaxPooling2D(name="gmp")(features)])
    if config.dropout > 0:
        x = layers.Dropout(config.dropout, name="head_dropout")(x)
    # float32 logits under a mixed-precision training policy: softmax and losses need the range.
    logits = layers.Dense(config.num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=config.name.replace("-", "_"))
