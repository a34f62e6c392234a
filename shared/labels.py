"""The four diagnostic classes, in the one order used everywhere.

The names are the folder names of the public Kaggle "Brain Tumor MRI" dataset, so
`neuroscan train --data Training/` works on it as downloaded.
"""

from typing import Final

CLASSES: Final[tuple[str, ...]] = ("glioma", "meningioma", "notumor", "pituitary")
TUMOUR_CLASSES: Final[frozenset[str]] = frozenset({"glioma", "meningioma", "pituitary"})

DISPLAY_NAMES: Final[dict[str, str]] = {
    "glioma": "Glioma",
    "meningioma": "Meningioma",
    "notumor": "No tumour",
    "pituitary": "Pituitary tumour",
}


def class_index(label: str) -> int:
    """Index of `label` in CLASSES; a clear error for anything else."""
    try:
        return CLASSES.index(label)
    except ValueError:
        raise ValueError(f"unknown class {label!r}; expected one of {', '.join(CLASSES)}") from None
