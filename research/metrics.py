"""Classification, calibration and localisation metrics (NumPy/SciPy only, no TensorFlow).

- Expected calibration error and temperature scaling: Guo et al., "On Calibration of Modern
  Neural Networks", ICML 2017 (15 equal-width confidence bins; T fitted by NLL).
- Pointing game: Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import binary_dilation
from scipy.optimize import minimize_scalar

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)  # stable: exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises validation NLL of softmax(logits / T); searched on log T."""
    res = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Σ_b |B_b|/n · |accuracy(B_b) − confidence(B_b)| over equal-width confidence bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm  # rows: true class, columns: predicted class


def per_class_report(cm: np.ndarray, classes: tuple[str, ...]) -> dict[str, dict[str, float]]:
    out = {}
    for i, name in enumerate(classes):
        tp = cm[i, i]
        precision = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        recall = tp / cm[i, :].sum() if cm[i, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                     "support": int(cm[i, :].sum())}
    return out


def roc_auc_binary(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties half."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order), dtype=np.float64)
    ranks[order] = np.arange(1, len(order) + 1)
    allv = np.concatenate([pos, neg])
    for v in np.unique(allv):  # average ranks over ties
        tie = allv == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def roc_auc_ovr(probs: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, float]:
    per = {c: roc_auc_binary(probs[:, i], labels == i) for i, c in enumerate(classes)}
    per["macro"] = float(np.nanmean(list(per.values())))
    return per


def pointing_hit(cam: np.ndarray, mask: np.ndarray, tolerance_px: int = 0) -> bool:
    """Does the map's maximum fall inside the lesion (dilated by `tolerance_px`)?"""
    if tolerance_px > 0:
        mask = binary_dilation(mask, iterations=tolerance_px)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(mask[peak])


def energy_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's total mass that lies inside the lesion."""
    total = float(cam.sum())
    return float(cam[mask].sum() / total) if total > 0 else 0.0


def classification_summary(logits: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
                           temperature: float) -> dict[str, Any]:
    probs_raw, probs = softmax(logits), softmax(logits, temperature)
    preds = probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, len(classes))
    return {
        "n": int(len(labels)),
        "accuracy": float((preds == labels).mean()),
        "per_class": per_class_report(cm, classes),
        "macro_f1": float(np.mean([v["f1"] for v in per_class_report(cm, classes).values()])),
        "confusion_matrix": {"rows_true_cols_pred": list(classes), "counts": cm.tolist()},
        "roc_auc_ovr": roc_auc_ovr(probs, labels, classes),
        "temperature": float(temperature),
        "nll_before_t": nll(logits, labels), "nll_after_t": nll(logits, labels, temperature),
        "ece_before_t": expected_calibration_error(probs_raw, labels),
        "ece_after_t": expected_calibration_error(probs, labels),
    }


def accuracy_by(groups: dict[str, list[str | None]], correct: np.ndarray) -> dict[str, dict[str, dict[str, Any]]]:
    """Accuracy within each value of each grouping: {grouping: {value: {"n", "accuracy"}}}.

    `groups[name][i]` is image i's value under that grouping, or None where it does not apply
    (a glioma grade for a meningioma, say); values are listed in sorted order."""
    correct = np.asarray(correct, dtype=bool)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, values in groups.items():
        if len(values) != len(correct):
            raise ValueError(f"grouping {name!r} has {len(values)} values for {len(correct)} images")
        table = {}
        for value in sorted({v for v in values if v is not None}):
            sel = np.array([v == value for v in values])
            table[value] = {"n": int(sel.sum()), "accuracy": float(correct[sel].mean())}
        if table:
            out[name] = table
    return out


def size_terciles(areas: list[float | None]) -> tuple[list[str | None], list[float]]:
    """Each area as "small" / "medium" / "large" by the terciles of the known areas (None
    stays None), and the two cut points."""
    known = np.array([a for a in areas if a is not None], dtype=float)
    if known.size == 0:
        return [None] * len(areas), []
    cuts = [float(c) for c in np.percentile(known, [100 / 3, 200 / 3])]
    names = ("1 small", "2 medium", "3 large")
    return [None if a is None else names[int(np.searchsorted(cuts, a, side="right"))] for a in areas], cuts
