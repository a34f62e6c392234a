"""The model card: the JSON that travels with every weights file.

It names the architecture (enough to rebuild it), input size, class order, preprocessing,
training data and seed, metrics, calibration temperature and the weights file's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.preprocessing import PREPROCESSING_ID
from worker.model.config import ModelConfig

CARD_SCHEMA = "neuroscan-model-card/1"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_card(config: ModelConfig, *, weights_file: str, weights_sha256: str,
               metrics: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
               temperature: float = 1.0, mirror: bool = False) -> dict[str, Any]:
    import keras  # only the worker side builds cards
    import tensorflow as tf

    return {
        "schema": CARD_SCHEMA,
        "name": config.name,
        "version": config.version,
        "architecture": config.to_dict(),
        "input_size": config.input_size,
        "input": {"shape": [config.input_size, config.input_size, 1], "range": [0.0, 1.0],
                  "channels": "grayscale"},
        "classes": list(config.classes),
        "preprocessing": PREPROCESSING_ID,
        "output": "logits; probabilities = softmax(logits / temperature)",
        "temperature": float(temperature),
        # "mirror": logits (and Grad-CAM) of the image and its left-right mirror image, averaged.
        "test_time_augmentation": "mirror" if mirror else "none",
        "training": training or {},
        "metrics": metrics or {},
        "weights": {"file": weights_file, "sha256": weights_sha256},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "software": {"keras": keras.__version__, "tensorflow": tf.__version__},
        "intended_use": "Research only. Trained on synthetic MRI; not a medical device.",
    }


def card_path(model_dir: str | Path, name: str) -> Path:
    return Path(model_dir) / f"{name}.card.json"


def weights_path(model_dir: str | Path, name: str) -> Path:
    return Path(model_dir) / f"{name}.weights.h5"


def write_card(card: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_card(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
