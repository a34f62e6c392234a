"""Train the CNN on any folder in the Kaggle layout (synthetic or real) and save weights + card.

    neuroscan train --data var/data/train --out models --epochs 12

Every image goes through `shared.preprocessing.preprocess` (via `load_folder`), the same
function serving uses; augmentation then works on model-frame tensors. After training, the
calibration temperature is fitted on the validation split (Guo et al. 2017) and stored in
the model card, which serving applies.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.imaging import decode_image
from shared.labels import CLASSES
from shared.preprocessing import PREPROCESSING_ID, preprocess
from shared.settings import get_settings

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


@dataclass(frozen=True)
class TrainOptions:
    data: Path
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
    time_budget_s: float | None = None
    progress: bool | None = None  # None: a progress bar on a terminal, one line per epoch otherwise


def list_folder(data: Path) -> tuple[list[Path], np.ndarray]:
    """Image files under data/<class>/ (Kaggle layout), sorted, with class indices."""
    files, labels = [], []
    for idx, name in enumerate(CLASSES):
        folder = Path(data) / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{data} has no {name}/ folder (expected the Kaggle layout)")
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [idx] * len(found)
    if not files:
        raise FileNotFoundError(f"no images under {data}")
    return files, np.asarray(labels, dtype=np.int64)


def _load_one(job: tuple[Path, int]) -> np.ndarray:
    path, size = job
    model_input = preprocess(decode_image(path.read_bytes()).pixels, size)[..., 0]
    return np.round(model_input * 255.0).astype(np.uint8)  # 8-bit in memory: 4x less RAM


def load_folder(data: Path, size: int, *, workers: int = 2) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """(uint8 (N,S,S) preprocessed images, labels, files); cached under var/cache by content key."""
    files, labels = list_folder(data)
    key = hashlib.sha256(f"{PREPROCESSING_ID}|{size}".encode())
    for f in files:
        st = f.stat()
        key.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache = get_settings().var_dir / "cache" / f"preprocessed-{key.hexdigest()[:20]}.npy"
    if cache.is_file():
        return np.load(cache), labels, files
    jobs = [(f, size) for f in files]
    if workers > 1 and len(jobs) > 64:
        with mp.get_context("fork").Pool(workers) as pool:
            images = pool.map(_load_one, jobs, chunksize=32)
    else:
        images = [_load_one(j) for j in jobs]
    arr = np.stack(images)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, arr)
    return arr, labels, files


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _augmenter(seed: int):  # noqa: ANN202 - returns a tf.data map function
    import keras
    import tensorflow as tf

    geometry = keras.Sequential([
        keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed),  # about ±11 degrees
        keras.layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=seed + 1),
        keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 2),
    ])

    def augment(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.cast(x, tf.float32)[..., tf.newaxis] / 255.0
        n = tf.shape(x)[0]
        flip = tf.random.uniform([n, 1, 1, 1]) < 0.5  # left-right only: skull base stays below
        x = tf.where(flip, tf.reverse(x, axis=[2]), x)
        x = geometry(x, training=True)
        gamma = tf.exp(tf.random.uniform([n, 1, 1, 1], -0.3, 0.3))
        x = tf.clip_by_value(x, 0.0, 1.0) ** gamma
        x = x * tf.random.uniform([n, 1, 1, 1], 0.85, 1.15) + tf.random.uniform([n, 1, 1, 1], -0.05, 0.05)
        x = x + tf.random.normal(tf.shape(x)) * tf.random.uniform([n, 1, 1, 1], 0.0, 0.03)
        return tf.clip_by_value(x, 0.0, 1.0), y

    return augment


def _manifest_info(data: Path) -> dict[str, Any]:
    path = Path(data) / "manifest.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    return {k: m.get(k) for k in ("generator", "version", "params")}


class _TimeBudget:
    """Keras callback factory: stop after the epoch that crosses the time budget."""

    @staticmethod
    def make(budget_s: float):  # noqa: ANN205
        import keras

        class TimeBudget(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):  # noqa: ANN001, ANN202
                self.start = time.monotonic()

            def on_epoch_end(self, epoch, logs=None):  # noqa: ANN001, ANN202
                if time.monotonic() - self.start > budget_s:
                    print(f"time budget of {budget_s:.0f}s reached after epoch {epoch + 1}", flush=True)
                    self.model.stop_training = True

        return TimeBudget()


def train_model(opts: TrainOptions) -> Path:
    """Train, calibrate, save `<name>.weights.h5` + card; returns the weights path."""
    t0 = time.monotonic()
    images, labels, _ = load_folder(opts.data, opts.input_size)  # forks workers: before TF starts threads
    tr, va = stratified_split(labels, opts.val_fraction, opts.seed)
    if len(va) == 0:
        raise ValueError("the validation split is empty: add images or raise --val-fraction")
    print(f"data: {len(tr)} train, {len(va)} validation images at {opts.input_size}px "
          f"(loaded in {time.monotonic() - t0:.0f}s)", flush=True)

    import keras
    import tensorflow as tf

    from research.metrics import classification_summary, fit_temperature
    from worker.model import ModelConfig, build_model, save_model_files

    config = (ModelConfig.tiny(name=opts.name, input_size=opts.input_size) if opts.tiny
              else ModelConfig(name=opts.name, input_size=opts.input_size))

    keras.utils.set_random_seed(opts.seed)
    train_ds = (tf.data.Dataset.from_tensor_slices((images[tr], labels[tr]))
                .shuffle(len(tr), seed=opts.seed, reshuffle_each_iteration=True)
                .batch(opts.batch_size, drop_remainder=len(tr) >= opts.batch_size)
                .map(_augmenter(opts.seed), num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(2))
    x_val = images[va].astype(np.float32)[..., np.newaxis] / 255.0
    y_val = labels[va]

    model = build_model(config)
    steps = max(1, len(train_ds)) * opts.epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        opts.learning_rate * 0.1, decay_steps=steps, warmup_target=opts.learning_rate,
        warmup_steps=min(steps // 10, 300))
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    callbacks: list[Any] = [keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=opts.patience, restore_best_weights=True)]
    if opts.time_budget_s:
        callbacks.append(_TimeBudget.make(opts.time_budget_s))
    progress = sys.stdout.isatty() if opts.progress is None else opts.progress
    t_fit = time.monotonic()
    history = model.fit(train_ds, validation_data=(x_val, y_val), batch_size=opts.batch_size,
                        epochs=opts.epochs, callbacks=callbacks, shuffle=False,
                        verbose=1 if progress else 2)
    fit_s = time.monotonic() - t_fit

    val_logits = model.predict(x_val, batch_size=128, verbose=0)
    temperature = fit_temperature(val_logits, y_val)
    val_metrics = classification_summary(val_logits, y_val, config.classes, temperature)
    training = {
        "data": str(opts.data), "data_source": _manifest_info(opts.data),
        "n_train": int(len(tr)), "n_validation": int(len(va)), "seed": opts.seed,
        "validation": "stratified split of the training folder",
        "val_fraction": opts.val_fraction, "epochs_planned": opts.epochs,
        "epochs_run": len(history.history["loss"]), "batch_size": opts.batch_size,
        "optimizer": f"AdamW, cosine decay from {opts.learning_rate:g}, weight decay 1e-4",
        "augmentation": "left-right flip, rotation ±11°, zoom ±10%, shift ±5%, gamma, "
                        "contrast/brightness, Gaussian noise",
        "train_seconds": round(fit_s, 1),
        "history": {k: [round(float(v), 4) for v in vals] for k, vals in history.history.items()},
    }
    metrics = {"validation": {k: val_metrics[k] for k in
                              ("n", "accuracy", "macro_f1", "ece_before_t", "ece_after_t",
                               "nll_before_t", "nll_after_t")}}
    path = save_model_files(model, config, opts.out, metrics=metrics, training=training,
                            temperature=temperature)
    print(f"validation accuracy {val_metrics['accuracy']:.4f}, T={temperature:.3f}, "
          f"ECE {val_metrics['ece_before_t']:.4f} -> {val_metrics['ece_after_t']:.4f}; "
          f"trained {fit_s:.0f}s; saved {path}", flush=True)
    return path
