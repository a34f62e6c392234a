"""Model commands: synthesise data, train, evaluate, predict offline.

Each function imports TensorFlow and friends inside its body, so `neuroscan --help` and the
API-side commands never pay for (or depend on) the model stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def synth(
    out: Annotated[Path, typer.Option(help="Output folder (Kaggle layout + masks/ + manifest.json).")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same images.")] = 1,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Generate synthetic brain MRI slices with lesion masks (research data)."""
    from research.synth.generate import generate_dataset

    generate_dataset(out, n, seed, size=size, workers=workers, progress=True)
    typer.echo(f"wrote {n} images to {out}")


def train(
    data: Annotated[list[Path], typer.Option(
        help="Training folder in the Kaggle layout (glioma/ meningioma/ notumor/ pituitary/); "
             "repeat to train on several together.")],
    out: Annotated[Path, typer.Option("--out", "--model-dir", help="Where to write <name>.weights.h5 and its card.")] = Path("models"),
    epochs: Annotated[int, typer.Option(help="Maximum epochs (early stopping may end sooner).")] = 20,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    val_fraction: Annotated[float, typer.Option(help="Share of the data held out for validation.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed for the split, augmentation and initialisation.")] = 1,
    input_size: Annotated[int, typer.Option(help="Model input side in pixels.")] = 128,
    name: Annotated[str, typer.Option(help="Model name (file stem).")] = "neuroscan-cnn",
    tiny: Annotated[bool, typer.Option(help="Use the tiny test architecture.")] = False,
    time_budget_min: Annotated[float, typer.Option(help="Stop after this many minutes of training.")] = 0.0,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate of the cosine schedule.")] = 3e-3,
    lesion_weight: Annotated[float, typer.Option(help="Weight of the auxiliary lesion-map loss (0: off).")] = 1.0,
    init_from: Annotated[Path | None, typer.Option(
        help="Start from these weights (.weights.h5, .keras or Keras 2 .h5): a warm restart.")] = None,
    mirror: Annotated[bool, typer.Option(
        help="Serve the mean of each image's and its left-right mirror image's logits (recorded in the card).")] = True,
    precision: Annotated[str, typer.Option(
        help="auto (mixed bfloat16 where the CPU computes it natively, else float32), bfloat16 or float32.")] = "auto",
    low_res_share: Annotated[float, typer.Option(
        help="Progressive resizing: share of the time budget (of the epochs, without one) trained on "
             "smaller images first (0: off).", min=0.0, max=0.9)] = 0.0,
    low_res_size: Annotated[int, typer.Option(help="Image side of that first phase, in pixels.")] = 96,
    patience: Annotated[int, typer.Option(
        help="Early stopping: epochs without a better validation loss before training ends.", min=1)] = 4,
    model_version: Annotated[str | None, typer.Option(
        help="Version written to the model card (default: 0.0.0-dev, or 0.0.1-test with --tiny).")] = None,
) -> None:
    """Train the CNN on a folder of images; writes weights + model card (with temperature)."""
    from research.train import TrainOptions, train_model

    if init_from is not None and not init_from.is_file():
        raise typer.BadParameter(f"{init_from} is not a file", param_hint="--init-from")
    opts = TrainOptions(data=tuple(data), out=out, epochs=epochs, batch_size=batch_size,
                        val_fraction=val_fraction, seed=seed, input_size=input_size,
                        name=name, tiny=tiny, time_budget_s=time_budget_min * 60 or None,
                        learning_rate=learning_rate, lesion_weight=lesion_weight, init_from=init_from,
                        mirror=mirror, precision=precision, low_res_share=low_res_share,
                        low_res_size=low_res_size, patience=patience, version=model_version)
    path = train_model(opts)
    typer.echo(f"saved {path}")


