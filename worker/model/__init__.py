"""The diagnostic model: architecture from code, weight injection, model card, loading, Grad-CAM."""

from worker.model.architecture import build_model
from worker.model.config import ModelConfig
from worker.model.loader import (
    LoadedModel,
    ModelCardError,
    WeightsIntegrityError,
    load_model,
    save_model_files,
)
from worker.model.weights import WeightsMismatchError, inject_weights

__all__ = [
    "LoadedModel",
    "ModelCardError",
    "ModelConfig",
    "WeightsIntegrityError",
    "WeightsMismatchError",
    "build_model",
    "inject_weights",
    "load_model",
    "save_model_files",
]
