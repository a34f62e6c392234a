"""A training folder in the Kaggle layout -> preprocessed arrays, masks and a stratified split.

Every image goes through `shared.preprocessing.preprocess`, the function serving uses; its
lesion mask (`research.layout.mask_path`) gets the same crop,
pad and resize, so it stays on the lesion.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from research.layout import list_folder, mask_path
from shared.imaging import decode_image
from shared.preprocessing import PREPROCESSING_ID, preprocess, to_model_frame
from shared.settings import get_settings


class Loaded(NamedTuple):
    images: np.ndarray  # uint8 (N, S, S): preprocess() output scaled to 0..255
    masks: np.ndarray | None  # uint8 (N, S, S) lesion masks in the model frame, when the folder has masks/
    labels: np.ndarray
    files: list[Path]


def _load_one(job: tuple[Path, Path | None, int]) -> tuple[np.ndarray, np.ndarray | None]:
    path, mpath, size = job
    pixels = decode_image(path.read_bytes()).pixels
    prepared = preprocess(pixels, size)
    image = np.round(prepared.image[..., 0] * 255.0).astype(np.uint8)  # 8-bit: 4x less RAM
    if mpath is None:
        return image, None
    mask = np.asarray(Image.open(mpath).convert("L"), dtype=np.float32) / 255.0 if mpath.is_file() \
        else np.zeros(pixels.shape[:2], np.float32)
    # The same crop, pad and resize as the image, so the mask stays on the lesion.
    framed = to_model_frame(mask, prepared.box, size)
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


def _manifest_info(data: Path) -> dict[str, Any]:
    path = Path(data) / "manifest.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    return {k: m.get(k) for k in ("generator", "version", "params")}


def data_record(folders: tuple[Path, ...]) -> dict[str, Any]:
    """The card's record of what was trained on: one folder as before, several as lists."""
    if len(folders) == 1:
        return {"data": str(folders[0]), "data_source": _manifest_info(folders[0])}
    return {"data": [str(f) for f in folders], "data_source": [_manifest_info(f) for f in folders]}
