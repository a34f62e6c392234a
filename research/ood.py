"""An out-of-distribution set for the input gate, built only from images that packages ship,
plus generated ones; and the gate's catch rate on it.

    python -m research.ood          # prints the rule gate's catch rate and every miss
    python -m research.ood --model-dir models --synthetic DIR   # + header and learned score

Sources: scikit-image's sample images (photographs, text, documents, textures, a
phantom, microscopy), pydicom's CT test slices exported as PNG with two display windows
(so the DICOM modality tag cannot give them away), and generated noise, blank and nearly
constant images, screenshot- and document-like renderings, and extreme aspect ratios.
Every image goes through PNG/JPEG encoding and `shared.imaging.decode_image`, as an upload
would.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from shared.errors import InputError
from shared.imaging import DecodedImage, decode_image

_SKIMAGE = ("astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard",
            "chelsea", "clock", "coffee", "coins", "grass", "gravel", "horse",
            "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon",
            "page", "retina", "rocket", "shepp_logan_phantom", "text")
_CT_FILES = ("CT_small.dcm", "J2K_pixelrep_mismatch.dcm", "693_J2KI.dcm")


def _encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    img = Image.fromarray(a)
    if fmt == "JPEG" and img.mode == "RGBA":
        img = img.convert("RGB")
    img.save(buf, fmt)
    return buf.getvalue()


def _skimage_images() -> Iterator[tuple[str, np.ndarray]]:
    import skimage.data

    for name in _SKIMAGE:
        try:
            yield f"skimage:{name}", getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a sample that needs a download is skipped
            continue


def _ct_images() -> Iterator[tuple[str, np.ndarray]]:
    import pydicom
    from pydicom.data import get_testdata_file

    for name in _CT_FILES:
        path = get_testdata_file(name)
        if path is None:
            continue
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1) or 1) \
            + float(getattr(ds, "RescaleIntercept", 0) or 0)
        yield f"ct:{name}:full", (hu - hu.min()) / max(float(np.ptp(hu)), 1e-6)
        for label, (level, width) in {"brain": (40, 80), "bone": (600, 2800)}.items():
            yield f"ct:{name}:{label}", np.clip((hu - (level - width / 2)) / width, 0, 1)


def _screenshot(rng: np.random.Generator, dark: bool) -> np.ndarray:
    """A UI-like rendering: panels, buttons and lines of text."""
    bg, fg = (30, 220) if dark else (245, 20)
    img = Image.new("L", (800, 600), bg)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, 800, 40], fill=90 if dark else 200)
    for _ in range(6):
        x, y = int(rng.integers(20, 600)), int(rng.integers(60, 500))
        draw.rectangle([x, y, x + int(rng.integers(80, 200)), y + 30], outline=fg, width=2)
    for row in range(60, 580, 18):
        words = " ".join("".join(chr(int(c)) for c in rng.integers(97, 123, rng.integers(2, 9)))
                         for _ in range(int(rng.integers(3, 12))))
        draw.text((int(rng.integers(10, 60)), row), words, fill=fg)
    return np.asarray(img)


def _document(rng: np.random.Generator) -> np.ndarray:
    img = Image.new("L", (850, 1100), 250)
    draw = ImageDraw.Draw(img)
    draw.text((60, 40), "DISCHARGE SUMMARY - RADIOLOGY", fill=0)
    for row in range(90, 1040, 16):
        draw.text((60, row), " ".join("x" * int(n) for n in rng.integers(2, 10, 12)), fill=10)
    return np.asarray(img)


def _generated(seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    yield "gen:uniform-noise", rng.random((256, 256))
    yield "gen:gaussian-noise", np.clip(0.5 + 0.2 * rng.standard_normal((256, 256)), 0, 1)
    yield "gen:salt-pepper", (rng.random((256, 256)) < 0.5).astype(np.float32)
    yield "gen:colour-noise", rng.random((256, 256, 3))
    yield "gen:black", np.zeros((256, 256))
    yield "gen:white", np.ones((256, 256))
    yield "gen:grey", np.full((256, 256), 0.5)
    yy, xx = np.mgrid[:256, :256] / 255.0
    yield "gen:gradient", 0.4 + 0.2 * xx
    yield "gen:faint-noise", np.clip(0.5 + 0.004 * rng.standard_normal((256, 256)), 0, 1)
    yield "gen:stripes", 0.5 + 0.5 * np.sin(xx * 60)
    yield "gen:screenshot-light", _screenshot(rng, dark=False)
    yield "gen:screenshot-dark", _screenshot(rng, dark=True)
    yield "gen:document", _document(rng)
    yield "gen:wide-banner", rng.random((64, 400))
    yield "gen:tall-strip", np.tile(np.linspace(0, 1, 96)[None, :], (400, 1))


def build_ood_set() -> list[tuple[str, DecodedImage]]:
    """(name, decoded image) pairs, each encoded and decoded like an upload."""
    out = []
    sources: list[Callable[[], Iterator[tuple[str, np.ndarray]]]] = [_skimage_images, _ct_images, _generated]
    for source in sources:
        for name, arr in source():
            fmt = "JPEG" if name.startswith("skimage:") and np.asarray(arr).ndim == 3 else "PNG"
            out.append((name, decode_image(_encode(arr, fmt))))
    return out


def ood_catch_rate() -> dict[str, Any]:
    """The share of the OOD set the gate rejects, with the names of the misses."""
    from worker.gate import assess

    items = build_ood_set()
    outcomes = [(name, assess(img)) for name, img in items]
    missed = [name for name, o in outcomes if o.accepted]
    return {"catch_rate": 1.0 - len(missed) / len(items), "ood_n": len(items), "ood_missed": missed}


def _dicom_files() -> dict[str, tuple[Path, bool]]:
    """Real MR DICOMs that packages ship: name -> (path, is a brain)."""
    import nibabel
    from pydicom.data import get_testdata_file

    nib = Path(nibabel.__file__).parent
    files = {"pydicom:MR_small.dcm (head, 64 px)": ("MR_small.dcm", True),
             "pydicom:examples_overlay.dcm (abdomen, liver)": ("examples_overlay.dcm", False)}
    out = {name: (Path(get_testdata_file(f)), brain) for name, (f, brain) in files.items()}
    for rel, what in (("tests/data/0.dcm", "brain DTI mosaic"),
                      ("nicom/tests/data/csa_slice_norm.dcm", "brain resting-state EPI mosaic"),
                      ("nicom/tests/data/slicethickness_empty_string.dcm", "brain TOF angiogram MIP"),
                      ("nicom/tests/data/decimal_rescale.dcm", "brain quantitative T1 map")):
        out[f"nibabel:{Path(rel).name} ({what})"] = (nib / rel, True)
    return out


def _volume_slices() -> Iterator[tuple[str, np.ndarray]]:
    """Axial, coronal and sagittal slices of real head volumes that packages ship."""
    import nibabel

    nib = Path(nibabel.__file__).parent
    volumes = {"mricron:ch2 (Colin27 T1 with skull; the generator's anatomy)":
               Path("/usr/share/mricron/templates/ch2.nii.gz"),
               "nibabel:example4d (brain EPI)": nib / "tests/data/example4d.nii.gz"}
    planes = {"mricron": ("sagittal", "coronal", "axial"), "nibabel": ("axial",)}  # EPI: 24 slices
    for name, path in volumes.items():
        if not path.is_file():
            continue
        vol = np.asarray(nibabel.load(path).dataobj, dtype=np.float32)
        vol = vol[..., 0] if vol.ndim == 4 else vol
        vol = (vol - vol.min()) / max(float(np.ptp(vol)), 1e-6)
        for axis, plane in enumerate(("sagittal", "coronal", "axial")):
            if plane not in planes[name.split(":")[0]]:
                continue
            for frac in (0.4, 0.5, 0.6):
                k = int(frac * vol.shape[axis])
                sl = np.rot90(np.take(vol, k, axis=axis))
                hi = float(np.percentile(sl, 99.5)) or 1.0
                yield f"{name} {plane} {int(frac * 100)}%", np.clip(sl / hi, 0, 1)


def real_mr_set(*, keep_header: bool = True) -> list[tuple[str, DecodedImage, bool]]:
    """(name, decoded image, is a brain) for every real MR image packages ship that we use.
    With `keep_header=False` the DICOMs lose their body-part evidence, so the image alone
    decides (how the learned score fares without the header's help)."""
    from shared.imaging import decode_image

    out: list[tuple[str, DecodedImage, bool]] = []
    for name, (path, brain) in _dicom_files().items():
        if not path.is_file():
            continue
        try:
            img = decode_image(path.read_bytes())
        except InputError:  # some test files are headers only (no pixel data)
            continue
        if not keep_header:
            img = DecodedImage(img.pixels, img.format, {**img.meta, "anatomy": None})
        out.append((name, img, brain))
    for name, arr in _volume_slices():
        out.append((name, decode_image(_encode(arr)), True))
    return out


def learned_gate_report(model_dir: Path, name: str, synthetic: Path | None = None) -> dict[str, Any]:
    """Catch and false-reject rates of the whole gate (header, rules, learned score) for a model
    whose card names a learned gate: the OOD set, real MR (with and without DICOM headers),
    and held-out synthetic brains."""
    from worker.inference import analyse
    from worker.model import load_model
    from worker.ood import gate_for, image_files

    model = load_model(model_dir, name)
    if gate_for(model) is None:
        raise SystemExit(f"the card of {name} names no learned gate (run neuroscan fit-gate)")

    def rejected(images: list[DecodedImage]) -> list[bool]:
        return [not r.gate.accepted for r in analyse(images, model)]

    ood = build_ood_set()
    ood_rej = rejected([img for _, img in ood])
    report: dict[str, Any] = {
        "ood_catch_rate": float(np.mean(ood_rej)), "ood_n": len(ood),
        "ood_missed": [n for (n, _), r in zip(ood, ood_rej, strict=True) if not r]}
    for label, keep in (("real", True), ("real_image_only", False)):
        real = real_mr_set(keep_header=keep)
        results = analyse([img for _, img, _ in real], model)
        rows = [{"name": n, "brain": b, "rejected": not r.gate.accepted,
                 "ood_distance": r.gate.scores.get("ood_distance"), "reason": r.gate.reason}
                for (n, _, b), r in zip(real, results, strict=True)]
        brains = [r for r in rows if r["brain"]]
        others = [r for r in rows if not r["brain"]]
        report[label] = {
            "brain_false_reject": f"{sum(r['rejected'] for r in brains)}/{len(brains)}",
            "non_brain_caught": f"{sum(r['rejected'] for r in others)}/{len(others)}",
            "images": rows}
    if synthetic is not None:
        from shared.imaging import decode_image

        files = image_files(synthetic)
        syn = rejected([decode_image(p.read_bytes()) for p in files])
        report["synthetic_false_reject"] = f"{sum(syn)}/{len(syn)}"
    report["threshold"] = gate_for(model).threshold  # type: ignore[union-attr]
    return report


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="with a learned gate: report it too")
    parser.add_argument("--name", default="neuroscan-cnn")
    parser.add_argument("--synthetic", type=Path, help="held-out synthetic brains (false rejects)")
    args = parser.parse_args()
    result = ood_catch_rate()
    if args.model_dir is not None:
        result["learned"] = learned_gate_report(args.model_dir, args.name, args.synthetic)
    json.dump(result, sys.stdout, indent=2)
    print()
