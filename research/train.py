"""Train the CNN on any folder in the Kaggle layout (synthetic or real) and save weights + card.

    neuroscan train --data var/data/train --out models --epochs 12

Every image goes through `shared.preprocessing.preprocess_with_box` (via `load_folder`), the same
function serving uses; augmentation then works on model-frame tensors. After training, the
calibration temperature is fitted on the validation split (Guo et al. 2017) and stored in
the model card, which serving applies.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from shared.imaging import decode_image
from shared.labels import CLASSES
from shared.preprocessing import PREPROCESSING_ID, preprocess_with_box, to_model_frame
from shared.settings import get_settings

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


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


class Loaded(NamedTuple):
    images: np.ndarray  # uint8 (N, S, S): preprocess() output scaled to 0..255
    masks: np.ndarray | None  # uint8 (N, S, S) lesion masks in the model frame, when the folder has masks/
    labels: np.ndarray
    files: list[Path]


def mask_path(data: Path, image_path: Path) -> Path:
    """Where the generator (and any annotated dataset) keeps an image's lesion mask."""
    return Path(data) / "masks" / image_path.parent.name / f"{image_path.stem}.png"


def _load_one(job: tuple[Path, Path | None, int]) -> tuple[np.ndarray, np.ndarray | None]:
    path, mpath, size = job
    pixels = decode_image(path.read_bytes()).pixels
    model_frame, box = preprocess_with_box(pixels, size)
    image = np.round(model_frame[..., 0] * 255.0).astype(np.uint8)  # 8-bit: 4x less RAM
    if mpath is None:
        return image, None
    mask = np.asarray(Image.open(mpath).convert("L"), dtype=np.float32) / 255.0 if mpath.is_file() \
        else np.zeros(pixels.shape[:2], np.float32)
    # The same crop, pad and resize as the image, so the mask stays on the lesion.
    framed = to_model_frame(mask, box, size)
    return image, np.round(framed * 255.0).astype(np.uint8)


def load_folder(data: Path, size: int, *, workers: int = 2) -> Loaded:
    """Preprocessed images (and masks, if data/masks/ exists); cached under var/cache by content key."""
    files, labels = list_folder(data)
    with_masks = (Path(data) / "masks").is_dir()
    key = hashlib.sha256(f"{PREPROCESSING_ID}|{size}|{with_masks}".encode())
    for f in files:
        st = f.stat()
        key.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache = get_settings().var_dir / "cache" / f"preprocessed-{key.hexdigest()[:20]}.npz"
    use_cache = len(files) >= 1000  # small sets (tests) load in seconds; keep var/ clean
    if use_cache and cache.is_file():
        with np.load(cache) as z:
            return Loaded(z["images"], z["masks"] if with_masks else None, labels, files)
    jobs = [(f, mask_path(data, f) if with_masks else None, size) for f in files]
    if workers > 1 and len(jobs) > 64:
        with mp.get_context("fork").Pool(workers) as pool:
            loaded = pool.map(_load_one, jobs, chunksize=32)
    else:
        loaded = [_load_one(j) for j in jobs]
    images = np.stack([img for img, _ in loaded])
    masks = np.stack([m for _, m in loaded]) if with_masks else None  # type: ignore[misc]
    if not use_cache:
        return Loaded(images, masks, labels, files)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=images, **({"masks": masks} if masks is not None else {}))
    return Loaded(images, masks, labels, files)


def load_folders(folders: tuple[Path, ...], size: int) -> Loaded:
    """`load_folder` for each folder, concatenated; masks only when every folder has them."""
    parts = [load_folder(f, size) for f in folders]
    if len(parts) == 1:
        return parts[0]
    with_masks = all(p.masks is not None for p in parts)
    return Loaded(np.concatenate([p.images for p in parts]),
                  np.concatenate([p.masks for p in parts]) if with_masks else None,  # type: ignore[misc]
                  np.concatenate([p.labels for p in parts]),
                  [f for p in parts for f in p.files])


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


MAX_ROTATION = math.radians(11.0)


