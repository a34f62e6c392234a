"""Views and framing: which plane and level to cut, and the 2-D sampling grid into the head.

The plane and level come from ONE distribution shared by all classes (a mixture of a band
around the sella and the full brain range), so slice level is no shortcut to the label.
Per image we deform only a 2-D grid of 3-D sample points (affine, tilt, elastic warp)
instead of warping the whole volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from .anatomy import BG, NECK_CLAMP_Z, SELLA, Anatomy

PLANES = ("axial", "coronal", "sagittal")
PLANE_P = (0.4, 0.3, 0.3)
NORMAL_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
# In-plane (u = image columns, v = image rows pointing DOWN) unit vectors in voxel space.
_UV = {
    "axial": (np.array([1.0, 0, 0]), np.array([0, -1.0, 0])),  # anterior at the top
    "coronal": (np.array([1.0, 0, 0]), np.array([0, 0, -1.0])),
    "sagittal": (np.array([0, -1.0, 0]), np.array([0, 0, -1.0])),
}
# Offsets (mm) from the sella along the plane normal: a band through the sellar region
# and the full range over which brain is seen. Half of all draws fall in the band.
SELLA_BAND = {"axial": (-10.0, 24.0), "coronal": (-14.0, 14.0), "sagittal": (-12.0, 12.0)}
FULL_RANGE = {"axial": (-28.0, 108.0), "coronal": (-92.0, 58.0), "sagittal": (-62.0, 62.0)}
BAND_WEIGHT = 0.5


@dataclass(frozen=True)
class View:
    plane: str
    offset_mm: float  # position along the plane normal, relative to the sella

    @property
    def slice_index(self) -> float:
        return float(SELLA[NORMAL_AXIS[self.plane]] + self.offset_mm)


def sample_view(rng: np.random.Generator) -> View:
    """Plane and level from the class-independent distribution."""
    plane = PLANES[rng.choice(3, p=PLANE_P)]
    lo, hi = SELLA_BAND[plane] if rng.random() < BAND_WEIGHT else FULL_RANGE[plane]
    return View(plane, float(rng.uniform(lo, hi)))


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A small random 3-D rotation (for out-of-plane tilt)."""
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@lru_cache(maxsize=64)
def _upsampler(n_out: int, cells: int) -> np.ndarray:
    """(n_out, cells) matrix of Gaussian weights: a smooth interpolant."""
    pos = (np.arange(n_out) + 0.5) / n_out * cells - 0.5
    w = np.exp(-0.5 * ((pos[:, None] - np.arange(cells)[None, :]) / 0.8) ** 2)
    # Unit L2 rows: each output value of A X B^T then has unit variance for white X.
    return (w / np.sqrt((w * w).sum(1, keepdims=True))).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int, n: int = 1) -> np.ndarray:
    """n smooth random fields (unit std) on a cells x cells grid, upsampled separably
    (two small products: far cheaper than a spline zoom)."""
    coarse = rng.standard_normal((n, cells, cells)).astype(np.float32)
    a, b = _upsampler(shape[0], cells), _upsampler(shape[1], cells)
    # einsum's own loops, not BLAS: OpenBLAS threads on these thin products cost ~10 ms
    # per call on a busy machine, more than the arithmetic.
    tmp = np.einsum("ij,njk->nik", a, coarse)
    return np.einsum("nik,lk->nil", tmp, b)


def sample_points(anat: Anatomy, pts: np.ndarray, order: int = 0) -> np.ndarray:
    """Sample a volume at 3-D points (3, ...), extruding the neck instead of cutting it."""
    pts = pts.copy()
    pts[2] = np.maximum(pts[2], NECK_CLAMP_Z)
    vol = anat.labels if order == 0 else anat.t1
    return ndi.map_coordinates(vol, pts, order=order, mode="constant", cval=0, prefilter=False)


