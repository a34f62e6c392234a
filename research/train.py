"""Train the CNN on any folder in the Kaggle layout (synthetic or real) and save weights + card.

    neuroscan train --data var/data/train --out models --epochs 12

`train_model` is the run in order; each step's workings live in `research.training`
(data, augmentation, lesion supervision, precision, schedule). Every image goes through
`shared.preprocessing.preprocess`, the function serving uses; augmentation then works on
model-frame tensors. After training, the calibration temperature is fitted on the validation
split (Guo et al. 2017) and stored in the model card, which serving applies.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from research.training.augment import augmenter
from research.training.data import data_record, load_folders, stratified_split
from research.training.lesion_supervision import lesion_loss, lesion_targets, training_model
from research.training.precision import resolve_precision
from research.training.schedule import budgeted_cosine, phase_end


@dataclass(frozen=True)
class TrainOptions:
    data: Path | tuple[Path, ...]  # one folder in the Kaggle layout, or several trained on together
    out: Path = Path("models")
    epochs: int = 12
    batch_size: int = 64
    val_fraction: float = 0.1
    seed: int = 1
    input_size: int = 128
    name: str = "neuroscan-cnn"
    tiny: bool = False
    learning_rate: float = 3e-3
    patience: int = 4
    version: str | None = None  # the trained model's version for its card (None: the config's default)
    lesion_weight: float = 1.0  # auxiliary lesion-map loss, used when the folder has masks/
    init_from: Path | None = None  # continue from these weights (any layout weight injection reads)
    time_budget_s: float | None = None
    mirror: bool = True  # serve (and so calibrate) on the mean of the image's and its mirror's logits
    precision: str = "auto"  # "bfloat16" (mixed), "float32", or "auto": bfloat16 where the CPU has it
    # Progressive resizing: the first `low_res_share` of the time budget (of the epochs, without
    # a budget) trains on images resampled to `low_res_size`, the rest at `input_size`.
    low_res_share: float = 0.0
    low_res_size: int = 96
    progress: bool | None = None  # None: a progress bar on a terminal, one line per epoch otherwise

    @property
    def folders(self) -> tuple[Path, ...]:
        return (Path(self.data),) if isinstance(self.data, str | Path) else tuple(map(Path, self.data))

    @property
    def low_res(self) -> bool:
        """Does the run start with a low-resolution phase (progressive resizing)?"""
        return self.low_res_share > 0 and self.low_res_size < self.input_size


class Split(NamedTuple):
    """The loaded data, split: uint8 training arrays, float validation tensors and targets."""

    images: np.ndarray  # uint8 (N, S, S), training part
    masks: np.ndarray  # uint8 (N, S, S); all zero when there are no masks (one code path)
    labels: np.ndarray
    x_val: np.ndarray  # float32 (M, S, S, 1) in [0, 1]
    y_val: np.ndarray
    lesion_val: np.ndarray  # (M, R, R, 3) lesion targets on the CAM grid
    has_masks: bool


def train_model(opts: TrainOptions) -> Path:
    """Train, calibrate, save `<name>.weights.h5` + card; returns the weights path."""
    t0 = time.monotonic()
    loaded = load_folders(opts.folders, opts.input_size)  # forks workers: before TF starts threads
    masks = loaded.masks if loaded.masks is not None and opts.lesion_weight > 0 else None
    tr, va = stratified_split(loaded.labels, opts.val_fraction, opts.seed)
    if len(va) == 0:
        raise ValueError("the validation split is empty: add images or raise --val-fraction")
    print(f"data: {len(tr)} train, {len(va)} validation images at {opts.input_size}px, "
          f"lesion masks: {'yes' if masks is not None else 'no'} "
          f"(loaded in {time.monotonic() - t0:.0f}s)", flush=True)

    import keras

    config = _model_config(opts)
    keras.utils.set_random_seed(opts.seed)
    if opts.low_res and opts.low_res_size % config.downsampling:
        raise ValueError(f"low_res_size {opts.low_res_size} must be a multiple of {config.downsampling}")
    split = _split(loaded.images, masks, loaded.labels, tr, va, config.cam_resolution)
    batches = _batches(split, opts)
    precision = resolve_precision(opts.precision)
    model = _build(config, precision, opts)
    trainer = _compile(training_model(model, config.cam_layer), opts, split.has_masks)
    schedule = budgeted_cosine(opts.learning_rate, max(1, len(batches)), opts.epochs, opts.time_budget_s)
    t_fit = time.monotonic()
    history, epochs_low_res = _fit_phases(trainer, batches, split, schedule, config.downsampling, opts)
    fit_s = time.monotonic() - t_fit
    if precision != "float32" or opts.low_res:  # calibrate and save the network exactly as serving builds it
        model = _as_served(model, config)
    temperature, val_metrics = _calibrate(model, split, config.classes, opts.mirror)

    from worker.model import save_model_files

    training = _training_record(opts, config, split, tr, va, history, trainer, precision,
                                fit_s=fit_s, epochs_low_res=epochs_low_res)
    metrics = {"validation": {k: val_metrics[k] for k in
                              ("n", "accuracy", "macro_f1", "ece_before_t", "ece_after_t",
                               "nll_before_t", "nll_after_t")}}
    path = save_model_files(model, config, opts.out, metrics=metrics, training=training,
                            temperature=temperature, mirror=opts.mirror)
    print(f"validation accuracy {val_metrics['accuracy']:.4f}, T={temperature:.3f}, "
          f"ECE {val_metrics['ece_before_t']:.4f} -> {val_metrics['ece_after_t']:.4f}; "
          f"trained {fit_s:.0f}s; saved {path}", flush=True)
    return path


def _model_config(opts: TrainOptions) -> Any:
    """The architecture to train; its version is the run's (`--model-version`)."""
    from worker.model import ModelConfig

    named = {"version": opts.version} if opts.version else {}
    return (ModelConfig.tiny(name=opts.name, input_size=opts.input_size, **named) if opts.tiny
            else ModelConfig(name=opts.name, input_size=opts.input_size, **named))


