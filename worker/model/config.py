"""The architecture's hyper-parameters, as one JSON-able dataclass.

The model card stores `ModelConfig.to_dict()`; `load_model` rebuilds the network from it,
so a weights file is always read into an architecture built by our own code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from shared.labels import CLASSES


@dataclass(frozen=True)
class ModelConfig:
    """A small VGG-style CNN: a strided stem, conv blocks with pooling between them, a GAP head.

    With `input_size` 128 and three blocks the last conv block sees a 16x16 map, fine enough
    for Grad-CAM to point at a pituitary lesion a few millimetres wide."""

    name: str = "neuroscan-cnn"
    # A trained model's version comes from its training run (`neuroscan train --model-version`);
    # this default marks an architecture that no named run has produced.
    version: str = "0.0.0-dev"
    input_size: int = 128
    # Sized for two CPU cores: ~0.25 M parameters, most of the width in the last block,
    # whose 16x16 maps Grad-CAM reads; the 64x64 and 32x32 blocks stay narrow because
    # they dominate the compute.
    stem_filters: int = 16
    block_filters: tuple[int, ...] = (24, 48, 128)
    convs_per_block: int = 2
    # Dilated convs in the last block widen the receptive field (where a lesion sits relative
    # to the skull and the midline matters) without coarsening the Grad-CAM map.
    last_block_dilation: int = 2
    # "avg+max": global average and global max pooling, concatenated. A small lesion moves the
    # max of a lesion-detecting channel, while in the average it is diluted by the whole
    # head. Grad-CAM still sees a gradient at every position through the average branch.
    head_pooling: str = "avg+max"
    dropout: float = 0.2
    # The first stage with batch normalisation: 0 = the stem, 1 = the first block, ... Stages
    # before it are conv + bias + ReLU. At 64x64 normalisation costs more than the narrow
    # convs it follows (most of a training step, in bfloat16); from the 32x32 block on it is
    # cheap, and the stages before it are too shallow to need it (He initialisation).
    batch_norm_from: int = 2
    classes: tuple[str, ...] = field(default=CLASSES)
    cam_layer: str = "last_conv_block"

    def __post_init__(self) -> None:
        if self.input_size % (2 ** len(self.block_filters)) != 0:
            raise ValueError(
                f"input_size {self.input_size} must be divisible by 2**{len(self.block_filters)}")
        if self.head_pooling not in ("avg", "avg+max"):
            raise ValueError(f"head_pooling must be 'avg' or 'avg+max', not {self.head_pooling!r}")
        if not self.block_filters or self.convs_per_block < 1:
            raise ValueError("need at least one block with at least one conv")

    @property
    def downsampling(self) -> int:
        """Input pixels per side of one cell of the last conv block's map: the stem halves,
        each pooling between blocks halves."""
        return 2 ** len(self.block_filters)

    @property
    def cam_resolution(self) -> int:
        """Side of the last conv block's map."""
        return self.input_size // self.downsampling

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["block_filters"] = list(self.block_filters)
        data["classes"] = list(self.classes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are refused so a typo never goes unnoticed."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        values = {**_BEFORE_THE_FIELD_EXISTED, **data}
        for key in ("block_filters", "classes"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def tiny(cls, name: str = "neuroscan-tiny", input_size: int = 64, version: str = "0.0.1-test") -> ModelConfig:
        """A few thousand parameters: for tests that need real weights, fast."""
        return cls(name=name, version=version, input_size=input_size, stem_filters=4,
                   block_filters=(8, 12, 16), convs_per_block=1, last_block_dilation=1,
                   dropout=0.0)


# What cards written before a field existed meant by leaving it out (1.1.0 and earlier
# normalised every stage).
_BEFORE_THE_FIELD_EXISTED: dict[str, Any] = {"batch_norm_from": 0}
