"""Weight injection: read weights from any of three file layouts into a model built from code.

Supported files (the layout is detected from the content, not the file name):
- Keras 3 `.weights.h5`: `layers/<key>/vars/<i>`, the vars group carrying the layer `name`;
- a Keras 3 `.keras` zip archive: only its `model.weights.h5` entry is read; `config.json`
  and `metadata.json` are ignored, because that config is what breaks across Keras versions;
- a legacy Keras 2 `.h5` (weights-only or full model): one group per layer name, listed in
  the `layer_names` attribute, each with a `weight_names` attribute.

Layers are matched by name; when the file's names differ (auto-generated names in an old
export), by order. Every mismatch raises `WeightsMismatchError` naming the layer and shapes.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np

KERAS_ARCHIVE_WEIGHTS = "model.weights.h5"


class WeightsMismatchError(ValueError):
    """The file's weights do not fit the architecture (missing layer, count or shape)."""


@dataclass(frozen=True)
class StoredLayer:
    name: str | None  # the layer name recorded in the file, when it records one
    key: str  # the group's key in the file
    arrays: tuple[np.ndarray, ...]


def _snake_case(name: str) -> str:
    # Keras 3 keys each layer's group by its class name in snake case, uniquified in order.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_keras3(root: h5py.Group) -> list[StoredLayer]:
    stored = []
    for key, group in root["layers"].items():
        vars_group = group.get("vars")
        if vars_group is None or len(vars_group) == 0:
            continue
        arrays = tuple(np.asarray(vars_group[str(i)]) for i in range(len(vars_group)))
        name = vars_group.attrs.get("name")
        stored.append(StoredLayer(_decode(name) if name is not None else None, key, arrays))
    return stored


def _read_keras2(root: h5py.Group) -> list[StoredLayer]:
    stored = []
    for raw in root.attrs["layer_names"]:
        name = _decode(raw)
        weight_names = [_decode(w) for w in root[name].attrs.get("weight_names", [])]
        if weight_names:
            arrays = tuple(np.asarray(root[name][w]) for w in weight_names)
            stored.append(StoredLayer(name, name, arrays))
    return stored


def read_weights_file(path: str | Path) -> tuple[str, list[StoredLayer]]:
    """(layout, stored layers in file order) for any supported file."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if KERAS_ARCHIVE_WEIGHTS not in archive.namelist():
                raise WeightsMismatchError(f"{path.name}: the archive has no {KERAS_ARCHIVE_WEIGHTS}")
            payload = archive.read(KERAS_ARCHIVE_WEIGHTS)
        with h5py.File(io.BytesIO(payload), "r") as f:
            return "keras-archive", _read_keras3(f)
    with h5py.File(path, "r") as f:
        if "layers" in f and isinstance(f["layers"], h5py.Group) and "layer_names" not in f.attrs:
            return "keras3-weights", _read_keras3(f)
        root = f.get("model_weights", f)
        if "layer_names" in root.attrs:
            return "keras2-h5", _read_keras2(root)
    raise WeightsMismatchError(f"{path.name}: not a Keras weights file (no known layout)")


def _match(model: keras.Model, stored: list[StoredLayer]) -> list[tuple[keras.Layer, StoredLayer]]:
    targets = [layer for layer in model.layers if layer.weights]
    by_name = {s.name: s for s in stored if s.name}
    if all(layer.name in by_name for layer in targets):
        extra = sorted(set(by_name) - {layer.name for layer in targets})
        if extra:
            raise WeightsMismatchError(f"layer {extra[0]!r} in the file does not exist in the model")
        return [(layer, by_name[layer.name]) for layer in targets]
    by_key = {s.key: s for s in stored}
    keys, seen = [], {}  # the keys Keras 3 would give these layers, in model order
    for layer in model.layers:
        base = _snake_case(type(layer).__name__)
        keys.append(base if base not in seen else f"{base}_{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    keyed = [by_key.get(k) for k, layer in zip(keys, model.layers, strict=True) if layer.weights]
    if all(keyed) and len(stored) == len(targets):
        return list(zip(targets, keyed, strict=True))  # type: ignore[arg-type]
    if len(stored) != len(targets):
        missing = next(layer.name for layer in targets if layer.name not in by_name)
        raise WeightsMismatchError(
            f"layer {missing!r} not found in the file, which holds weights for {len(stored)} "
            f"layers where the model has {len(targets)}")
    return list(zip(targets, stored, strict=True))  # names differ: fall back to order


def inject_weights(model: keras.Model, path: str | Path) -> str:
    """Load `path` into `model` in place; returns the layout read. All checks run before any write."""
    layout, stored = read_weights_file(path)
    pairs = _match(model, stored)
    for layer, entry in pairs:
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(a.shape) for a in entry.arrays]
        if len(expected) != len(found):
            raise WeightsMismatchError(
                f"layer {layer.name!r}: the file has {len(found)} weights {found}, "
                f"the model expects {len(expected)} {expected}")
        for w, shape_file, shape_model in zip(layer.weights, found, expected, strict=True):
            if shape_file != shape_model:
                raise WeightsMismatchError(
                    f"layer {layer.name!r} weight {w.name!r}: the file has shape {shape_file}, "
                    f"the model expects {shape_model}")
    for layer, entry in pairs:
        layer.set_weights(list(entry.arrays))
    return layout
