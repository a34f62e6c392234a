"""Real head anatomy for the synthetic generator: the Colin27 T1 head (mricron-data).

The T1 volume and its brain-extracted twin are turned once into a tissue label volume
(thresholds + brain mask + morphology) and cached on disk, keyed by a hash of the
source files and of this module's ``ANATOMY_VERSION``, so worker processes only
memory-map it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

TEMPLATE_DIR = Path("/usr/share/mricron/templates")
HEAD_FILE = TEMPLATE_DIR / "ch2.nii.gz"
BRAIN_FILE = TEMPLATE_DIR / "ch2bet.nii.gz"
ANATOMY_VERSION = "2"

# Tissue labels. Fluid labels (CSF, VENT, EXTCSF, EYE) share one intensity family when
# rendered but are kept apart because lesions and bright structures need to know them.
BG, CSF, VENT, GM, WM, EXTCSF, BONE, SOFT, FAT, EYE, VESSEL = range(11)
N_TISSUES = 11
TISSUE_NAMES = ("bg", "csf", "ventricle", "gm", "wm", "extcsf", "bone", "soft", "fat", "eye", "vessel")

# Landmarks in voxel indices (x: right->left? no: RAS index, y: posterior->anterior,
# z: inferior->superior), found by inspecting the template.
SELLA = np.array([90.0, 129.0, 40.0])
MIDLINE_X = 90.0
# The template ends in a flat cut at z=0 (neck). Sampling clamps z above this so the
# neck is extruded downwards instead of ending in a straight edge.
NECK_CLAMP_Z = 8.0


@dataclass(frozen=True)
class Anatomy:
    labels: np.ndarray  # uint8 (181, 217, 181) tissue labels
    t1: np.ndarray  # uint8 (181, 217, 181) original T1, for within-tissue texture

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.labels.shape  # type: ignore[return-value]


def cache_dir() -> Path:
    """Where derived volumes live (``$XDG_CACHE_HOME/neuroscan`` or ``~/.cache/neuroscan``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neuroscan" / "synth"


def _source_hash() -> str:
    h = hashlib.sha256(ANATOMY_VERSION.encode())
    for f in (HEAD_FILE, BRAIN_FILE):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _ball(r: int) -> np.ndarray:
    g = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return (g**2).sum(0) <= r * r


def derive_labels(head: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Tissue labels from the T1 head and the brain-extracted T1 (both 0..255 scale)."""
    lab = np.zeros(head.shape, np.uint8)
    head_mask = ndi.binary_closing(head > 22, _ball(3), iterations=2)
    head_mask = ndi.binary_fill_holes(head_mask)
    head_mask = ndi.binary_opening(head_mask, _ball(2))
    bmask = brain > 0
    # Inside the brain: CSF < GM < WM by T1 intensity (thresholds read off the histogram).
    lab[bmask] = GM
    lab[bmask & (brain < 58)] = CSF
    lab[bmask & (brain >= 98)] = WM
    # Ventricles: CSF deep inside the brain (far from the outer brain surface).
    depth = ndi.distance_transform_edt(ndi.binary_fill_holes(bmask))
    vent = (lab == CSF) & (depth > 11)
    vent = ndi.binary_opening(vent, _ball(1))
    comp, n = ndi.label(vent)
    if n:
        sizes = ndi.sum(vent, comp, range(1, n + 1))
        keep = np.isin(comp, 1 + np.flatnonzero(sizes > 150))
        vent = ndi.binary_dilation(keep, _ball(1)) & (lab == CSF)
    lab[vent] = VENT
    # Outside the brain but inside the head.
    outside = head_mask & ~bmask
    lab[outside] = SOFT
    dark = outside & (head < 45)
    lab[dark] = BONE
    lab[outside & (head >= 128)] = FAT
    # Dark voxels hugging the brain are CSF, not bone (matters for T2/FLAIR looks).
    near_brain = ndi.binary_dilation(bmask, _ball(2), iterations=2)
    lab[dark & near_brain] = EXTCSF
    # Eyes: big round dark blobs in the orbits (vitreous).
    orbit = np.zeros_like(dark)
    orbit[45:82, 165:217, 22:54] = True
    orbit[98:135, 165:217, 22:54] = True
    eyes = ndi.binary_opening(dark & orbit, _ball(4))
    comp, n = ndi.label(eyes)
    if n:
        sizes = ndi.sum(eyes, comp, range(1, n + 1))
        keep = np.isin(comp, 1 + np.flatnonzero(sizes > 1500))
        lab[ndi.binary_dilation(keep, _ball(2)) & outside & (head < 70)] = EYE
    return lab


def _load_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def build_anatomy(cache: Path | None = None) -> Path:
    """Derive and cache the label and T1 volumes; return the cache folder (idempotent)."""
    folder = (cache or cache_dir()) / f"colin27-{_source_hash()}"
    if (folder / "labels.npy").exists() and (folder / "t1.npy").exists():
        return folder
    head = _load_nifti(HEAD_FILE)
    brain = _load_nifti(BRAIN_FILE)
    labels = derive_labels(head, brain)
    folder.mkdir(parents=True, exist_ok=True)
    # Write under temporary names then rename: concurrent builders never see half a file.
    for name, arr in (("labels", labels), ("t1", np.clip(head, 0, 255).astype(np.uint8))):
        tmp = folder / f"{name}.{os.getpid()}.tmp.npy"
        np.save(tmp, arr)
        tmp.replace(folder / f"{name}.npy")
    return folder


@lru_cache(maxsize=2)
def load_anatomy(cache: Path | None = None) -> Anatomy:
    """The cached anatomy, memory-mapped (built on first use)."""
    folder = build_anatomy(cache)
    return Anatomy(
        labels=np.load(folder / "labels.npy", mmap_mode="r"),
        t1=np.load(folder / "t1.npy", mmap_mode="r"),
    )
