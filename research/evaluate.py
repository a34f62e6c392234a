"""Evaluate a saved model on a folder in the Kaggle layout; write JSON and Markdown reports.

    neuroscan evaluate --data var/data/test --model-dir models

Everything runs through the serving path: `decode_image` -> the input gate ->
`preprocess` -> the compiled Grad-CAM graph (`worker.inference.run_batch`) -> maps taken back
to each image's own frame with `to_original_frame`, where the lesion masks live.

Localisation (images with a non-empty mask under data/masks/<class>/<stem>.png), on the
map of the TRUE class as in the pointing game's definition (Zhang et al., ECCV 2016):
- pointing game, strict: the map's maximum lies inside the lesion mask;
- pointing game, tolerant: within POINTING_TOLERANCE of the image's longer side of it;
- energy share: the fraction of the map's mass inside the lesion.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from research import metrics as M
from research.layout import list_folder, mask_path
from research.transfer import to_markdown as transfer_markdown
from research.transfer import transfer_report
from shared.imaging import decode_image
from shared.preprocessing import preprocess

CHUNK = 128
POINTING_TOLERANCE = 0.015  # 1.5% of the longer side: 4 px at 256 px, about 3 mm of anatomy


class _Scored(NamedTuple):
    """One pass over a folder: every image's logits, the gate's verdicts, and for each image
    with a lesion mask the localisation scores of its true class's map."""

    logits: np.ndarray  # (N, C) served logits, before temperature
    rejected: list[bool]  # the input gate refused the image
    located: list[tuple[int, bool, bool, float]]  # (label, strict hit, tolerant hit, energy inside)


def evaluate_folder(data: Path, model_dir: Path, *, name: str = "neuroscan-cnn",
                    update_card: bool = False, with_ood: bool = True,
                    with_transfer: bool = True) -> dict[str, Any]:
    """All metrics for one model on one folder; see the module docstring."""
    from worker.model import load_model

    data, model_dir = Path(data), Path(model_dir)
    files, labels = list_folder(data)
    model = load_model(model_dir, name)
    t0 = time.monotonic()
    scored = _score_folder(model, data, files, labels)
    seconds = time.monotonic() - t0
    cls = M.classification_summary(scored.logits, labels, model.classes, model.temperature)
    localisation = _localisation(scored.located, model.classes)
    gate = _gate(scored.rejected, with_ood)
    manifest = data / "manifest.json"
    source = json.loads(manifest.read_text()) if manifest.is_file() else {}
    correct = scored.logits.argmax(axis=1) == labels
    transfer = transfer_report(data, model) if with_transfer else None
    strata = accuracy_strata(source, [f.relative_to(data).as_posix() for f in files], correct)
    report = {
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256,
                  "temperature": model.temperature},
        "data": {"folder": str(data), "n": len(files),
                 "source": {k: source.get(k) for k in ("generator", "version", "params")}},
        "classification": cls,
        "localisation": localisation,
        "gate": gate,
        "accuracy_by": strata,
        "transfer": transfer,
        "seconds": round(seconds, 1),
    }
    report["summary"] = _summary(report, model.temperature)
    report["goals"] = goals_met(report["summary"])
    if update_card:
        _record_in_card(model, model_dir, name, report)
    return report


def _score_folder(model: Any, data: Path, files: list[Path], labels: np.ndarray) -> _Scored:
    """Every image through the serving path, CHUNK at a time: decode, gate, preprocess, the
    compiled graph; each true-class map taken back to the image's frame and scored against
    its lesion mask."""
    from worker.gate import assess
    from worker.inference import logits_batch, run_batch
    from worker.model.gradcam_postprocess import to_original_frame

    logits, rejected, located = [], [], []
    for start in range(0, len(files), CHUNK):
        chunk_files, chunk_labels = files[start:start + CHUNK], labels[start:start + CHUNK]
        decoded = [decode_image(f.read_bytes()) for f in chunk_files]
        rejected += [not assess(d).accepted for d in decoded]
        prepared = [preprocess(d.pixels, model.input_size) for d in decoded]
        batch = np.stack([p.image for p in prepared])
        logits.append(logits_batch(model, batch))
        _, cams = run_batch(model, batch, [int(c) for c in chunk_labels])  # true-class maps
        for f, lab, d, p, cam in zip(chunk_files, chunk_labels, decoded, prepared, cams, strict=True):
            mask = _mask_for(data, f)
            if mask is not None:
                full = to_original_frame(cam, p.box, d.pixels.shape[:2])
                located.append((int(lab), *_localisation_scores(f, full, mask)))
    return _Scored(np.concatenate(logits), rejected, located)


def _mask_for(data: Path, image_path: Path) -> np.ndarray | None:
    path = mask_path(data, image_path)
    if not path.is_file():
        return None
    mask = np.asarray(Image.open(path).convert("L")) > 127
    return mask if mask.any() else None


