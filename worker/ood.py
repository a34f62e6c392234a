"""The input gate's learned score: how far an image's features lie from brain MRI.

The image rules (`worker.gate`) catch what is obviously not a slice; a shoulder or abdomen
MR slice passes them. The network itself knows more: its pooled last-conv-block activations
(mean and max over space, the features its classifier reads) for brain slices fill a compact
region. We fit a Gaussian to them on synthetic brain slices and score a new image by its
Mahalanobis distance (Lee et al., "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018; one class-agnostic
Gaussian, with the covariance shrunk toward its diagonal because features outnumber slices).

The threshold is the 99.5th percentile of out-of-fold distances of the fitting slices (so
about 0.5% of synthetic brains are refused by design), raised if needed above the largest
distance of any real brain slice given at fit time. The statistics live next to the weights
in `<name>.ood.npz`, named and hashed by the model card's `input_gate` field; a model whose
card names none is served with the rules alone. Re-fit after every retraining:

    neuroscan fit-gate --model-dir models --data DIR [--real-brains DIR]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.gate import GateOutcome

if TYPE_CHECKING:
    from worker.model.loader import LoadedModel

SHRINKAGE = 0.1
QUANTILE = 0.995
FOLDS = 4
REAL_MARGIN = 1.05  # the threshold sits at least 5% above the farthest real brain given
SCORE = "mahalanobis-pooled-cam-features"


class OODFileMismatch(RuntimeError):
    """The gate statistics are not the file the model card names."""


@dataclass(frozen=True)
class LearnedGate:
    mean: np.ndarray  # (F,)
    precision: np.ndarray  # (F, F)
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(N, F) features -> (N,) Mahalanobis distances."""
        x = np.asarray(features, np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("nf,fg,ng->n", x, self.precision, x), 0.0))

    def judge(self, outcome: GateOutcome, distance: float) -> GateOutcome:
        """The rules' outcome with the learned score added; rejected when it is too far."""
        scores = {**outcome.scores, "ood_distance": round(distance, 3),
                  "ood_threshold": round(self.threshold, 3)}
        if not outcome.accepted:
            return GateOutcome(False, outcome.code, outcome.reason, scores, outcome.header)
        if distance > self.threshold:
            return GateOutcome(False, "not_brain_mri",
                               "The image does not resemble the brain MRI slices the model knows "
                               f"(learned out-of-distribution score {distance:.1f}, limit "
                               f"{self.threshold:.1f}).", scores, outcome.header)
        return GateOutcome(True, outcome.code, outcome.reason, scores, outcome.header)


def _gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, np.float64)
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    # Shrink toward the diagonal (plus a floor): 256 features from ~800 slices.
    diag = np.diag(np.diag(cov))
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * diag + 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov))
    return mean, np.linalg.inv(cov)


def fit(features: np.ndarray, real_brains: np.ndarray | None = None, *,
        seed: int = 0) -> tuple[LearnedGate, dict[str, Any]]:
    """Fit on brain features; returns the gate and a report of how its threshold was set."""
    x = np.asarray(features, np.float64)
    if len(x) < 50:
        raise ValueError(f"{len(x)} images are too few to fit the learned gate (50 at least)")
    folds = np.random.default_rng(seed).permutation(len(x)) % FOLDS
    oof = np.empty(len(x))
    for k in range(FOLDS):
        mean, precision = _gaussian(x[folds != k])
        oof[folds == k] = LearnedGate(mean, precision, 0.0).distances(x[folds == k])
    threshold = float(np.quantile(oof, QUANTILE))
    mean, precision = _gaussian(x)
    gate = LearnedGate(mean, precision, threshold)
    report: dict[str, Any] = {"n_fit": len(x), "quantile": QUANTILE,
                              "synthetic_threshold": round(threshold, 4),
                              "synthetic_out_of_fold_rejected": float(np.mean(oof > threshold))}
    if real_brains is not None and len(real_brains):
        real = gate.distances(real_brains)
        report.update(n_real=len(real), real_max=round(float(real.max()), 4))
        threshold = max(threshold, REAL_MARGIN * float(real.max()))
    gate = LearnedGate(mean, precision, threshold, meta={"score": SCORE, **report,
                                                        "threshold": round(threshold, 4)})
    return gate, gate.meta


def save(gate: LearnedGate, path: Path) -> str:
    """Write the statistics (.npz); returns the file's SHA-256."""
    with path.open("wb") as fh:
        np.savez(fh, mean=gate.mean.astype(np.float32), precision=gate.precision.astype(np.float32),
                 threshold=np.float64(gate.threshold))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path: Path, sha256: str | None = None) -> LearnedGate:
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise OODFileMismatch(f"{path.name} does not match the SHA-256 its model card gives")
    with np.load(path) as z:
        return LearnedGate(z["mean"].astype(np.float64), z["precision"].astype(np.float64),
                           float(z["threshold"]))


def gate_for(model: LoadedModel) -> LearnedGate | None:
    """The learned gate the model card names (loaded and hash-checked once), or None."""
    if "ood" not in model._explainers:
        entry = model.card.get("input_gate") or None
        gate = None
        if entry and entry.get("file"):
            gate = load(model.weights_file.parent / entry["file"], entry.get("sha256"))
        model._explainers["ood"] = gate
    return model._explainers["ood"]


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


def image_files(folder: Path) -> list[Path]:
    """Image files anywhere under `folder` (a Kaggle-layout set or a plain folder), sorted;
    lesion masks (`masks/`) are not images of a brain."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file()
                  and p.suffix.lower() in IMAGE_SUFFIXES and "masks" not in p.parts)


def features_of(model: LoadedModel, images: list[Any]) -> np.ndarray:
    """(N, F) pooled features of decoded images, from the served graph (rule-gate blind)."""
    from shared.preprocessing import preprocess
    from worker.inference import run_batch_with_features

    if not images:
        return np.zeros((0, 0))
    batch = np.stack([preprocess(img.pixels, model.input_size).image for img in images])
    return run_batch_with_features(model, batch)[2]


def fit_model_gate(model_dir: Path, name: str, data: Path,
                   real_brains: Path | None = None) -> dict[str, Any]:
    """Fit the learned gate for the model in `model_dir` on brain slices under `data` (those
    the rule gate accepts), write `<name>.ood.npz` and name it in the card; returns the card entry."""
    from shared.imaging import decode_image
    from worker.gate import assess
    from worker.model import load_model
    from worker.model.loader import update_card

    model = load_model(model_dir, name)

    def accepted(folder: Path) -> list[Any]:
        out = []
        for path in image_files(folder):
            img = decode_image(path.read_bytes())
            if assess(img).accepted:
                out.append(img)
        return out

    fit_images = accepted(data)
    real = features_of(model, accepted(real_brains)) if real_brains else None
    gate, report = fit(features_of(model, fit_images), real)
    path = Path(model_dir) / f"{name}.ood.npz"
    digest = save(gate, path)
    entry = {"file": path.name, "sha256": digest, "score": SCORE,
             "threshold": round(gate.threshold, 4), "fitted_on": str(data),
             "weights_sha256": model.sha256, **{k: v for k, v in report.items()
                                                if k not in ("score", "threshold")}}
    update_card(model_dir, name, input_gate=entry)
    return entry
