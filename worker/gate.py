"""The input gate: is this upload plausibly a brain MRI slice at all?

A classifier trained on four tumour classes gives a confident answer for anything, a cat
photograph included. The gate runs first and answers `not_brain_mri` with a reason for
inputs that are clearly something else. (A first version: simple image statistics.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from shared.imaging import DecodedImage
from shared.preprocessing import scale_intensity, to_grayscale

GateCode = Literal["ok", "not_brain_mri"]

MAX_ASPECT = 2.0
MIN_STD = 0.02
MAX_SATURATION = 0.08


@dataclass(frozen=True)
class GateOutcome:
    accepted: bool
    code: GateCode
    reason: str
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"accepted": self.accepted, "code": self.code, "reason": self.reason,
                "scores": dict(self.scores)}


def _reject(reason: str, scores: dict[str, float]) -> GateOutcome:
    return GateOutcome(False, "not_brain_mri", reason, scores)


def assess(decoded: DecodedImage) -> GateOutcome:
    pixels = decoded.pixels
    h, w = pixels.shape[:2]
    scores: dict[str, float] = {"aspect_ratio": max(h, w) / max(1, min(h, w))}
    if scores["aspect_ratio"] > MAX_ASPECT:
        return _reject("The image is far from square; MRI slices are close to square.", scores)
    if pixels.ndim == 3:
        rgb = pixels[..., :3]
        scores["saturation"] = float(np.mean(rgb.max(axis=2) - rgb.min(axis=2)))
        if scores["saturation"] > MAX_SATURATION:
            return _reject("The image is in colour; MRI slices are grayscale.", scores)
    gray = to_grayscale(pixels)
    scores["std"] = float(gray.std())
    if scores["std"] < MIN_STD:
        return _reject("The image is blank or nearly constant.", scores)
    scaled = scale_intensity(gray)
    scores["background"] = float(np.mean(scaled < 0.05))
    return GateOutcome(True, "ok", "Looks like a grayscale slice.", scores)