def _localisation_scores(image_path: Path, cam: np.ndarray, mask: np.ndarray) -> tuple[bool, bool, float]:
    """(strict hit, tolerant hit, energy inside) of one map in the original frame."""
    if mask.shape != cam.shape:
        raise ValueError(f"{image_path}: mask {mask.shape} differs from the image {cam.shape}")
    tol = max(1, int(round(POINTING_TOLERANCE * max(cam.shape))))
    return (M.pointing_hit(cam, mask), M.pointing_hit(cam, mask, tolerance_px=tol),
            M.energy_inside(cam, mask))


def _localisation(located: list[tuple[int, bool, bool, float]], classes: Any) -> dict[str, Any]:
    loc_labels = [lab for lab, _, _, _ in located]
    hits = [hit for _, hit, _, _ in located]
    hits_tol = [hit for _, _, hit, _ in located]
    energy = [e for _, _, _, e in located]
    loc_labels_arr, hits_arr = np.asarray(loc_labels), np.asarray(hits, dtype=bool)
    return {
        "n_with_mask": len(hits),
        "map": "Grad-CAM of the true class, in the original image frame",
        "pointing_game": float(hits_arr.mean()) if hits else None,
        "pointing_game_tolerant": float(np.mean(hits_tol)) if hits else None,
        "tolerance_px_at_256": int(round(POINTING_TOLERANCE * 256)),
        "energy_inside_lesion": float(np.mean(energy)) if hits else None,
        "per_class": {classes[c]: {"n": int((loc_labels_arr == c).sum()),
                                   "pointing_game": float(hits_arr[loc_labels_arr == c].mean()),
                                   "energy_inside_lesion": float(np.asarray(energy)[loc_labels_arr == c].mean())}
                      for c in sorted(set(loc_labels))},
    }


def _gate(rejected: list[bool], with_ood: bool) -> dict[str, Any]:
    """The gate's false-reject rate here and (optionally) its catch rate on the OOD set."""
    gate: dict[str, Any] = {"false_reject_rate": float(np.mean(rejected)), "n": len(rejected)}
    if with_ood:
        from research.ood import ood_catch_rate

        gate.update(ood_catch_rate())
    return gate


def _summary(report: dict[str, Any], temperature: float) -> dict[str, Any]:
    cls, localisation, gate, transfer = (report["classification"], report["localisation"],
                                         report["gate"], report["transfer"])
    return {
        "accuracy": cls["accuracy"], "macro_f1": cls["macro_f1"],
        "roc_auc_macro": cls["roc_auc_ovr"]["macro"],
        "ece_before_t": cls["ece_before_t"], "ece_after_t": cls["ece_after_t"],
        "temperature": temperature,
        "pointing_game": localisation["pointing_game"],
        "pointing_game_tolerant": localisation["pointing_game_tolerant"],
        "energy_inside_lesion": localisation["energy_inside_lesion"],
        "gate_false_reject_rate": gate["false_reject_rate"],
        "ood_catch_rate": gate.get("catch_rate"),
        "transfer_proxy": transfer["shifts"]["proxy_mean"] if transfer else None,
        "real_normal_notumor_rate": transfer["real_normal"]["notumor_rate"] if transfer else None,
    }


def _record_in_card(model: Any, model_dir: Path, name: str, report: dict[str, Any]) -> None:
    """The test metrics and goals into the model card (the weights' hash is untouched)."""
    from worker.model.loader import update_card

    card_metrics = dict(model.card.get("metrics", {}))
    card_metrics["test"] = {"data": report["data"], **report["summary"]}
    card_metrics["goals"] = report["goals"]
    update_card(model_dir, name, metrics=card_metrics)


def accuracy_strata(manifest: dict[str, Any], paths: list[str], correct: np.ndarray) -> dict[str, Any]:
    """Accuracy by what the generator recorded of each image (plane, contrast look, glioma
    grade, meningioma site, lesion size terciles per tumour kind): where the errors are.
    Empty for a folder without a generator manifest (real data)."""
    records = {r["path"]: r for r in manifest.get("images", [])}
    if not records or not all(p in records for p in paths):
        return {}
    images = [(records[p]["label"], records[p].get("meta", {})) for p in paths]

    def of(key: str, kind: str | None = None) -> list[Any]:
        """Each image's `key`, or None for images of another kind than `kind`."""
        return [m.get(key) if kind in (None, k) else None for k, m in images]

    groups: dict[str, list[str | None]] = {"plane": of("plane"), "contrast": of("contrast"),
                                           "glioma grade": of("grade", "glioma"),
                                           "glioma site": of("site", "glioma"),
                                           "meningioma site": of("site", "meningioma"),
                                           "ventricles": of("ventricles")}
    cuts: dict[str, list[float]] = {}
    for kind in ("glioma", "meningioma", "pituitary"):
        groups[f"{kind} size"], cuts[kind] = M.size_terciles(of("lesion_mm2", kind))
    return {"groups": M.accuracy_by(groups, correct), "size_cuts_mm2": cuts}