def _split(images: np.ndarray, masks: np.ndarray | None, labels: np.ndarray, tr: np.ndarray,
           va: np.ndarray, cam_resolution: int) -> Split:
    # Without masks the lesion head gets all-zero targets at zero weight: one code path.
    mask_tr = masks[tr] if masks is not None else np.zeros_like(images[tr])
    y_val = labels[va]
    return Split(images=images[tr], masks=mask_tr, labels=labels[tr],
                 x_val=images[va].astype(np.float32)[..., np.newaxis] / 255.0, y_val=y_val,
                 lesion_val=lesion_targets(masks[va] if masks is not None else np.zeros_like(images[va]),
                                           y_val, cam_resolution),
                 has_masks=masks is not None)


def _batches(split: Split, opts: TrainOptions) -> Any:
    """The training arrays in TensorFlow once, shuffled and batched; each phase maps its own
    augmentation over them."""
    import tensorflow as tf

    n = len(split.labels)
    return (tf.data.Dataset.from_tensor_slices((split.images, split.masks, split.labels))
            .shuffle(n, seed=opts.seed, reshuffle_each_iteration=True)
            .batch(opts.batch_size, drop_remainder=n >= opts.batch_size))


def _build(config: Any, precision: str, opts: TrainOptions) -> Any:
    """The network in the run's precision (any input size for progressive resizing),
    warm-started from `init_from` when given."""
    import keras

    from worker.model import build_model, inject_weights

    if precision == "bfloat16":  # mixed: bfloat16 compute, float32 variables and logits
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(config, any_size=opts.low_res)
    finally:
        keras.mixed_precision.set_global_policy("float32")  # layers keep the policy they were built with
    if opts.init_from is not None:
        inject_weights(model, opts.init_from)  # a warm restart: a new LR cycle from these weights
    return model


def _compile(trainer: Any, opts: TrainOptions, has_masks: bool) -> Any:
    import keras

    trainer.compile(optimizer=keras.optimizers.AdamW(opts.learning_rate * 0.1, weight_decay=1e-4),
                    loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          "lesion": lesion_loss},
                    loss_weights={"logits": 1.0, "lesion": opts.lesion_weight if has_masks else 0.0},
                    metrics={"logits": ["accuracy"]})
    return trainer


