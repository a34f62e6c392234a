"""A series finding from its slices' results: how slice probabilities are combined.

A brain MR series is a stack of slices; a tumour shows on some of them, never all. We take
the multiple-instance view: the series holds a tumour when at least one slice does, so

    p_tumour(series) = max over slices of (1 - p_notumor(slice))
    key slice        = argmax of the same
    label            = the key slice's most likely tumour class when p_tumour >= 0.5,
                       else "notumor" with probability 1 - p_tumour

Why the maximum: a mean dilutes a lesion seen on 3 of 30 slices into "no tumour"; a noisy-OR
(1 - prod(1 - p)) treats slices as independent witnesses, which adjacent slices are not, and
drifts towards "tumour" as series get longer; the maximum is what a reader does (find the
worst slice, look at it) and keeps the key slice's calibrated probability as the series'.
Its cost: the chance of one false-positive slice grows with the number of slices, so the
per-class maxima and the count of slices over 0.5 are reported beside it for the reader.
Failed slices (not a brain MRI, undecodable) are listed but do not vote; a series whose slices
all failed fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.labels import CLASSES, TUMOUR_CLASSES

TUMOUR_THRESHOLD = 0.5
METHOD = "max-over-slices of P(tumour) = 1 - P(notumor); key slice = argmax"


@dataclass(frozen=True)
class SliceResult:
    scan_id: str
    instance_number: int | None
    state: str
    probabilities: dict[str, float] | None = None
    error_code: str | None = None


@dataclass
class SeriesFinding:
    state: str  # succeeded | failed
    label: str | None = None
    probability: float | None = None
    tumour_probability: float | None = None
    key_scan_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None


def combine(slices: Sequence[SliceResult]) -> SeriesFinding:
    """The series finding (see the module docstring); slices in any order."""
    ordered = sorted(slices, key=lambda s: (s.instance_number is None, s.instance_number or 0,
                                            s.scan_id))
    scored = [s for s in ordered if s.state == "succeeded" and s.probabilities]
    failed = [s for s in ordered if s.state == "failed"]
    details: dict[str, Any] = {"method": METHOD, "slices": len(ordered), "scored": len(scored),
                               "failed": len(failed),
                               "failed_codes": sorted({s.error_code or "" for s in failed})}
    if not scored:
        return SeriesFinding(state="failed", details=details, error_code="no_scored_slices",
                             error_message=f"None of the {len(ordered)} slices could be scored.")

    def p_tumour(s: SliceResult) -> float:
        return 1.0 - float(s.probabilities.get("notumor", 0.0))  # type: ignore[union-attr]

    key = max(scored, key=p_tumour)  # first of equals: the lowest instance number
    tumour = p_tumour(key)
    probs = key.probabilities or {}
    if tumour >= TUMOUR_THRESHOLD:
        label = max(sorted(TUMOUR_CLASSES), key=lambda c: float(probs.get(c, 0.0)))
        probability = float(probs[label])
    else:
        label, probability = "notumor", 1.0 - tumour
    details["class_max"] = {c: max(float((s.probabilities or {}).get(c, 0.0)) for s in scored)
                            for c in CLASSES}
    details["slices_over_threshold"] = sum(1 for s in scored if p_tumour(s) >= TUMOUR_THRESHOLD)
    details["key_instance_number"] = key.instance_number
    details["key_probabilities"] = {c: float(probs.get(c, 0.0)) for c in CLASSES}
    return SeriesFinding(state="succeeded", label=label, probability=probability,
                         tumour_probability=tumour, key_scan_id=key.scan_id, details=details)