# The shipped model's targets on a held-out synthetic test set: metric -> (bound, "min" | "max").
GOALS: dict[str, tuple[float, str]] = {"accuracy": (0.98, "min"), "pointing_game": (0.90, "min"),
                                       "ece_after_t": (0.05, "max")}


def goals_met(summary: dict[str, Any]) -> dict[str, Any]:
    """Each goal with its bound and whether the measured value meets it."""
    out: dict[str, Any] = {}
    for key, (bound, kind) in GOALS.items():
        value = summary.get(key)
        met = value is not None and (value >= bound if kind == "min" else value <= bound)
        out[key] = {"value": value, kind: bound, "met": bool(met)}
    return out


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def to_markdown(report: dict[str, Any]) -> str:
    cls, loc, s = report["classification"], report["localisation"], report["summary"]
    src = report["data"]["source"]
    lines = [
        f"# Evaluation: {report['model']['name']} {report['model']['version']}", "",
        f"Data: `{report['data']['folder']}` ({report['data']['n']} images; "
        f"generator {src.get('generator')} {src.get('version')}, params {src.get('params')}). "
        f"Weights SHA-256 `{report['model']['sha256'][:16]}…`.", "",
        "| metric | value |", "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in s.items()], "",
        "## Goals", "", "| metric | value | goal | met |", "|---|---|---|---|",
        *[f"| {k} | {_fmt(g['value'])} | {'≥' if 'min' in g else '≤'} {g.get('min', g.get('max'))} | "
          f"{'yes' if g['met'] else '**no**'} |" for k, g in report["goals"].items()], "",
        "## Per class", "", "| class | precision | recall | F1 | support | ROC-AUC |", "|---|---|---|---|---|---|",
        *[f"| {c} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} | "
          f"{cls['roc_auc_ovr'][c]:.4f} |" for c, v in cls["per_class"].items()], "",
        "## Confusion matrix (rows: true, columns: predicted)", "",
        "| | " + " | ".join(cls["confusion_matrix"]["rows_true_cols_pred"]) + " |",
        "|---" * (len(cls["per_class"]) + 1) + "|",
        *[f"| {c} | " + " | ".join(str(x) for x in row) + " |"
          for c, row in zip(cls["per_class"], cls["confusion_matrix"]["counts"], strict=True)], "",
        "## Grad-CAM localisation", "",
        f"{loc['map']}; {loc['n_with_mask']} images with a lesion mask. Pointing game strict: the "
        f"map's maximum inside the mask; tolerant: within {loc['tolerance_px_at_256']} px at 256 px.", "",
        "| class | n | pointing game | energy inside lesion |", "|---|---|---|---|",
        *[f"| {c} | {v['n']} | {v['pointing_game']:.4f} | {v['energy_inside_lesion']:.4f} |"
          for c, v in loc["per_class"].items()], "",
        *_strata_markdown(report.get("accuracy_by") or {}),
        *(transfer_markdown(report["transfer"]) if report.get("transfer") else []),
        "## Input gate", "",
        f"False-reject rate on this set: {_fmt(report['gate']['false_reject_rate'])}; "
        f"catch rate on the out-of-distribution set: {_fmt(report['gate'].get('catch_rate'))} "
        f"({report['gate'].get('ood_n', 'n/a')} images).", "",
        "Calibration: ECE with 15 equal-width bins (Guo et al. 2017), temperature fitted on the "
        "training run's validation split.", "",
    ]
    return "\n".join(lines)


def _strata_markdown(strata: dict[str, Any]) -> list[str]:
    if not strata:
        return []
    cuts = ", ".join(f"{k} {a:.0f} and {b:.0f}" for k, (a, b) in
                     ((k, v) for k, v in strata["size_cuts_mm2"].items() if v))
    return ["## Accuracy by what the generator drew", "",
            f"From the data's manifest. Size terciles of the lesion's area in the slice, cut at (mm²): {cuts}.", "",
            "| by | group | n | accuracy |", "|---|---|---|---|",
            *[f"| {name} | {value} | {v['n']} | {v['accuracy']:.4f} |"
              for name, table in strata["groups"].items() for value, v in table.items()], ""]


def write_reports(report: dict[str, Any], stem: Path) -> tuple[Path, Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    jpath, mpath = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    jpath.write_text(json.dumps(report, indent=2) + "\n")
    mpath.write_text(to_markdown(report))
    return jpath, mpath
