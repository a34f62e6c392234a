"""Series findings from slice results: max over slices of P(tumour), key slice = argmax."""

from __future__ import annotations

import pytest

from shared.series import SliceResult, combine


def _p(glioma: float = 0.0, meningioma: float = 0.0, pituitary: float = 0.0) -> dict[str, float]:
    return {"glioma": glioma, "meningioma": meningioma, "pituitary": pituitary,
            "notumor": 1.0 - glioma - meningioma - pituitary}


def test_one_tumour_slice_among_many_clear_ones_makes_the_series_positive() -> None:
    slices = [SliceResult(f"s{k}", k, "succeeded", _p(glioma=0.02)) for k in range(1, 30)]
    slices.append(SliceResult("hot", 30, "succeeded", _p(glioma=0.1, meningioma=0.8)))
    finding = combine(slices)
    assert finding.label == "meningioma" and finding.key_scan_id == "hot"
    assert finding.tumour_probability == pytest.approx(0.9)
    assert finding.probability == pytest.approx(0.8)
    assert finding.details["slices_over_threshold"] == 1
    # A mean would have said ~5 %: the reason the maximum is used.
    assert finding.details["class_max"]["meningioma"] == pytest.approx(0.8)


def test_all_clear_is_notumor_with_the_complement_of_the_worst_slice() -> None:
    finding = combine([SliceResult("a", 2, "succeeded", _p(pituitary=0.3)),
                       SliceResult("b", 1, "succeeded", _p(glioma=0.1))])
    assert finding.label == "notumor" and finding.key_scan_id == "a"
    assert finding.probability == pytest.approx(0.7)


def test_failed_slices_do_not_vote_and_all_failed_fails() -> None:
    finding = combine([SliceResult("a", 1, "failed", None, "not_brain_mri"),
                       SliceResult("b", 2, "succeeded", _p(glioma=0.6))])
    assert finding.label == "glioma" and finding.details["failed"] == 1
    failed = combine([SliceResult("a", 1, "failed", None, "not_brain_mri")])
    assert failed.state == "failed" and failed.error_code == "no_scored_slices"


def test_ties_pick_the_lowest_instance_number() -> None:
    finding = combine([SliceResult("late", 9, "succeeded", _p(glioma=0.7)),
                       SliceResult("early", 3, "succeeded", _p(glioma=0.7))])
    assert finding.key_scan_id == "early"
