"""Save a trained model as weights + card; load it back by building from code and injecting.

`load_model` refuses weights whose SHA-256 differs from their card, and a weights file that
has no card: a weights file never travels alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from shared.labels import CLASSES
from shared.preprocessing import PREPROCESSING_ID
from worker.model.architecture import build_model
from worker.model.card import (
    build_card,
    card_path,
    read_card,
    sha256_file,
    weights_path,
    write_card,
)
from worker.model.config import ModelConfig
from worker.model.weights import inject_weights


class WeightsIntegrityError(RuntimeError):
    """The weights file is not the one its model card describes (or the card is missing)."""


class ModelCardError(ValueError):
    """The card describes a model this code cannot serve (class order, preprocessing)."""


@dataclass
class LoadedModel:
    """A ready-to-serve network plus the card it was verified against."""

    model: keras.Model
    config: ModelConfig
    card: dict[str, Any]
    weights_file: Path
    # Compiled graphs (Grad-CAM, served logits), cached per model so each is traced once per process.
    _explainers: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return str(self.card["name"])

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @property
    def sha256(self) -> str:
        return str(self.card["weights"]["sha256"])

    @property
    def input_size(self) -> int:
        return int(self.card["input_size"])

    @property
    def temperature(self) -> float:
        return float(self.card.get("temperature", 1.0))

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.card["classes"])

    @property
    def mirror(self) -> bool:
        """Serve the mean of the image's and its mirror image's logits (cards before 1.2.0: no)."""
        return self.card.get("test_time_augmentation", "none") == "mirror"


def save_model_files(model: keras.Model, config: ModelConfig, model_dir: str | Path, *,
                     metrics: dict[str, Any] | None = None,
                     training: dict[str, Any] | None = None,
                     temperature: float = 1.0, mirror: bool = False) -> Path:
    """Write `<name>.weights.h5` and `<name>.card.json` (with the weights' SHA-256); returns the weights path."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    wpath = weights_path(model_dir, config.name)
    model.save_weights(wpath)
    card = build_card(config, weights_file=wpath.name, weights_sha256=sha256_file(wpath),
                      metrics=metrics, training=training, temperature=temperature, mirror=mirror)
    write_card(card, card_path(model_dir, config.name))
    return wpath


def update_card(model_dir: str | Path, name: str, **changes: Any) -> dict[str, Any]:
    """Change card fields (metrics, temperature) after training, keeping the weights hash."""
    path = card_path(model_dir, name)
    card = read_card(path)
    card.update(changes)
    write_card(card, path)
    return card


def load_model(model_dir: str | Path, name: str = "neuroscan-cnn") -> LoadedModel:
    """Build the card's architecture from code, verify the weights' hash, inject them."""
    model_dir = Path(model_dir)
    cpath, wpath = card_path(model_dir, name), weights_path(model_dir, name)
    if not cpath.is_file():
        raise WeightsIntegrityError(f"no model card {cpath.name} in {model_dir}: refusing unverifiable weights")
    card = read_card(cpath)
    wpath = model_dir / card.get("weights", {}).get("file", wpath.name)
    if not wpath.is_file():
        raise WeightsIntegrityError(f"the weights file {wpath} named by {cpath.name} does not exist")
    actual = sha256_file(wpath)
    expected = card.get("weights", {}).get("sha256")
    if actual != expected:
        raise WeightsIntegrityError(
            f"{wpath.name} has SHA-256 {actual}, its card says {expected}: refusing to load")
    if tuple(card.get("classes", ())) != CLASSES:
        raise ModelCardError(f"card class order {card.get('classes')} differs from {list(CLASSES)}")
    if card.get("preprocessing") != PREPROCESSING_ID:
        raise ModelCardError(
            f"card preprocessing {card.get('preprocessing')!r} differs from this code's {PREPROCESSING_ID!r}")
    config = ModelConfig.from_dict(card["architecture"])
    model = build_model(config)
    inject_weights(model, wpath)
    return LoadedModel(model=model, config=config, card=card, weights_file=wpath)
