"""Per-slice anatomical variety and bright non-tumour structures, drawn into the label map.

Every class gets the same bright things (vessels, dural sinuses, choroid plexus, the
normal pituitary gland) so that "bright blob" never means "tumour".
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .anatomy import CSF, EXTCSF, GM, SELLA, VENT, VESSEL, WM

_BRAIN = (CSF, VENT, GM, WM)


def vary_anatomy(rng: np.random.Generator, labels: np.ndarray, mm_px: float) -> np.ndarray:
    """Enlarge ventricles and widen sulci (atrophy) by a random amount."""
    labels = labels.copy()
    vent = labels == VENT
    n_v = int(round(rng.uniform(0, 4.0) ** 1.3 / max(mm_px, 0.3) / 2))
    if n_v and vent.any():
        grown = ndi.binary_dilation(vent, iterations=n_v) & np.isin(labels, (GM, WM, CSF))
        labels[grown] = VENT
    if rng.random() < 0.5:
        csf = labels == CSF
        iters = int(rng.integers(1, 3))
        labels[ndi.binary_dilation(csf, iterations=iters) & (labels == GM)] = CSF
    return labels


def _curve(rng: np.random.Generator, start, length: int, step: float) -> np.ndarray:
    """A smooth random walk (a vessel's course), as (n, 2) points."""
    ang = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.12, length))
    pts = np.cumsum(np.stack([np.sin(ang), np.cos(ang)], 1) * step, 0) + np.asarray(start)
    return pts


def _stamp(mask: np.ndarray, pts: np.ndarray) -> None:
    r = np.clip(np.round(pts[:, 0]).astype(int), 0, mask.shape[0] - 1)
    c = np.clip(np.round(pts[:, 1]).astype(int), 0, mask.shape[1] - 1)
    mask[r, c] = True


def add_bright_structures(
    rng: np.random.Generator, labels: np.ndarray, coords: np.ndarray, mm_px: float, kind: str
) -> np.ndarray:
    """Vessels in sulci, choroid plexus in ventricles, a sinus on the dura and the normal
    pituitary gland at the sella (except where a pituitary tumour replaces it)."""
    labels = labels.copy()
    out = np.zeros(labels.shape, bool)
    sulcal = np.flatnonzero(np.isin(labels, (CSF, EXTCSF)))
    for _ in range(int(rng.integers(2, 10)) if sulcal.size else 0):
        start = divmod(int(sulcal[rng.integers(sulcal.size)]), labels.shape[1])
        _stamp(out, _curve(rng, start, int(rng.integers(10, 60)), 0.7))
    # One thicker vessel (e.g. a cortical vein or the MCA); the draw comes first, as before.
    if rng.random() < 0.6 and sulcal.size:
        start = divmod(int(sulcal[rng.integers(sulcal.size)]), labels.shape[1])
        thick = np.zeros_like(out)
        _stamp(thick, _curve(rng, start, int(rng.integers(15, 50)), 0.8))
        out |= ndi.binary_dilation(thick, iterations=1)
    vent = labels == VENT
    if vent.sum() > 30 and rng.random() < 0.8:  # choroid plexus: small lobulated clumps
        idx = np.flatnonzero(vent)
        for _ in range(int(rng.integers(1, 4))):
            seed = np.zeros_like(out)
            seed.flat[idx[rng.integers(idx.size)]] = True
            blob = ndi.binary_dilation(seed, iterations=int(rng.integers(1, 4)))
            out |= blob & ndi.binary_dilation(vent, iterations=1)
    brain = np.isin(labels, _BRAIN)
    rim = ndi.binary_dilation(brain, iterations=2) & ~brain
    if rim.any() and rng.random() < 0.7:  # a dural sinus: a small triangle-ish bright spot
        idx = np.flatnonzero(rim)
        seed = np.zeros_like(out)
        seed.flat[idx[rng.integers(idx.size)]] = True
        out |= ndi.binary_dilation(seed, iterations=max(1, int(2.5 / mm_px))) & rim
    if kind != "pituitary":  # normal gland, 3-4 mm, enhances avidly
        d = np.sqrt(((coords - SELLA[:, None, None].astype(np.float32)) ** 2).sum(0))
        out |= d < rng.uniform(3.0, 5.0)
    labels[out & (labels != 0)] = VESSEL
    return labels