@dataclass
class SamplingGrid:
    """The sampling grid of one image: 3-D voxel coordinates for every output pixel."""

    coords: np.ndarray  # (3, size, size) float32
    mm_per_px: float
    center: np.ndarray  # 3-D point at the image centre
    u: np.ndarray
    v: np.ndarray


def _head_extent(anat: Anatomy, view: View, u: np.ndarray, v: np.ndarray, origin: np.ndarray):
    """Bounding box (u0, u1, v0, v1 in mm) of the head in the (untilted) slice, coarsely."""
    t = np.arange(-120.0, 121.0, 3.0)
    uu, vv = np.meshgrid(t, t)
    pts = origin[:, None, None] + u[:, None, None] * uu + v[:, None, None] * vv
    head = sample_points(anat, pts) != BG
    if view.plane != "axial":  # ignore the extruded neck below the template
        head &= pts[2] > NECK_CLAMP_Z
    if not head.any():
        return -80.0, 80.0, -80.0, 80.0
    ys, xs = np.nonzero(head)
    return t[xs.min()], t[xs.max()], t[ys.min()], t[ys.max()]


def make_sampling_grid(rng: np.random.Generator, anat: Anatomy, view: View,
                       size: int) -> SamplingGrid:
    """Clinical-looking framing: the head fills 88-98% of the image (55-88% in a quarter of
    the slices), tilt, rotation, flips, aspect ratio, and a smooth elastic warp of the grid."""
    u, v = (a.copy() for a in _UV[view.plane])
    axis = NORMAL_AXIS[view.plane]
    origin = np.array([90.0, 108.0, 90.0])
    origin[axis] = view.slice_index
    u0, u1, v0, v1 = _head_extent(anat, view, u, v, origin)
    width, height = u1 - u0, v1 - v0
    cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
    # Mostly tight clinical framing; since generator 1.3 a quarter of the slices are wide
    # field-of-view exports with the head small in the image.
    fill = rng.uniform(0.88, 0.98) if rng.random() < 0.75 else rng.uniform(0.55, 0.88)
    if view.plane == "axial":
        fov = max(width, height) / fill
    else:
        # Coronal/sagittal: fit the width, hang the image from the top of the head and let
        # face and neck run off the bottom edge (never further than just below the cut).
        fov = width / fill
        top = v0 - rng.uniform(0.03, 0.09) * fov  # v points down: v0 is the top of the head
        # v = origin_z - z, so the bottom edge (top + fov) must stay above z = -4.
        fov = min(fov, origin[2] + 4.0 - top)
        cv = top + fov / 2
    cu += rng.normal(0, 0.02) * fov
    cv += rng.normal(0, 0.02) * fov
    center = origin + u * cu + v * cv
    # Anisotropic head shape / pixel aspect, in-plane rotation, tilt and flips.
    aspect = np.exp(rng.normal(0, 0.06))
    theta = np.deg2rad(rng.normal(0, 4.0))
    rot = _rotation(rng, 6.0)
    u, v = rot @ u, rot @ v
    cu_, su = np.cos(theta), np.sin(theta)
    u, v = cu_ * u + su * v, -su * u + cu_ * v
    if rng.random() < 0.5:
        u = -u
    mm = fov / size
    t = (np.arange(size, dtype=np.float32) - (size - 1) / 2) * mm
    gu, gv = np.meshgrid(t * aspect, t / aspect)
    # Elastic warp: coarse and finer smooth displacement fields (mm) in 3-D.
    disp = smooth_field(rng, (size, size), 5, 3) * rng.uniform(1.0, 4.0)
    disp += smooth_field(rng, (size, size), 10, 3) * rng.uniform(0.3, 1.2)
    coords = (
        center[:, None, None].astype(np.float32)
        + u[:, None, None].astype(np.float32) * gu
        + v[:, None, None].astype(np.float32) * gv
        + disp
    )
    return SamplingGrid(coords.astype(np.float32), float(mm), center, u, v)