def evaluate(
    data: Annotated[Path, typer.Option(help="Test folder in the Kaggle layout (masks/ optional).")],
    model_dir: Annotated[Path, typer.Option(help="Folder with the weights and card.")] = Path("models"),
    out: Annotated[Path | None, typer.Option(help="Report stem: writes <out>.json and <out>.md.")] = None,
    name: Annotated[str, typer.Option(help="Model name.")] = "neuroscan-cnn",
    update_card: Annotated[bool, typer.Option(help="Store the metrics in the model card.")] = False,
) -> None:
    """Accuracy, per-class metrics, ROC-AUC, calibration, Grad-CAM localisation, gate rates."""
    from research.evaluate import evaluate_folder, write_reports

    report = evaluate_folder(data, model_dir, name=name, update_card=update_card)
    stem = out or (model_dir / f"{name}.eval")
    write_reports(report, stem)
    typer.echo(json.dumps(report["summary"], indent=2))


def fit_gate(
    data: Annotated[Path, typer.Option(help="Brain MRI slices to fit on (e.g. `neuroscan synth --n 800 --seed 7`).")],
    model_dir: Annotated[Path, typer.Option(help="Folder with the weights and card.")] = Path("models"),
    name: Annotated[str, typer.Option(help="Model name.")] = "neuroscan-cnn",
    real_brains: Annotated[Path | None, typer.Option(
        help="Real brain MRI slices: the threshold is raised above all of them if needed.")] = None,
) -> None:
    """Fit the input gate's learned score for a model: writes <name>.ood.npz, names it in the card."""
    from worker.ood import fit_model_gate

    entry = fit_model_gate(model_dir, name, data, real_brains)
    typer.echo(json.dumps(entry, indent=2))


def predict(
    files: Annotated[list[Path], typer.Argument(help="PNG, JPEG or DICOM files.")],
    model_dir: Annotated[Path | None, typer.Option(help="Folder with the weights and card (default: settings).")] = None,
    name: Annotated[str | None, typer.Option(help="Model name (default: settings).")] = None,
    heatmaps: Annotated[Path | None, typer.Option(
        help="Also write <file stem>.overlay.png and <file stem>.heatmap.png here for each "
             "analysed file (the Grad-CAM map of the class the `explanation` names).")] = None,
) -> None:
    """Classify files offline (no server): one JSON object per line."""
    from shared.errors import InputError
    from shared.explanation import explanation_for
    from shared.imaging import decode_image
    from shared.settings import get_settings
    from worker.inference import analyse
    from worker.model import load_model

    settings = get_settings()
    model = load_model(model_dir or settings.model_dir, name or settings.model_name)
    if heatmaps is not None:
        heatmaps.mkdir(parents=True, exist_ok=True)
    stems: dict[str, int] = {}
    for path in files:
        record: dict[str, object] = {"file": str(path)}
        try:
            (result,) = analyse([decode_image(path.read_bytes())], model)
        except (InputError, OSError) as exc:
            code = getattr(exc, "code", "unreadable_file")
            record.update(label=None, confidence=None, probabilities=None,
                          error={"code": code, "message": str(exc)})
        else:
            record.update(label=result.label, confidence=result.confidence,
                          probabilities=result.probabilities,
                          gate={"accepted": result.gate.accepted, "code": result.gate.code,
                                "reason": result.gate.reason})
            if result.label is not None and result.probabilities is not None:
                record["explanation"] = explanation_for(result.label, result.probabilities).model_dump()
            if heatmaps is not None and result.overlay_png and result.heatmap_png:
                # Same stem twice (a/scan.dcm, b/scan.dcm): number the later ones.
                seen = stems[path.stem] = stems.get(path.stem, 0) + 1
                stem = path.stem if seen == 1 else f"{path.stem}-{seen}"
                out = {"overlay": heatmaps / f"{stem}.overlay.png",
                       "heatmap": heatmaps / f"{stem}.heatmap.png"}
                out["overlay"].write_bytes(result.overlay_png)
                out["heatmap"].write_bytes(result.heatmap_png)
                record["images"] = {k: str(v) for k, v in out.items()}
        typer.echo(json.dumps(record))
