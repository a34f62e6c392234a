"""The transfer proxy's shifts and report (research/transfer.py)."""

from __future__ import annotations

import numpy as np
import pytest

from research.transfer import SHIFTS, real_normal_brains, to_markdown


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_each_shift_returns_a_valid_image_that_differs(name: str) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    head = (((yy - 48) / 40.0) ** 2 + ((xx - 48) / 34.0) ** 2 < 1).astype(np.float32)
    img = head * (0.4 + 0.3 * np.sin(xx / 5.0) ** 2) + 0.05 * rng.random((96, 96)).astype(np.float32) * head
    out = SHIFTS[name](img, np.random.default_rng(1))
    assert out.ndim == 2 and np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6
    if out.shape == img.shape:
        assert np.abs(out - img).mean() > 1e-3
    else:  # the head at half the frame: the original sits inside black padding
        assert out.shape == (192, 192) and np.isclose(out.sum(), img.sum(), rtol=1e-5)


def test_real_normal_brains_are_read_and_reported(tiny_model_dir) -> None:
    from worker.model import load_model

    model = load_model(tiny_model_dir, "neuroscan-tiny")
    real = real_normal_brains(model)
    assert real["n"] >= 3  # pydicom and nibabel ship real brain MR with the packages
    assert not any(name.startswith("mricron:") for name in real["images"])  # not the generator's head
    assert all(r.get("label") in model.classes or r.get("rejected") for r in real["images"].values())
    assert 0.0 <= real["notumor_rate"] <= 1.0
    section = {"shifts": {"n": 4, "unshifted": 0.5, "shifts": {k: 0.25 for k in SHIFTS},
                          "proxy_mean": 0.25, "worst": {"shift": "clahe", "accuracy": 0.25}},
               "real_normal": real}
    text = "\n".join(to_markdown(section))
    assert "| **mean over shifts (the proxy)** | **0.2500** |" in text and "example4d" in text
