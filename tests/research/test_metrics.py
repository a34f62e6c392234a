"""The evaluation's metrics on cases small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from research import metrics as M


def test_ece_by_hand() -> None:
    # Two confident right answers (0.9 in bin 14) and one 0.6 wrong one (bin 9):
    # 2/3 * |1 - 0.9| + 1/3 * |0 - 0.6| = 0.2667.
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]])
    labels = np.array([0, 1, 1])
    assert M.expected_calibration_error(probs, labels) == pytest.approx(2 / 3 * 0.1 + 1 / 3 * 0.6)
    assert M.expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0


def test_temperature_fit_recovers_the_generating_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (20000, 4))
    p = M.softmax(logits, 2.5)
    labels = np.array([rng.choice(4, p=row) for row in p])
    t = M.fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    assert M.nll(logits, labels, t) < M.nll(logits, labels, 1.0)


def test_roc_auc_rank_statistic() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    positive = np.array([False, False, True, True])
    assert M.roc_auc_binary(scores, positive) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert M.roc_auc_binary(np.ones(4), positive) == pytest.approx(0.5)  # ties count half
    assert np.isnan(M.roc_auc_binary(scores, np.zeros(4, bool)))


def test_pointing_game_and_energy() -> None:
    cam = np.zeros((10, 10))
    cam[2, 7] = 1.0
    cam[7, 7] = 0.5
    mask = np.zeros((10, 10), bool)
    mask[6:9, 6:9] = True
    assert not M.pointing_hit(cam, mask)
    assert M.pointing_hit(cam, mask, tolerance_px=4)  # 4 px above the mask (dilation by a cross: city-block distance)
    assert not M.pointing_hit(cam, mask, tolerance_px=3)
    assert M.energy_inside(cam, mask) == pytest.approx(0.5 / 1.5)
    assert M.energy_inside(np.zeros((10, 10)), mask) == 0.0


def test_accuracy_by_group_and_size_terciles() -> None:
    correct = np.array([True, False, True, True, False, True])
    by = M.accuracy_by({"plane": ["axial", "axial", "coronal", "coronal", "coronal", None]}, correct)
    assert by == {"plane": {"axial": {"n": 2, "accuracy": 0.5},
                            "coronal": {"n": 3, "accuracy": pytest.approx(2 / 3)}}}
    assert M.accuracy_by({"grade": [None] * 6}, correct) == {}  # a grouping that never applies
    with pytest.raises(ValueError, match="3 values for 6 images"):
        M.accuracy_by({"plane": ["a", "b", "c"]}, correct)
    sizes, cuts = M.size_terciles([10.0, None, 20.0, 30.0, 40.0, 50.0, 60.0])
    assert cuts == pytest.approx([26.667, 43.333], rel=1e-3)
    assert sizes == ["1 small", None, "1 small", "2 medium", "2 medium", "3 large", "3 large"]
    assert M.size_terciles([None, None]) == ([None, None], [])
