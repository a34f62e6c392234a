"""The learning-rate schedule and the time budget's plan (research.training.schedule)."""

from __future__ import annotations

import pytest

from research.training.schedule import affordable_epochs, cosine_lr


def test_learning_rate_schedule_and_time_budget_plan() -> None:
    peak, total, warm = 3e-3, 1000, 50
    lrs = [cosine_lr(s, total, peak, warm) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / 10) and lrs[warm] == pytest.approx(peak)
    assert all(a <= b for a, b in zip(lrs[:warm], lrs[1:warm + 1], strict=True))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[warm:-1], lrs[warm + 1:], strict=True))  # then decays
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    # 100 s epochs, 1000 s budget, 300 s gone after 3 epochs: 7 more fit, capped by the plan.
    assert affordable_epochs(20, 3, 300.0, 100.0, 1000.0) == 10
    assert affordable_epochs(8, 3, 300.0, 100.0, 1000.0) == 8
    assert affordable_epochs(20, 3, 990.0, 100.0, 1000.0) == 3  # nothing more fits: stop now
    assert affordable_epochs(20, 3, 300.0, 100.0, None) == 20  # no budget: the plan stands
