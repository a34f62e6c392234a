"""The transfer proxy: how a model holds up on images unlike its training data.

Real labelled tumour slices cannot be had on our machines, so accuracy on them cannot be
measured here. This is the measurable stand-in, reported by `neuroscan evaluate` for every
model (section "Transfer proxy" of the report):

1. **Held-out acquisition shifts.** The same labelled test slices, each re-exported the ways
   clinical exports differ from ours, by transforms that no training run of ours applies:
   local histogram equalisation (CLAHE, common in public JPEG sets), a 3x lower acquisition
   matrix, JPEG at quality 12, a strong linear bias field, unsharp masking, burned-in scanner
   annotations in the corners, heavy Rician-like noise and a head at half the frame padded
   by black. The proxy score is the mean accuracy over the shifts; the "worst shift" says
   where a model breaks.
2. **Real normal brain MR that packages ship** (pydicom's and nibabel's test data: a 64 px
   head crop, EPI slices and mosaics, an angiogram projection, a T1 map): every slice the gate
   accepts must read `notumor`. None is a clinical structural slice and there are a handful,
   so this is a smoke test of specificity, not a statistic.

What it cannot say: whether anatomy the generator never drew (another head than Colin27)
or real tumour appearance transfer. docs/model.md says which change moved which figure.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from research.layout import list_folder
from shared.imaging import decode_image
from shared.preprocessing import preprocess

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def _clahe(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from skimage.exposure import equalize_adapthist

    return equalize_adapthist(img, clip_limit=0.02).astype(np.float32)


def _low_matrix(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    small = Image.fromarray(_to_u8(img)).resize((max(8, w // 3), max(8, h // 3)), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), np.float32) / 255.0


def _jpeg12(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(_to_u8(img)).save(buf, format="JPEG", quality=12)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"), np.float32) / 255.0


def _bias(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = (np.cos(angle) * (xx / w - 0.5) + np.sin(angle) * (yy / h - 0.5)) * 2.0
    out = img * np.exp(0.7 * ramp)
    return (out / max(float(out.max()), 1e-6)).astype(np.float32)


def _sharpen(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sharp = Image.fromarray(_to_u8(img)).filter(ImageFilter.UnsharpMask(radius=3, percent=200, threshold=0))
    return np.asarray(sharp, np.float32) / 255.0


def _annotations(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pil = Image.fromarray(_to_u8(img))
    draw = ImageDraw.Draw(pil)
    h, w = img.shape
    for x, y in ((2, 2), (2, h - 24), (w - 70, 2), (w - 70, h - 24)):
        draw.text((x, y), "SE 4 IM 12\nTR 550 TE 15", fill=255)
    return np.asarray(pil, np.float32) / 255.0


def _noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sd = 0.08
    a, b = rng.standard_normal((2,) + img.shape) * sd
    return np.clip(np.sqrt((img + a) ** 2 + b**2), 0, 1).astype(np.float32)


def _small_head(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    out = np.zeros((2 * h, 2 * w), np.float32)
    y, x = int(rng.integers(0, h + 1)), int(rng.integers(0, w + 1))
    out[y:y + h, x:x + w] = img
    return out


SHIFTS: dict[str, Shift] = {
    "clahe": _clahe, "low_matrix_x3": _low_matrix, "jpeg_q12": _jpeg12, "bias_strong": _bias,
    "unsharp": _sharpen, "annotations": _annotations, "noise_heavy": _noise, "head_half_frame": _small_head,
}


def shift_accuracy(data: Path, model: Any, *, limit: int = 800, seed: int = 0) -> dict[str, Any]:
    """Accuracy of `model` (a loaded model) on the first `limit` images of a labelled folder
    (a class-balanced, seeded subset), unshifted and under each held-out shift."""
    from worker.inference import logits_batch

    files, labels = list_folder(Path(data))
    order = np.random.default_rng(seed).permutation(len(files))[:limit]
    files, labels = [files[i] for i in order], labels[order]
    base = [np.asarray(decode_image(f.read_bytes()).pixels, np.float32) for f in files]
    base = [b if b.ndim == 2 else b.mean(axis=2) for b in base]
    size = model.input_size

    def accuracy(images: list[np.ndarray]) -> float:
        preds = []
        for s in range(0, len(images), 128):
            batch = np.stack([preprocess(im, size).image for im in images[s:s + 128]])
            preds.append(logits_batch(model, batch).argmax(axis=1))
        return float((np.concatenate(preds) == labels).mean())

    out: dict[str, Any] = {"n": len(files), "unshifted": accuracy(base), "shifts": {}}
    for name, fn in SHIFTS.items():
        rng = np.random.default_rng([seed, len(name)])
        out["shifts"][name] = accuracy([fn(im, rng) for im in base])
    values = list(out["shifts"].values())
    out["proxy_mean"] = float(np.mean(values))
    worst = min(out["shifts"], key=out["shifts"].get)
    out["worst"] = {"shift": worst, "accuracy": out["shifts"][worst]}
    return out


def real_normal_brains(model: Any) -> dict[str, Any]:
    """Real brain MR that packages ship (research.ood.real_mr_set, Colin27 left out: it is the
    generator's own anatomy), through the serving path with its gate: each slice the gate
    accepts must read notumor."""
    from research.ood import real_mr_set
    from worker.inference import analyse

    items = [(name, img) for name, img, brain in real_mr_set() if brain and not name.startswith("mricron:")]
    results: dict[str, dict[str, Any]] = {}
    for (name, _), analysis in zip(items, analyse([img for _, img in items], model), strict=True):
        results[name] = ({"label": analysis.label, "confidence": round(float(analysis.confidence), 3)}
                         if analysis.gate.accepted else {"rejected": analysis.gate.reason})
    read = [r for r in results.values() if "label" in r]
    return {"images": results, "n": len(read),
            "notumor_rate": float(np.mean([r["label"] == "notumor" for r in read])) if read else None}


def transfer_report(data: Path, model: Any, *, limit: int = 800) -> dict[str, Any]:
    return {"shifts": shift_accuracy(data, model, limit=limit), "real_normal": real_normal_brains(model)}


def to_markdown(section: dict[str, Any]) -> list[str]:
    sh, real = section["shifts"], section["real_normal"]
    rate = "n/a" if real["notumor_rate"] is None else f"{real['notumor_rate']:.2f}"
    seen = "; ".join(f"{k}: {v.get('label', 'gate: ' + str(v.get('rejected')))}"
                     for k, v in real["images"].items())
    return [
        "## Transfer proxy", "",
        f"Held-out acquisition shifts on {sh['n']} test slices (research/transfer.py); no training run "
        "applies these transforms.", "",
        "| shift | accuracy |", "|---|---|",
        f"| none | {sh['unshifted']:.4f} |",
        *[f"| {k} | {v:.4f} |" for k, v in sh["shifts"].items()],
        f"| **mean over shifts (the proxy)** | **{sh['proxy_mean']:.4f}** |", "",
        f"Real normal head MR shipped by packages: {real['n']} read, notumor rate {rate} ({seen}).", "",
    ]
