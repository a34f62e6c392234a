"""Weight injection from the three file layouts, on a tiny seeded random network."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from worker.model import ModelConfig, WeightsMismatchError, build_model, inject_weights


@pytest.fixture(scope="module")
def trained() -> tuple[ModelConfig, keras.Model, np.ndarray]:
    keras.utils.set_random_seed(0)
    config = ModelConfig.tiny()
    model = build_model(config)
    # Non-trivial BatchNorm statistics, so a wrongly ordered BN variable would show.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.random.default_rng(1).normal(size=layer.moving_mean.shape))
            layer.moving_variance.assign(np.random.default_rng(2).uniform(0.5, 2, size=layer.moving_variance.shape))
    images = np.random.default_rng(3).random((3, 64, 64, 1), dtype=np.float32)
    return config, model, images


def _fresh(config: ModelConfig) -> keras.Model:
    keras.utils.set_random_seed(99)  # different initial weights than the trained model
    return build_model(config)


def _outputs(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return model(images, training=False).numpy()


def test_weights_h5_roundtrip(trained, tmp_path: Path) -> None:
    config, model, images = trained
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    fresh = _fresh(config)
    assert not np.allclose(_outputs(fresh, images), _outputs(model, images))
    assert inject_weights(fresh, path) == "keras3-weights"
    np.testing.assert_allclose(_outputs(fresh, images), _outputs(model, images), atol=1e-6)


def _rewrite_archive(src: Path, dst: Path) -> None:
    """Copy a .keras archive, changing its config and metadata as another exporter would."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                cfg = json.loads(data)
                cfg["config"]["name"] = "someone_elses_model"
                cfg["config"]["trainable"] = False
                # A class this Keras has never heard of: the config cannot be deserialised.
                cfg.update(class_name="HospitalExportedNet", module="pacs.models",
                           registered_name="pacs>HospitalExportedNet")
                data = json.dumps(cfg).encode()
            elif item.filename == "metadata.json":
                meta = json.loads(data)
                meta.update(keras_version="2.99.0-imaginary", exported_by="a hospital PACS plugin")
                data = json.dumps(meta).encode()
            zout.writestr(item, data)


def test_keras_archive_with_foreign_config_injects(trained, tmp_path: Path) -> None:
    config, model, images = trained
    original = tmp_path / "m.keras"
    model.save(original)
    edited = tmp_path / "edited.keras"
    _rewrite_archive(original, edited)
    with zipfile.ZipFile(edited) as z:  # the edit really happened
        assert json.loads(z.read("config.json"))["config"]["name"] == "someone_elses_model"
        assert json.loads(z.read("metadata.json"))["keras_version"] == "2.99.0-imaginary"
    with pytest.raises(TypeError):  # Keras itself can no longer load the archive
        keras.saving.load_model(edited)
    fresh = _fresh(config)
    assert inject_weights(fresh, edited) == "keras-archive"
    np.testing.assert_array_equal(_outputs(fresh, images), _outputs(model, images))


def _write_keras2_h5(model: keras.Model, path: Path, *, full_model: bool, rename: bool = False) -> None:
    """The Keras 2 HDF5 layout: one group per layer (listed in `layer_names`), each with
    `weight_names` and datasets named `<layer>/<var>:0`; full-model files nest it under model_weights."""
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        if full_model:
            f.attrs["model_config"] = json.dumps({"class_name": "Functional"})
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.15.0"
        names = []
        for i, layer in enumerate(model.layers):
            name = f"auto_layer_{i}" if rename else layer.name
            names.append(name.encode())
            group = root.create_group(name)
            weight_names = [f"{name}/{w.name}:0".encode() for w in layer.weights]
            group.attrs["weight_names"] = weight_names
            for wname, w in zip(weight_names, layer.weights, strict=True):
                group.create_dataset(wname.decode(), data=np.asarray(w.numpy()))
        root.attrs["layer_names"] = names


@pytest.mark.parametrize("full_model", [False, True])
def test_legacy_keras2_h5_injects(trained, tmp_path: Path, full_model: bool) -> None:
    config, model, images = trained
    path = tmp_path / "legacy.h5"
    _write_keras2_h5(model, path, full_model=full_model)
    fresh = _fresh(config)
    assert inject_weights(fresh, path) == "keras2-h5"
    np.testing.assert_array_equal(_outputs(fresh, images), _outputs(model, images))


def test_legacy_file_with_other_layer_names_injects_by_order(trained, tmp_path: Path) -> None:
    config, model, images = trained
    path = tmp_path / "renamed.h5"
    _write_keras2_h5(model, path, full_model=False, rename=True)
    fresh = _fresh(config)
    inject_weights(fresh, path)
    np.testing.assert_array_equal(_outputs(fresh, images), _outputs(model, images))


def test_wrong_shape_names_layer_and_both_shapes(trained, tmp_path: Path) -> None:
    config, model, _ = trained
    wider = build_model(ModelConfig.tiny(name=config.name).__class__(
        **{**config.to_dict(), "block_filters": (8, 12, 20)}))
    path = tmp_path / "wider.weights.h5"
    wider.save_weights(path)
    with pytest.raises(WeightsMismatchError) as err:
        inject_weights(_fresh(config), path)
    message = str(err.value)
    assert "block3_1_conv" in message
    assert "(3, 3, 12, 20)" in message and "(3, 3, 12, 16)" in message


def test_mismatch_leaves_model_untouched(trained, tmp_path: Path) -> None:
    config, model, images = trained
    wider = build_model(ModelConfig.from_dict({**config.to_dict(), "block_filters": [8, 12, 20]}))
    path = tmp_path / "wider.weights.h5"
    wider.save_weights(path)
    fresh = _fresh(config)
    before = _outputs(fresh, images)
    with pytest.raises(WeightsMismatchError):
        inject_weights(fresh, path)
    np.testing.assert_array_equal(_outputs(fresh, images), before)


def test_extra_layer_in_file_is_named(trained, tmp_path: Path) -> None:
    config, _, _ = trained
    deeper = build_model(ModelConfig.from_dict({**config.to_dict(), "convs_per_block": 2}))
    path = tmp_path / "deeper.weights.h5"
    deeper.save_weights(path)
    with pytest.raises(WeightsMismatchError, match="block1_2_.* does not exist in the model"):
        inject_weights(_fresh(config), path)


def test_missing_layer_in_file_is_named(trained, tmp_path: Path) -> None:
    config, model, _ = trained
    path = tmp_path / "shallow.weights.h5"
    model.save_weights(path)
    deeper = build_model(ModelConfig.from_dict({**config.to_dict(), "convs_per_block": 2}))
    with pytest.raises(WeightsMismatchError, match="block1_2_conv.* not found in the file"):
        inject_weights(deeper, path)


def test_not_a_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_group("something_else")
    with pytest.raises(WeightsMismatchError, match="no known layout"):
        inject_weights(_fresh(ModelConfig.tiny()), path)
