"""Per-slice anatomical variety and bright non-tumour structures, drawn into the label map.

Every class gets the same bright things (vessels, dural sinuses, choroid plexus, the
normal pituitary gland) so that "bright blob" never means "tumour".
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .anatomy import CSF, EXTCSF, GM, SELLA, VENT, VESSEL, WM
from .framing import smooth_field

_BRAIN = (CSF, VENT, GM, WM)


def vary_anatomy(rng: np.random.Generator, labels: np.ndarray, mm_px: float) -> tuple[np.ndarray, dict]:
    """Another brain on the same template: ventricles from slit-like to hydrocephalic, and
    sulci widened by atrophy, by random amounts drawn the same way for every class.

    Generator 1.2 only ever enlarged the ventricles by up to ~3 mm, so a real normal brain
    with large ventricles fell outside everything the model had seen and was read as a
    glioma (found when reviewing real slices). Since 1.3 a fifth of the slices have slit
    ventricles, a quarter large ones (4-12 mm of dilation: the frontal horns balloon)."""
    labels = labels.copy()
    vent = labels == VENT
    u = rng.random()
    grade = "slit" if u < 0.2 else "large" if u > 0.75 else "normal"
    if vent.any():
        if grade == "slit":
            n = max(1, int(round(rng.uniform(0.5, 2.0) / max(mm_px, 0.3))))
            kept = ndi.binary_erosion(vent, iterations=n)
            labels[vent & ~kept] = WM
        else:
            mm = rng.uniform(4.0, 12.0) if grade == "large" else rng.uniform(0, 4.0) ** 1.3 / 2
            n = int(round(mm / max(mm_px, 0.3)))
            if n:
                grown = ndi.binary_dilation(vent, iterations=n) & np.isin(labels, (GM, WM, CSF))
                labels[grown] = VENT
    atrophy = rng.random() < 0.5
    if atrophy:
        csf = labels == CSF
        iters = int(rng.integers(1, 4))
        labels[ndi.binary_dilation(csf, iterations=iters) & (labels == GM)] = CSF
    return labels, {"ventricles": grade, "atrophy": bool(atrophy)}


def periventricular_band(rng: np.random.Generator, labels: np.ndarray, mm_px: float) -> np.ndarray:
    """Soft weight (0..1) of normal periventricular signal: a thin band of white matter along
    the ventricles, thicker at the horns, plus a few small punctate foci in white matter.

    On T2 and FLAIR these are bright in healthy and ageing brains alike; a model that never
    saw them reads any bright periventricular rim as oedema, i.e. as glioma."""
    vent = labels == VENT
    wm = labels == WM
    out = np.zeros(labels.shape, np.float32)
    if vent.any():
        d = ndi.distance_transform_edt(~vent) * mm_px
        width = rng.uniform(1.5, 5.0) * (1.0 + 0.6 * smooth_field(rng, labels.shape, 6)[0])
        out = np.clip(1.0 - d / np.maximum(width, 0.5), 0.0, 1.0) * wm
    idx = np.flatnonzero(wm)
    if idx.size:
        dots = np.zeros(labels.shape, bool)
        dots.flat[idx[rng.integers(idx.size, size=int(rng.integers(0, 8)))]] = True
        dots = ndi.binary_dilation(dots, iterations=max(1, int(rng.uniform(1.0, 3.0) / mm_px)))
        out = np.maximum(out, ndi.gaussian_filter(dots.astype(np.float32), 0.8) * wm)
    return out.astype(np.float32)


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
