"""The driver: one sample from an rng, and a whole dataset in the Kaggle folder layout."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
from PIL import Image

from research.layout import mask_path
from shared.labels import CLASSES

from . import lesions as L
from .anatomy import load_anatomy
from .framing import make_sampling_grid, sample_points, sample_view
from .render import blend_lesion, degrade, jpeg, render_tissues, sample_contrast
from .structures import add_bright_structures, periventricular_band, vary_anatomy

PHANTOMS = ("glioma", "meningioma")
GENERATOR_VERSION = "1.3"
# A slice is labelled with a tumour only when the tumour is visible in it, as in the clinical
# sets we target, where the chosen slice shows the lesion. Below these floors the label is
# noise: on generator 1.0 data the model got glioma and meningioma sections under 200 mm^2
# right 1 time in 4, whatever their contrast. Pituitary masses are small but sit in one
# place, so a smaller floor keeps microadenoma-sized sections.
MIN_LESION_MM2 = {"glioma": 200.0, "meningioma": 200.0, "pituitary": 30.0}
# Mean absolute change the lesion makes to the tissue image inside its mask (intensities
# 0..1, before noise): below it the tumour matches its surroundings.
MIN_LESION_CONTRAST = 0.08
_MAX_TRIES = 60


def _grid_with_lesion(rng, anat, label, size):
    """Draw views from the shared distribution until the lesion (if any) can be placed.
    For pituitary this is the shared distribution conditioned on cutting the tumour."""
    parts = L.pituitary_geometry(rng) if label == "pituitary" else None
    for _ in range(_MAX_TRIES):
        view = sample_view(rng)
        grid = make_sampling_grid(rng, anat, view, size)
        labels = sample_points(anat, grid.coords)
        les, sections = None, None
        if label == "glioma":
            les = L.plan_glioma(rng, labels, grid.mm_per_px)
        elif label == "meningioma":
            les = L.plan_meningioma(rng, labels, grid.coords, grid.mm_per_px)
        elif label == "pituitary":
            sections = L.pituitary_sections(grid.coords, parts, grid.mm_per_px)
            if sections:
                r, c, rad = max(sections, key=lambda s: s[2])
                les = L.Lesion("pituitary", (r, c), rad, rng.uniform(0.1, 0.4))
        if label == "notumor" or les is not None:
            return view, grid, labels, les, sections
    raise RuntimeError(f"could not place a {label} lesion in {_MAX_TRIES} views")


def render_sample(rng: np.random.Generator, label: str, size: int = 256) -> tuple[np.ndarray, np.ndarray, dict]:
    """One image (uint8 HxW), its lesion mask (bool HxW), metadata."""
    if label not in CLASSES:
        raise ValueError(f"unknown label {label!r}; expected one of {CLASSES}")
    anat = load_anatomy()
    for _ in range(_MAX_TRIES):
        out = _compose(rng, anat, label, size)
        if out is not None:
            img, mask, meta = out
            return jpeg(rng, degrade(rng, img)), mask, meta
    raise RuntimeError(f"could not render a visible {label} lesion")


def _compose(rng, anat, label, size):
    """Anatomy + bright structures + lesion, rendered; None when the lesion came out
    too small or too faint to see (the caller retries with the same rng stream)."""
    # A notumor slice passes the same view acceptance as a glioma or meningioma slice: a
    # phantom lesion of one of those kinds is planned and measured, never drawn. Otherwise the
    # size floor would make slices with little brain (vertex, lateral sagittal) mean
    # "notumor". (Pituitary slices must cut the sella, which is anatomy, not a shortcut.)
    phantom = PHANTOMS[int(rng.integers(len(PHANTOMS)))] if label == "notumor" else None
    view, grid, labels, les, sections = _grid_with_lesion(rng, anat, phantom or label, size)
    if phantom is not None:
        ghost = L.draw(rng, les, labels, sections=sections)
        if float(ghost.mask.sum()) * grid.mm_per_px**2 < MIN_LESION_MM2[phantom]:
            return None
        les = sections = None
    coords = grid.coords
    if les is not None:  # mass effect: resample the grid, then the anatomy, around the lesion
        coords = L.mass_effect(coords, les.center, les.radius, les.push)
        labels = sample_points(anat, coords)
    base = labels
    labels, anatomy = vary_anatomy(rng, labels, grid.mm_per_px)
    labels = add_bright_structures(rng, labels, coords, grid.mm_per_px, label)
    t1 = sample_points(anat, coords, order=1)
    contrast, mu, roles = sample_contrast(rng, label)
    native = (labels == base) & np.isin(labels, L.BRAIN)
    img = render_tissues(rng, labels, t1, mu, native, coords[2])
    # Normal periventricular signal on fluid-sensitive looks, in every class alike.
    if rng.random() < {"t2": 0.7, "flair": 0.8, "random": 0.3}.get(contrast, 0.0):
        band = periventricular_band(rng, labels, grid.mm_per_px) * rng.uniform(0.3, 0.8)
        img = img * (1.0 - band) + band * roles["oedema"]
        anatomy["periventricular"] = True
    mask = np.zeros(labels.shape, bool)
    meta: dict = {"plane": view.plane, "slice_mm": round(view.offset_mm, 2), "contrast": contrast,
                  "mm_per_px": round(grid.mm_per_px, 4), **anatomy}
    if les is not None:
        # Mass effect is centred on the lesion, so the planned sections stay where they were.
        les = L.draw(rng, les, labels, sections=sections)
        area_mm2 = float(les.mask.sum()) * grid.mm_per_px**2
        if area_mm2 < MIN_LESION_MM2[label]:
            return None
        plain = img
        img = blend_lesion(rng, img, les.layers, roles)
        contrast_change = float(np.abs(img - plain)[les.mask].mean())
        if contrast_change < MIN_LESION_CONTRAST:
            return None
        mask = les.mask
        meta["lesion_mm2"] = round(area_mm2, 1)
        meta["lesion_contrast"] = round(contrast_change, 4)
        meta.update(les.info)
        meta["lesion_px"] = int(mask.sum())
    return img, mask, meta


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """Each image's generator depends only on (seed, index): worker count is irrelevant."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def class_schedule(n_images: int, seed: int) -> list[str]:
    """Balanced labels (counts differ by at most one), shuffled by the seed."""
    labels = [CLASSES[i % len(CLASSES)] for i in range(n_images)]
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED])).permutation(n_images)
    return [labels[i] for i in order]


