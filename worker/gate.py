"""The input gate: is this upload plausibly a brain MRI slice at all?

A classifier trained on four tumour classes gives a confident answer for anything, a cat
photograph included. The gate runs before the model and answers `not_brain_mri`, with a
reason a person can read, for inputs that are clearly something else. It is deterministic
and uses image statistics only; each rule below names what it catches, and each threshold
sits beyond the extremes measured on 12,000 synthetic MRI slices of every contrast, plane
and framing (see `research/ood.py` for the catch rate and docs/model.md for the numbers).

First the DICOM header (`shared.anatomy`): a file whose header names another body part
(BodyPartExamined=ABDOMEN, a SHOULDER study...) and nowhere the head is rejected with the
field and the term it said; an empty or unrecognised header is no evidence either way.

Then the image rules, in order (the first that fires gives the reason):
1. aspect ratio above MAX_ASPECT_RATIO (2:1 by default, the intake's limit too) — slices are
   close to square;
2. colour — more than 5% of pixels clearly chromatic (MRI is grayscale; a small coloured
   annotation is tolerated);
3. blank or nearly constant — intensity standard deviation below 0.05;
4. documents and screenshots — one grey level covers over half of the non-dark pixels
   (flat page or UI background);
5. noise — neighbouring pixels nearly uncorrelated (lag-1 correlation below 0.6); anatomy
   is smooth at the pixel scale even in noisy scans;
6. text and line drawings — over 10% of pixels are strong edges;
7. no head on a dark background — fewer than 25% of the pixels along the border are dark:
   MRI has air around the head; photographs, textures and pages do not;
8. CT — a large share of pixels saturated at the maximum (bone in a brain window) together
   with a flat dominant soft-tissue level: MRI shows neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from shared.imaging import DecodedImage
from shared.preprocessing import scale_intensity, to_grayscale
from shared.settings import get_settings

GateCode = Literal["ok", "not_brain_mri"]

MAX_CHROMATIC_FRACTION = 0.05
CHROMA_LEVEL = 0.10  # max-min over RGB above this counts as clearly coloured
MIN_STD = 0.05
MIN_NEIGHBOUR_CORRELATION = 0.6
MAX_DOMINANT_LEVEL = 0.5
MAX_EDGE_DENSITY = 0.10
MIN_DARK_BORDER = 0.25
CT_MIN_SATURATED, CT_MIN_DOMINANT_LEVEL = 0.12, 0.33
_ANALYSIS_SIDE = 256  # statistics are computed on a copy at most this large: fast, size-independent


@dataclass(frozen=True)
class GateOutcome:
    accepted: bool
    code: GateCode
    reason: str
    scores: dict[str, float] = field(default_factory=dict)
    header: dict[str, str | None] | None = None  # DICOM body-part evidence, when there was any

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"accepted": self.accepted, "code": self.code,
                                  "reason": self.reason, "scores": dict(self.scores)}
        if self.header is not None:
            out["header"] = dict(self.header)
        return out


def _downsample(img: np.ndarray) -> np.ndarray:
    step = int(np.ceil(max(img.shape[:2]) / _ANALYSIS_SIDE))
    return img[::step, ::step] if step > 1 else img


def image_statistics(decoded: DecodedImage) -> dict[str, float]:
    """The numbers the rules read; also returned to callers as `scores`."""
    pixels = _downsample(decoded.pixels)
    h, w = decoded.pixels.shape[:2]
    stats = {"aspect_ratio": max(h, w) / max(1, min(h, w)), "chromatic_fraction": 0.0}
    if pixels.ndim == 3:
        chroma = pixels[..., :3].max(axis=2) - pixels[..., :3].min(axis=2)
        stats["chromatic_fraction"] = float(np.mean(chroma > CHROMA_LEVEL))
    gray = to_grayscale(pixels)
    stats["std"] = float(gray.std())
    scaled = scale_intensity(gray)
    left, right = scaled[:, :-1].ravel(), scaled[:, 1:].ravel()
    stats["neighbour_correlation"] = (float(np.corrcoef(left, right)[0, 1])
                                      if left.std() > 0 and right.std() > 0 else 1.0)
    levels = np.round(gray * 255).astype(np.int64)[scaled > 0.15]
    stats["dominant_level"] = float(np.bincount(levels).max() / levels.size) if levels.size else 1.0
    gy, gx = np.gradient(scaled)
    stats["edge_density"] = float(np.mean(np.hypot(gx, gy) > 0.25))
    b = max(2, int(0.06 * min(scaled.shape)))
    border = np.concatenate([scaled[:b].ravel(), scaled[-b:].ravel(),
                             scaled[:, :b].ravel(), scaled[:, -b:].ravel()])
    stats["dark_border"] = float(np.mean(border < 0.15))
    stats["saturated"] = float(np.mean(gray >= gray.max() - 1e-3)) if gray.max() > 0 else 0.0
    return stats


def assess(decoded: DecodedImage) -> GateOutcome:
    """Accept, or reject as `not_brain_mri` with the first rule that fires (module docstring)."""
    s = image_statistics(decoded)
    header = decoded.meta.get("anatomy") or {}
    if header.get("verdict") == "not_brain":
        return GateOutcome(False, "not_brain_mri",
                           f"{header['reason']}: not a brain MRI.", s, header=dict(header))
    rules = [
        (s["aspect_ratio"] > get_settings().max_aspect_ratio,
         f"The image is {s['aspect_ratio']:.1f} times longer than wide; MRI slices are close to square."),
        (s["chromatic_fraction"] > MAX_CHROMATIC_FRACTION,
         "The image is in colour (a photograph or a rendering); MRI slices are grayscale."),
        (s["std"] < MIN_STD, "The image is blank or nearly constant."),
        (s["dominant_level"] > MAX_DOMINANT_LEVEL,
         "The image looks like a document, screenshot or drawing (large flat areas)."),
        (s["neighbour_correlation"] < MIN_NEIGHBOUR_CORRELATION,
         "The image looks like random noise, not anatomy."),
        (s["edge_density"] > MAX_EDGE_DENSITY,
         "The image looks like a document, screenshot or drawing (text or sharp lines)."),
        (s["dark_border"] < MIN_DARK_BORDER,
         "The image has no dark background around the subject, unlike an MRI slice of a head."),
        (s["saturated"] > CT_MIN_SATURATED and s["dominant_level"] > CT_MIN_DOMINANT_LEVEL,
         "The image looks like a CT slice (saturated bone, flat soft tissue), not an MRI."),
    ]
    evidence = dict(header) if header else None
    for fired, reason in rules:
        if fired:
            return GateOutcome(False, "not_brain_mri", reason, s, header=evidence)
    return GateOutcome(True, "ok", "Plausible grayscale MRI slice.", s, header=evidence)
