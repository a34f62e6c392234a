"""Tumours drawn into a slice, where each kind grows, with soft edges and mass effect.

Each lesion is a set of soft alpha layers (``roles``) that the renderer blends over the
tissue image with role-specific intensities. The lesion MASK is the tumour itself:
for glioma the enhancing rim + necrotic core (or the whole non-enhancing mass);
oedema and the meningioma's dural tail are EXCLUDED, consistently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .anatomy import BONE, CSF, EXTCSF, GM, MIDLINE_X, SELLA, VENT, WM
from .framing import smooth_field

ROLES = ("oedema", "nonenh", "enh", "necrosis", "menin", "pit")
BRAIN = (CSF, VENT, GM, WM)


@dataclass
class Lesion:
    kind: str
    center: tuple[float, float]  # (row, col) in pixels
    radius: float  # pixels
    push: float  # mass-effect strength, fraction of radius
    layers: list[tuple[str, np.ndarray]] = field(default_factory=list)
    mask: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def _sig(x: np.ndarray, width: float) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x / width, -30, 30)))).astype(np.float32)


def blob(rng: np.random.Generator, shape, center, radii, angle: float, rough: float) -> np.ndarray:
    """A smooth, irregular 'level' field: >0.5 inside. Low-frequency noise only, so the
    outline is lobulated, never star-like."""
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dr, dc = rr - center[0], cc - center[1]
    ca, sa = np.cos(angle), np.sin(angle)
    a = (ca * dr + sa * dc) / radii[0]
    b = (-sa * dr + ca * dc) / radii[1]
    base = np.exp(-0.693 * (a * a + b * b))  # 0.5 at the nominal radius
    cells = max(3, int(shape[0] / max(radii) * 0.9))
    noise = smooth_field(rng, shape, min(cells, 24))[0]
    return base * (1.0 + rough * noise)


def mass_effect(coords: np.ndarray, center, radius: float, push: float) -> np.ndarray:
    """Resample the 3-D sampling grid so tissue is pushed radially away from the lesion."""
    h, w = coords.shape[1:]
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
    dr, dc = rr - center[0], cc - center[1]
    r = np.sqrt(dr * dr + dc * dc) + 1e-3
    shift = push * radius * np.exp(-((r / (2.5 * radius)) ** 2))
    scale = np.maximum(r - shift, 0.0) / r
    src = np.stack([center[0] + dr * scale, center[1] + dc * scale])
    return np.stack([ndi.map_coordinates(c, src, order=1, mode="nearest") for c in coords])


def _pick(rng: np.random.Generator, mask: np.ndarray) -> tuple[int, int] | None:
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return None
    i = idx[rng.integers(idx.size)]
    return divmod(int(i), mask.shape[1])


def plan_glioma(rng, labels, mm_px) -> Lesion | None:
    """Intra-axial: centred in white matter, deep enough that the nominal tumour lies inside
    the parenchyma, anywhere in the slice's hemispheres (so low temporal-lobe gliomas are as
    common as high ones).

    Gliomas grow in and along white matter. Generator 1.1 also centred them in cortex, at
    0.6 radius from the brain surface: such a homogeneous mass against the dura is drawn the
    way a meningioma is, and the 1.2.0 model got 14-19% of gliomas with their centre less than
    one radius deep wrong, against 6% of those deeper than 1.3 radii (docs/model.md)."""
    brain = np.isin(labels, BRAIN)
    depth = ndi.distance_transform_edt(brain)
    radius = rng.uniform(8.0, 25.0) / mm_px
    radius = min(radius, max(depth.max() * 0.9, 4.0 / mm_px))
    # Since generator 1.3 a quarter are cortico-subcortical (centre half a radius deep):
    # real gliomas often reach the cortex (a peripheral temporal glioma was read as
    # meningioma on real slices). They are drawn as gliomas are: infiltrative, with oedema,
    # no dural tail; telling them from a meningioma is the model's job, not the generator's.
    site = "cortical" if rng.random() < 0.25 else "deep"
    floor = radius * (0.5 if site == "cortical" else 1.0)
    c = (_pick(rng, (labels == WM) & (depth > floor))
         or _pick(rng, np.isin(labels, (GM, WM)) & (depth > floor))
         or _pick(rng, np.isin(labels, (GM, WM))))
    if c is None:
        return None
    return Lesion("glioma", c, radius, rng.uniform(0.15, 0.55), info={"site": site})


def plan_meningioma(rng, labels, coords, mm_px) -> Lesion | None:
    """Extra-axial: a broad dural base on the convexity, the falx or the skull base."""
    brain = np.isin(labels, BRAIN)
    edge = brain & ~ndi.binary_erosion(brain, iterations=2)
    dura = ndi.binary_dilation(np.isin(labels, (EXTCSF, BONE)), iterations=3)
    cand = edge & dura
    # The falx sits in the interhemispheric fissure: a midline base on the brain's surface
    # there. (Generator 1.1 took any midline brain voxel, so "falx" meningiomas grew inside
    # the thalami and brainstem, looked intra-axial, and 15.5% of them were misread against
    # 6.8% of the others.)
    falx = cand & (np.abs(coords[0] - MIDLINE_X) < 3.0)
    site = "convexity"
    if rng.random() < 0.25 and falx.any():
        cand, site = falx, "falx"
    c = _pick(rng, cand)
    if c is None:
        return None
    radius = rng.uniform(8.0, 25.0) / mm_px
    radius = min(radius, max(ndi.distance_transform_edt(brain).max() * 1.2, 5.0 / mm_px))
    return Lesion("meningioma", c, radius, rng.uniform(0.35, 0.8), info={"base": c, "site": site})


def pituitary_geometry(rng) -> list[tuple[np.ndarray, float]]:
    """3-D spheres (centre voxel, radius mm): sellar part plus optional suprasellar lobe."""
    r1 = rng.uniform(6.0, 13.0)
    parts = [(SELLA + rng.normal(0, 1.0, 3), r1)]
    if rng.random() < 0.7:  # macroadenoma growing up through the diaphragma ("snowman")
        h = rng.uniform(6.0, 16.0)
        parts.append((SELLA + np.array([0, 1.0, h]), rng.uniform(0.6, 1.0) * r1))
    return parts


def pituitary_sections(coords: np.ndarray, parts, mm_px: float):
    """Circles where the slice cuts each sphere: [(row, col, radius_px)], maybe empty."""
    out = []
    for centre, r in parts:
        d = np.sqrt(((coords - centre[:, None, None].astype(np.float32)) ** 2).sum(0))
        i = int(np.argmin(d))
        dmin = float(d.flat[i])
        if dmin < r - 2.5:
            row, col = divmod(i, coords.shape[2])
            out.append((row, col, np.sqrt(r * r - dmin * dmin) / mm_px))
    return out


def draw(rng: np.random.Generator, les: Lesion, labels: np.ndarray, sections=None) -> Lesion:
    """Fill in the soft layers and the mask of a planned lesion (after mass effect)."""
    brain = np.isin(labels, BRAIN)
    if les.kind == "glioma":
        _draw_glioma(rng, les, labels, brain)
    elif les.kind == "meningioma":
        _draw_meningioma(rng, les, brain)
    else:
        _draw_pituitary(rng, les, labels.shape, sections or [])
    return les


def _draw_glioma(rng: np.random.Generator, les: Lesion, labels: np.ndarray, brain: np.ndarray) -> None:
    """Intra-axial and infiltrative: a lobulated body in an oedema halo that follows white
    matter; low grade (non-enhancing), patchy, or ring-enhancing around a necrotic core."""
    shape, R = labels.shape, les.radius
    grade = rng.choice(["low", "patchy", "ring"], p=[0.3, 0.25, 0.45])
    radii = (R * rng.uniform(0.75, 1.2), R * rng.uniform(0.75, 1.2))
    f = blob(rng, shape, les.center, radii, rng.uniform(0, np.pi), rng.uniform(0.15, 0.4))
    body = _sig(f - 0.5, 0.05) * ndi.gaussian_filter(brain.astype(np.float32), 1.0)
    k = rng.uniform(1.3, 2.3) if grade != "low" else rng.uniform(1.0, 1.5)
    fo = blob(rng, shape, les.center, (radii[0] * k, radii[1] * k), rng.uniform(0, np.pi), 0.45)
    wm = ndi.gaussian_filter((labels == WM).astype(np.float32), 1.5)
    oed = _sig(fo - 0.5, 0.08) * (0.35 + 0.65 * wm) * brain
    les.layers.append(("oedema", oed * rng.uniform(0.5, 1.0)))
    if grade == "low":
        les.layers.append(("nonenh", body))
    else:
        les.layers.append(("enh", body))
        core = _sig(f - 0.5 - rng.uniform(0.1, 0.3), 0.04)
        if grade == "patchy":  # enhancement only in patches, rest non-enhancing
            les.layers.append(("nonenh", body * _sig(smooth_field(rng, shape, 12)[0], 0.3)))
            core *= rng.uniform(0.0, 0.7)
        les.layers.append(("necrosis", core))
    les.mask = body > 0.5
    les.info["grade"] = str(grade)


def _draw_meningioma(rng: np.random.Generator, les: Lesion, brain: np.ndarray) -> None:
    """Extra-axial and homogeneous: a body on its dural base, bulging inwards along the
    brain's surface normal, with a dural tail (not part of the mask)."""
    shape, R = brain.shape, les.radius
    soft = max(R * 0.06, 0.8)
    gy, gx = np.gradient(ndi.gaussian_filter(brain.astype(np.float32), 3.0))
    n = np.array([gy[les.center], gx[les.center]])
    n = n / (np.linalg.norm(n) + 1e-6)
    c = (les.center[0] + n[0] * R * 0.45, les.center[1] + n[1] * R * 0.45)
    angle = np.arctan2(n[1], n[0])  # major axis along the dura (tangent), minor along n
    radii = (R * rng.uniform(0.65, 0.95), R * rng.uniform(1.0, 1.35))
    f = blob(rng, shape, c, radii, angle, rng.uniform(0.05, 0.15))
    cranial = ndi.binary_fill_holes(ndi.binary_dilation(brain, iterations=2))
    body = _sig(f - 0.5, 0.04) * ndi.gaussian_filter(cranial.astype(np.float32), soft)
    les.layers.append(("menin", body))
    # Dural tail: thin enhancing dura tapering away from the base along the brain edge.
    edge = ndi.binary_dilation(brain, iterations=1) & ~ndi.binary_erosion(brain)
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    dist = np.hypot(rr - les.center[0], cc - les.center[1])
    tail = edge * np.clip(1.0 - dist / (R * rng.uniform(1.6, 2.4)), 0, 1)
    les.layers.append(("menin", ndi.gaussian_filter(tail.astype(np.float32), 0.7) * rng.uniform(0.4, 1.0)))
    les.mask = body > 0.5


def _draw_pituitary(rng: np.random.Generator, les: Lesion, shape: tuple[int, int], sections) -> None:
    """Sellar/suprasellar: the union of the slice's circular sections of the 3-D spheres
    (`pituitary_sections`), sometimes with a cystic or haemorrhagic part."""
    f = np.zeros(shape, np.float32)
    for row, col, rad in sections:
        squash = rng.uniform(0.8, 1.1)
        f = np.maximum(f, blob(rng, shape, (row, col), (rad * squash, rad), 0.0, 0.1))
    body = _sig(f - 0.5, 0.05)
    les.layers.append(("pit", body))
    if rng.random() < 0.3:  # cystic / haemorrhagic part
        les.layers.append(("necrosis", body * _sig(smooth_field(rng, shape, 16)[0] - 0.8, 0.2)))
    les.mask = body > 0.5