def _write_one(job: tuple[Path, int, int, str, int]) -> dict:
    out_dir, seed, index, label, size = job
    img, mask, meta = render_sample(sample_rng(seed, index), label, size)
    sid = f"{index:06d}"
    path = Path(label) / f"{sid}.png"
    mpath = mask_path(Path(), path)
    Image.fromarray(img).save(out_dir / path, optimize=False, compress_level=6)
    Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / mpath, compress_level=6)
    return {"id": sid, "label": label, "path": path.as_posix(), "mask": mpath.as_posix(),
            "plane": meta["plane"], "slice_mm": meta["slice_mm"], "seed": seed, "meta": meta}


def _init_worker() -> None:
    load_anatomy()  # map the cached volumes once per process


def generate_dataset(out_dir: Path, n_images: int, seed: int, size: int = 256, workers: int = 2,
                     progress: bool = True) -> Path:
    """Writes out_dir/{glioma,meningioma,notumor,pituitary}/<id>.png (8-bit grayscale, size x size),
    out_dir/masks/<class>/<id>.png (8-bit 0/255 lesion mask, all-zero for notumor) and out_dir/manifest.json
    (list of {"id","label","path","mask","plane","slice_mm","seed"} plus generator version/params). Balanced classes.
    Deterministic: same (n_images, seed, size) => byte-identical PNGs regardless of workers. Returns manifest path."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    for c in CLASSES:
        (out_dir / c).mkdir(parents=True, exist_ok=True)
        (out_dir / "masks" / c).mkdir(parents=True, exist_ok=True)
    load_anatomy()  # build the cache once, before workers race for it
    jobs = [(out_dir, seed, i, lab, size) for i, lab in enumerate(class_schedule(n_images, seed))]
    bar = tqdm(total=n_images, desc="synth", unit="img", disable=not progress)
    records: list[dict] = []
    if workers <= 1:
        for job in jobs:
            records.append(_write_one(job))
            bar.update()
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            for rec in pool.imap(_write_one, jobs, chunksize=8):
                records.append(rec)
                bar.update()
    bar.close()
    manifest = {
        "generator": "research.synth", "version": GENERATOR_VERSION, "classes": list(CLASSES),
        "params": {"n_images": n_images, "seed": seed, "size": size},
        "mask_definition": "tumour only: glioma enhancing rim + necrotic core (or the whole "
                           "non-enhancing mass); oedema and meningioma dural tail excluded",
        "images": records,
    }
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path
