"""The dataset folder layout that training, evaluation and the generator share.

The public Kaggle "Brain Tumor MRI" layout, data/<class>/<image>, with one class folder per
entry of `shared.labels.CLASSES`; the generator (and any annotated dataset) adds each image's
lesion mask as data/masks/<class>/<stem>.png.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.labels import CLASSES

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


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


def mask_path(data: Path, image_path: Path) -> Path:
    """Where an image's lesion mask lives: data/masks/<class>/<stem>.png (`data` may be
    relative, as in the generator's manifest)."""
    return Path(data) / "masks" / Path(image_path).parent.name / f"{Path(image_path).stem}.png"
