"""The network, built from code (never deserialised from a saved config).

Layer names are stable and meaningful because weight injection matches on them and
Grad-CAM splits the model at `config.cam_layer`.
"""

from __future__ import annotations

import keras
from keras import layers

from worker.model.config import ModelConfig


def _conv_bn_relu(x: keras.KerasTensor, filters: int, name: str, *, strides: int = 1,
                  dilation: int = 1, out_name: str | None = None) -> keras.KerasTensor:
    # No conv bias: BatchNormalization's beta does the same job.
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", dilation_rate=dilation,
                      use_bias=False, kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=out_name or f"{name}_relu")(x)


def build_model(config: ModelConfig) -> keras.Model:
    """image (S, S, 1) in [0, 1] -> logits over `config.classes` (temperature applied later)."""
    inputs = keras.Input((config.input_size, config.input_size, 1), name="image")
    x = _conv_bn_relu(inputs, config.stem_filters, "stem", strides=2)
    last_block = len(config.block_filters) - 1
    for b, filters in enumerate(config.block_filters):
        is_last = b == last_block
        for c in range(config.convs_per_block):
            final_conv = is_last and c == config.convs_per_block - 1
            x = _conv_bn_relu(
                x, filters, f"block{b + 1}_{c + 1}",
                dilation=config.last_block_dilation if is_last else 1,
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
    logits = layers.Dense(config.num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=config.name.replace("-", "_"))
