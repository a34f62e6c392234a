"""An out-of-distribution set for the input gate, built only from images that packages ship,
plus generated ones; and the gate's catch rate on it.

    python -m research.ood          # prints the catch rate and every miss

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
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

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


if __name__ == "__main__":
    result = ood_catch_rate()
    json.dump(result, sys.stdout, indent=2)
    print()