def _fit_phases(trainer: Any, batches: Any, split: Split, schedule: Any, downsampling: int,
                opts: TrainOptions) -> tuple[dict[str, list[float]], int]:
    """The low-resolution phase (when asked for), then full resolution until the schedule or
    early stopping ends the run; returns the joined history and the low-resolution epochs."""
    import keras
    import tensorflow as tf

    progress = sys.stdout.isatty() if opts.progress is None else opts.progress
    history: dict[str, list[float]] = {}

    def fit(size: int | None, callback: Any) -> int:
        """One phase: epochs on from where the last phase stopped; returns how many it ran.
        Validation is always at the serving size."""
        data = batches.map(augmenter(downsampling, size), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
        fitted = trainer.fit(data, validation_data=(split.x_val, {"logits": split.y_val,
                                                                  "lesion": split.lesion_val}),
                             initial_epoch=len(history.get("loss", [])), epochs=opts.epochs,
                             callbacks=[schedule, callback], shuffle=False, verbose=1 if progress else 2)
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(values)
        return len(fitted.history.get("loss", []))

    epochs_low_res = 0
    if opts.low_res:
        print(f"progressive resizing: training at {opts.low_res_size}px, then {opts.input_size}px", flush=True)
        share_s = opts.time_budget_s * opts.low_res_share if opts.time_budget_s else None
        epochs_low_res = fit(opts.low_res_size,
                             phase_end(share_s, max(1, round(opts.epochs * opts.low_res_share))))
    if not schedule.finished and epochs_low_res < opts.epochs:
        if opts.low_res:
            print(f"progressive resizing: {opts.input_size}px from epoch {epochs_low_res + 1}", flush=True)
        # Early stopping watches the full-size phase only: a network trained on small images
        # scores worse at the serving size until it has trained there, which would otherwise
        # end the run in its first phase.
        fit(None, keras.callbacks.EarlyStopping(monitor="val_logits_loss", mode="min",
                                                patience=opts.patience, restore_best_weights=True))
    return history, epochs_low_res


def _as_served(model: Any, config: Any) -> Any:
    """The trained weights in the network serving builds (fixed size, float32)."""
    from worker.model import build_model

    served = build_model(config)
    served.set_weights(model.get_weights())  # the variables were float32 all along
    return served


def _calibrate(model: Any, split: Split, classes: Any, mirror: bool) -> tuple[float, dict[str, Any]]:
    """The temperature fitted on the validation logits serving computes, and the metrics."""
    from research.metrics import classification_summary, fit_temperature
    from worker.model.gradcam import make_logits

    served_logits = make_logits(model, mirror=mirror)  # T is fitted on what serving computes
    x_val = split.x_val
    val_logits = np.concatenate([served_logits(x_val[s:s + 128]).numpy() for s in range(0, len(x_val), 128)])
    temperature = fit_temperature(val_logits, split.y_val)
    return temperature, classification_summary(val_logits, split.y_val, classes, temperature)


def _training_record(opts: TrainOptions, config: Any, split: Split, tr: np.ndarray, va: np.ndarray,
                     history: dict[str, list[float]], trainer: Any, precision: str, *,
                     fit_s: float, epochs_low_res: int) -> dict[str, Any]:
    """The model card's "training" section: what was trained on, how, and how it went."""
    from worker.model.card import sha256_file

    return {
        **data_record(opts.folders),
        "n_train": int(len(tr)), "n_validation": int(len(va)), "seed": opts.seed,
        "validation": "stratified split of the training folder",
        "val_fraction": opts.val_fraction, "epochs_planned": opts.epochs,
        "epochs_run": len(history["loss"]), "batch_size": opts.batch_size,
        "optimizer": f"AdamW, warm-up then cosine decay from {opts.learning_rate:g} to 0 over the "
                     f"epochs that fit the time budget, weight decay 1e-4",
        "time_budget_s": opts.time_budget_s,
        "final_learning_rate": float(np.asarray(trainer.optimizer.learning_rate)),
        "precision": "mixed bfloat16 (float32 variables; served in float32)" if precision == "bfloat16"
                     else "float32",
        "augmentation": "left-right flip, rotation ±11°, zoom 0.8-1.1, random monotone intensity curve (60%), "
                        "gamma, contrast/brightness, Gaussian noise",
        "test_time_augmentation": "mirror (logits averaged; temperature fitted on them)" if opts.mirror else "none",
        "lesion_supervision": (f"auxiliary 1x1-conv lesion maps (one per tumour kind) on {config.cam_layer}, "
                               f"class-balanced BCE, weight {opts.lesion_weight:g} (training only)")
                              if split.has_masks else None,
        "train_seconds": round(fit_s, 1),
        "initial_weights": None if opts.init_from is None else {
            "file": Path(opts.init_from).name, "sha256": sha256_file(opts.init_from)},
        "progressive_resizing": {"low_res_size": opts.low_res_size, "share": opts.low_res_share,
                                 "epochs_at_low_res": epochs_low_res} if opts.low_res else None,
        "history": {k: [round(float(v), 4) for v in vals] for k, vals in history.items()},
    }
