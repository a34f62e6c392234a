"""Test images: realistic synthetic brain slices (the research generator), as file bytes."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image

from shared.labels import CLASSES


@lru_cache(maxsize=256)
def brain_slice(seed: int, label: str | None = None, size: int = 256) -> np.ndarray:
    """A uint8 HxW synthetic MRI slice (Colin27 anatomy, optional lesion), deterministic."""
    from research.synth.generate import render_sample

    rng = np.random.default_rng(seed)
    image, _mask, _meta = render_sample(rng, label or CLASSES[seed % len(CLASSES)], size)
    return image


def encode(pixels: np.ndarray, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def brain_png(seed: int = 0, label: str | None = None, size: int = 256) -> bytes:
    return encode(brain_slice(seed, label, size), "PNG")


def brain_jpeg(seed: int = 0, label: str | None = None, size: int = 256) -> bytes:
    return encode(brain_slice(seed, label, size), "JPEG", quality=92)


def colour_photo_png(size: int = 128) -> bytes:
    """A saturated colour gradient: decodes fine, but is no MRI (the gate says not_brain_mri)."""
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 40)], axis=-1)
    return encode(rgb.astype(np.uint8), "PNG")


def tiny_png(side: int = 16) -> bytes:
    """Decodable but smaller than any MRI slice we accept."""
    return encode(np.full((side, side), 128, dtype=np.uint8), "PNG")


def truncated_png() -> bytes:
    """PNG magic bytes, then garbage: passes the type check, fails decoding."""
    return brain_png(1)[:200]