def flip_and_rotate(images: Any, mirror: Any, angle: Any, out_size: int | None = None,
                    zoom: Any = None) -> Any:
    """Resample (N,H,W,C) images once: mirrored left-right where `mirror` is -1, rotated by
    `angle` (radians) about the centre, magnified by `zoom` (per image; < 1 shrinks the head
    in the frame) and, when `out_size` is given, scaled to out_size x out_size; bilinear,
    zeros outside (air).

    One projective resampling instead of a flip, a rotation and a resize: on two cores the
    augmentation shares the CPU with the training step, so every full-batch pass counts."""
    import tensorflow as tf

    h, w = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
    out_shape = tf.shape(images)[1:3] if out_size is None else tf.constant([out_size, out_size])
    oh, ow = tf.cast(out_shape[0], tf.float32), tf.cast(out_shape[1], tf.float32)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    ox, oy = (ow - 1.0) / 2.0, (oh - 1.0) / 2.0
    sx, sy = w / ow, h / oh  # input pixels per output pixel
    if zoom is not None:
        sx, sy = sx / zoom, sy / zoom
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) reads input R(angle) @ diag(mirror, 1) @ S @ ((x, y) - o) + c.
    transforms = tf.stack([cos * mirror * sx, -sin * sy, cx - cos * mirror * sx * ox + sin * sy * oy,
                           sin * mirror * sx, cos * sy, cy - sin * mirror * sx * ox - cos * sy * oy,
                           tf.zeros_like(cos), tf.zeros_like(cos)], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=out_shape,
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")


ZOOM = (0.8, 1.1)
CURVE_KNOTS = 6


def random_intensity_curve(x: Any, share: float = 0.6) -> Any:
    """A random monotone piecewise-linear intensity mapping per image (knots at even input
    levels, increments drawn from a flat Dirichlet), applied to a share of the batch.

    Scanner, sequence and export differ in how tissue intensities are spaced, not only in an
    overall gamma; a network that has seen arbitrary monotone remappings of the same anatomy
    leans less on absolute grey levels (the histogram randomisation of SynthSeg-style
    training, here at train time)."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    steps = -tf.math.log(tf.random.uniform([n, CURVE_KNOTS], 1e-6, 1.0))  # Dirichlet(1,...,1)
    knots = tf.concat([tf.zeros([n, 1]), tf.cumsum(steps, axis=1) / tf.reduce_sum(steps, 1, keepdims=True)], 1)
    pos = x * CURVE_KNOTS
    i = tf.clip_by_value(tf.cast(tf.floor(pos), tf.int32), 0, CURVE_KNOTS - 1)
    frac = pos - tf.cast(i, tf.float32)
    flat = tf.reshape(i, [n, -1])
    lo = tf.reshape(tf.gather(knots, flat, batch_dims=1), tf.shape(x))
    hi = tf.reshape(tf.gather(knots, flat + 1, batch_dims=1), tf.shape(x))
    curved = lo + frac * (hi - lo)
    use = tf.cast(tf.random.uniform([n, 1, 1, 1]) < share, tf.float32)
    return use * curved + (1.0 - use) * x


def _augmenter(downsampling: int, out_size: int | None = None):  # noqa: ANN202 - a tf.data map function
    """Random geometry and intensity for a batch; images come out `out_size` square (default:
    as stored), with lesion targets on the matching CAM grid (one cell per `downsampling` px)."""
    import tensorflow as tf

    def augment(x: tf.Tensor, m: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        # Image and mask travel as two channels of one tensor, so geometry moves both alike.
        both = tf.cast(tf.stack([x, m], axis=-1), tf.float32) / 255.0
        n = tf.shape(both)[0]
        # Left-right flip (only: the skull base stays below) and a rotation, in one resampling.
        mirror = tf.where(tf.random.uniform([n]) < 0.5, -1.0, 1.0)
        # Head size in the frame: the crop to the head leaves 0.8-1.1 of it (skull margins,
        # neck, head shape differ between patients and exports).
        zoom = tf.exp(tf.random.uniform([n], math.log(ZOOM[0]), math.log(ZOOM[1])))
        both = flip_and_rotate(both, mirror, tf.random.uniform([n], -MAX_ROTATION, MAX_ROTATION), out_size,
                               zoom=zoom)
        x, m = both[..., :1], both[..., 1:]
        x = random_intensity_curve(tf.clip_by_value(x, 0.0, 1.0))
        gamma = tf.exp(tf.random.uniform([n, 1, 1, 1], -0.3, 0.3))
        x = x ** gamma
        x = x * tf.random.uniform([n, 1, 1, 1], 0.85, 1.15) + tf.random.uniform([n, 1, 1, 1], -0.05, 0.05)
        x = x + tf.random.normal(tf.shape(x)) * tf.random.uniform([n, 1, 1, 1], 0.0, 0.03)
        k = downsampling
        lesion = tf.cast(tf.nn.max_pool2d(m, k, k, "VALID") > 0.5, tf.float32)  # cell touches lesion
        channels = tf.gather(tf.constant(LESION_CHANNELS), y)[:, tf.newaxis, tf.newaxis, :]
        return tf.clip_by_value(x, 0.0, 1.0), {"logits": y, "lesion": lesion * channels}

    return augment


# Lesion-map channel per class: one map per tumour kind, none for notumor.
_TUMOURS = [c for c in CLASSES if c != "notumor"]
LESION_CHANNELS = np.array([[float(c == t) for t in _TUMOURS] for c in CLASSES], np.float32)


def lesion_targets(masks: np.ndarray, labels: np.ndarray, cam_resolution: int) -> np.ndarray:
    """uint8 (N,S,S) masks -> (N,R,R,3): 1 where a CAM cell touches a lesion of that kind.

    Binary "touches" rather than the covered share, so a pituitary lesion smaller than one
    cell still gives a full-strength target."""
    n, size = masks.shape[0], masks.shape[1]
    k = size // cam_resolution
    touch = (masks > 127).reshape(n, cam_resolution, k, cam_resolution, k).max(axis=(2, 4))
    return touch[..., np.newaxis].astype(np.float32) * LESION_CHANNELS[labels][:, np.newaxis, np.newaxis, :]


def lesion_loss(target: Any, logits: Any) -> Any:
    """Class-balanced BCE per image: mean over lesion cells + mean over the other cells.

    Lesions cover a few of the 768 cells; a plain mean would let "no lesion anywhere" win."""
    import tensorflow as tf

    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)
    pos, neg = target, 1.0 - target
    pos_term = tf.reduce_sum(bce * pos, axis=[1, 2, 3]) / tf.maximum(tf.reduce_sum(pos, axis=[1, 2, 3]), 1.0)
    neg_term = tf.reduce_sum(bce * neg, axis=[1, 2, 3]) / tf.maximum(tf.reduce_sum(neg, axis=[1, 2, 3]), 1.0)
    return pos_term + neg_term


def training_model(base: Any, cam_layer: str) -> Any:
    """The served network plus auxiliary 1x1-conv lesion maps (one per tumour kind) on the
    Grad-CAM layer.

    With lesion masks (the synthetic data has them) this deep supervision teaches the last
    conv block where lesions are, far faster than the class label alone; the auxiliary head
    is dropped after training (only `base` is saved), so serving is unchanged. (Serving the
    supervised maps as the class head instead was tried and rejected: same accuracy, but a
    pointing game of 0.40 against 0.87; docs/model.md.)"""
    import keras

    aux = keras.layers.Conv2D(LESION_CHANNELS.shape[1], 1, dtype="float32", name="aux_lesion")(
        base.get_layer(cam_layer).output)
    return keras.Model(base.inputs[0], {"logits": base.outputs[0], "lesion": aux}, name="trainer")


def cpu_has_bfloat16() -> bool:
    """Does this x86 CPU compute in bfloat16 natively (AVX512-BF16 or AMX)? Elsewhere the
    conversions cost more than they save."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bfloat16" if cpu_has_bfloat16() else "float32"
    if precision not in ("bfloat16", "float32"):
        raise ValueError(f"precision must be 'auto', 'bfloat16' or 'float32', not {precision!r}")
    return precision


def _manifest_info(data: Path) -> dict[str, Any]:
    path = Path(data) / "manifest.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    return {k: m.get(k) for k in ("generator", "version", "params")}


def _data_record(folders: tuple[Path, ...]) -> dict[str, Any]:
    """The card's record of what was trained on: one folder as before, several as lists."""
    if len(folders) == 1:
        return {"data": str(folders[0]), "data_source": _manifest_info(folders[0])}
    return {"data": [str(f) for f in folders], "data_source": [_manifest_info(f) for f in folders]}


def cosine_lr(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up from peak/10 to peak, then cosine decay to zero at the last step
    (``total_steps - 1``)."""
    if step < warmup_steps:
        return peak * (0.1 + 0.9 * step / warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def affordable_epochs(planned: int, done: int, elapsed_s: float, longest_epoch_s: float,
                      budget_s: float | None) -> int:
    """Epochs in all that fit the time budget, if every further epoch is as slow as the
    slowest so far (never fewer than already done, never more than planned)."""
    if not budget_s or longest_epoch_s <= 0:
        return planned
    more = int((budget_s - elapsed_s) // longest_epoch_s)
    return max(done, min(planned, done + max(more, 0)))


def _budgeted_cosine(peak: float, steps_per_epoch: int, planned_epochs: int,
                     budget_s: float | None):  # noqa: ANN202 - returns a Keras callback
    """Cosine learning rate whose horizon shrinks to the epochs the time budget allows.

    A schedule fixed at compile time would stop a budget-cut run at a high learning rate;
    this one re-plans after every epoch from measured epoch times, so the rate still anneals
    to zero in the last epoch that fits, and training stops there."""
    import keras

    class BudgetedCosine(keras.callbacks.Callback):
        """One schedule across several `fit` calls (the phases of progressive resizing): its
        clock, step count and plan start with the first call only."""

        finished = False
        start: float | None = None

        def on_train_begin(self, logs=None):  # noqa: ANN001, ANN202
            if self.start is None:
                self.start = time.monotonic()
                self.longest, self.step, self.total_epochs = 0.0, 0, planned_epochs
                self.warmup = min(planned_epochs * steps_per_epoch // 20, 100)
            self.last = time.monotonic()

        def on_train_batch_begin(self, batch, logs=None):  # noqa: ANN001, ANN202
            lr = cosine_lr(self.step, self.total_epochs * steps_per_epoch, peak, self.warmup)
            self.model.optimizer.learning_rate.assign(lr)
            self.step += 1

        def on_epoch_end(self, epoch, logs=None):  # noqa: ANN001, ANN202
            now = time.monotonic()
            self.longest, self.last = max(self.longest, now - self.last), now
            self.total_epochs = affordable_epochs(planned_epochs, epoch + 1, now - self.start,
                                                  self.longest, budget_s)
            if epoch + 1 >= self.total_epochs:
                self.finished = True
                if self.total_epochs < planned_epochs:
                    print(f"stopping after epoch {epoch + 1}: another would pass the "
                          f"{budget_s:.0f}s budget", flush=True)
                self.model.stop_training = True

    return BudgetedCosine()


def _phase_end(seconds: float | None, epochs: int):  # noqa: ANN202 - returns a Keras callback
    """Ends a `fit` call after the first epoch that reaches `seconds` of it (or, without a time,
    after `epochs` epochs): the switch from the low-resolution phase to full resolution."""
    import keras

    class PhaseEnd(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):  # noqa: ANN001, ANN202
            self.start, self.epochs = time.monotonic(), 0

        def on_epoch_end(self, epoch, logs=None):  # noqa: ANN001, ANN202
            self.epochs += 1
            if (time.monotonic() - self.start >= seconds) if seconds else self.epochs >= epochs:
                self.model.stop_training = True

    return PhaseEnd()


def train_model(opts: TrainOptions) -> Path:
    """Train, calibrate, save `<name>.weights.h5` + card; returns the weights path."""
    t0 = time.monotonic()
    loaded = load_folders(opts.folders, opts.input_size)  # forks workers: before TF starts threads
    images, labels = loaded.images, loaded.labels
    masks = loaded.masks if loaded.masks is not None and opts.lesion_weight > 0 else None
    tr, va = stratified_split(labels, opts.val_fraction, opts.seed)
    if len(va) == 0:
        raise ValueError("the validation split is empty: add images or raise --val-fraction")
    print(f"data: {len(tr)} train, {len(va)} validation images at {opts.input_size}px, "
          f"lesion masks: {'yes' if masks is not None else 'no'} "
          f"(loaded in {time.monotonic() - t0:.0f}s)", flush=True)

    import keras
    import tensorflow as tf

    from research.metrics import classification_summary, fit_temperature
    from worker.model import ModelConfig, build_model, save_model_files
    from worker.model.card import sha256_file

    named = {"version": opts.version} if opts.version else {}
    config = (ModelConfig.tiny(name=opts.name, input_size=opts.input_size, **named) if opts.tiny
              else ModelConfig(name=opts.name, input_size=opts.input_size, **named))
    keras.utils.set_random_seed(opts.seed)
    # Without masks the lesion head gets all-zero targets at zero weight: one code path.
    mask_tr = masks[tr] if masks is not None else np.zeros_like(images[tr])
    low_res = opts.low_res_share > 0 and opts.low_res_size < opts.input_size
    if low_res and opts.low_res_size % config.downsampling:
        raise ValueError(f"low_res_size {opts.low_res_size} must be a multiple of {config.downsampling}")

    # The arrays go into TensorFlow once; each phase maps its own augmentation over the batches.
    batches = (tf.data.Dataset.from_tensor_slices((images[tr], mask_tr, labels[tr]))
               .shuffle(len(tr), seed=opts.seed, reshuffle_each_iteration=True)
               .batch(opts.batch_size, drop_remainder=len(tr) >= opts.batch_size))

    def train_ds(size: int | None):  # noqa: ANN202 - a tf.data pipeline at one image size
        return batches.map(_augmenter(config.downsampling, size), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)

    x_val = images[va].astype(np.float32)[..., np.newaxis] / 255.0
    y_val = labels[va]
    m_val = lesion_targets(masks[va] if masks is not None else np.zeros_like(images[va]),
                           y_val, config.cam_resolution)

    precision = resolve_precision(opts.precision)
    if precision == "bfloat16":  # mixed: bfloat16 compute, float32 variables and logits
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(config, any_size=low_res)
    finally:
        keras.mixed_precision.set_global_policy("float32")  # layers keep the policy they were built with
    if opts.init_from is not None:
        from worker.model import inject_weights

        inject_weights(model, opts.init_from)  # a warm restart: a new LR cycle from these weights
    trainer = training_model(model, config.cam_layer)
    schedule = _budgeted_cosine(opts.learning_rate, max(1, len(batches)), opts.epochs, opts.time_budget_s)
    trainer.compile(optimizer=keras.optimizers.AdamW(opts.learning_rate * 0.1, weight_decay=1e-4),
                    loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          "lesion": lesion_loss},
                    loss_weights={"logits": 1.0, "lesion": opts.lesion_weight if masks is not None else 0.0},
                    metrics={"logits": ["accuracy"]})
    progress = sys.stdout.isatty() if opts.progress is None else opts.progress
    t_fit = time.monotonic()
    history: dict[str, list[float]] = {}

    def fit(size: int | None, callback: Any) -> int:
        """One phase: epochs on from where the last phase stopped; returns how many it ran.
        Validation is always at the serving size."""
        fitted = trainer.fit(train_ds(size), validation_data=(x_val, {"logits": y_val, "lesion": m_val}),
                             initial_epoch=len(history.get("loss", [])), epochs=opts.epochs,
                             callbacks=[schedule, callback], shuffle=False, verbose=1 if progress else 2)
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(values)
        return len(fitted.history.get("loss", []))

    epochs_low_res = 0
    if low_res:
        print(f"progressive resizing: training at {opts.low_res_size}px, then {opts.input_size}px", flush=True)
        share_s = opts.time_budget_s * opts.low_res_share if opts.time_budget_s else None
        epochs_low_res = fit(opts.low_res_size,
                             _phase_end(share_s, max(1, round(opts.epochs * opts.low_res_share))))
    if not schedule.finished and epochs_low_res < opts.epochs:
        if low_res:
            print(f"progressive resizing: {opts.input_size}px from epoch {epochs_low_res + 1}", flush=True)
        # Early stopping watches the full-size phase only: a network trained on small images
        # scores worse at the serving size until it has trained there, which would otherwise
        # end the run in its first phase.
        fit(None, keras.callbacks.EarlyStopping(monitor="val_logits_loss", mode="min",
                                                patience=opts.patience, restore_best_weights=True))
    fit_s = time.monotonic() - t_fit

    if precision != "float32" or low_res:  # calibrate and save the network exactly as serving builds it
        served = build_model(config)
        served.set_weights(model.get_weights())  # the variables were float32 all along
        model = served
    from worker.model.gradcam import make_logits

    served_logits = make_logits(model, mirror=opts.mirror)  # T is fitted on what serving computes
    val_logits = np.concatenate([served_logits(x_val[s:s + 128]).numpy() for s in range(0, len(x_val), 128)])
    temperature = fit_temperature(val_logits, y_val)
    val_metrics = classification_summary(val_logits, y_val, config.classes, temperature)
    training = {
        **_data_record(opts.folders),
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
        "lesion_supervision": (f"auxiliary 1x1-conv lesion maps (one per tumour kind) on {config.cam_layer}, class-balanced BCE, "
                               f"weight {opts.lesion_weight:g} (training only)") if masks is not None else None,
        "train_seconds": round(fit_s, 1),
        "initial_weights": None if opts.init_from is None else {
            "file": Path(opts.init_from).name, "sha256": sha256_file(opts.init_from)},
        "progressive_resizing": {"low_res_size": opts.low_res_size, "share": opts.low_res_share,
                                 "epochs_at_low_res": epochs_low_res} if low_res else None,
        "history": {k: [round(float(v), 4) for v in vals] for k, vals in history.items()},
    }
    metrics = {"validation": {k: val_metrics[k] for k in
                              ("n", "accuracy", "macro_f1", "ece_before_t", "ece_after_t",
                               "nll_before_t", "nll_after_t")}}
    path = save_model_files(model, config, opts.out, metrics=metrics, training=training,
                            temperature=temperature, mirror=opts.mirror)
    print(f"validation accuracy {val_metrics['accuracy']:.4f}, T={temperature:.3f}, "
          f"ECE {val_metrics['ece_before_t']:.4f} -> {val_metrics['ece_after_t']:.4f}; "
          f"trained {fit_s:.0f}s; saved {path}", flush=True)
    return path
