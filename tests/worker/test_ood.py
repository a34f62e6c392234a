"""The learned gate: fitted by `neuroscan fit-gate` on real (tiny) weights, named and hashed by
the card, applied after the rules by `analyse`, and `predict --heatmaps`."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from research.synth.generate import render_sample, sample_rng
from shared.imaging import decode_image
from shared.labels import CLASSES
from tests.conftest import TINY_MODEL_NAME
from worker.gate import GateOutcome
from worker.inference import analyse
from worker.model import load_model
from worker.ood import LearnedGate, OODFileMismatch, fit, gate_for, load, save


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def brains(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("brains")
    for i in range(60):
        image, _, _ = render_sample(sample_rng(31, i), CLASSES[i % 4], 128)
        (folder / f"b{i:02d}.png").write_bytes(_png(image))
    return folder


@pytest.fixture(scope="module")
def gated_model_dir(tiny_model_dir: Path, brains: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cli.main import app

    out = tmp_path_factory.mktemp("gated")
    for f in tiny_model_dir.iterdir():
        shutil.copy(f, out / f.name)
    result = CliRunner().invoke(app, ["fit-gate", "--model-dir", str(out), "--name", TINY_MODEL_NAME,
                                      "--data", str(brains)])
    assert result.exit_code == 0, result.output
    return out


def test_fit_gate_writes_statistics_named_and_hashed_by_the_card(gated_model_dir: Path) -> None:
    card = json.loads((gated_model_dir / f"{TINY_MODEL_NAME}.card.json").read_text())
    entry = card["input_gate"]
    assert entry["file"] == f"{TINY_MODEL_NAME}.ood.npz" and entry["n_fit"] == 60
    assert entry["weights_sha256"] == card["weights"]["sha256"]
    gate = load(gated_model_dir / entry["file"], entry["sha256"])
    assert gate.threshold == pytest.approx(entry["threshold"], rel=1e-4)
    with pytest.raises(OODFileMismatch):
        load(gated_model_dir / entry["file"], "0" * 64)


def test_analyse_reports_the_score_and_accepts_the_fitting_brains(gated_model_dir: Path,
                                                                  brains: Path) -> None:
    model = load_model(gated_model_dir, TINY_MODEL_NAME)
    assert gate_for(model) is not None
    results = analyse([decode_image(p.read_bytes()) for p in sorted(brains.iterdir())], model)
    assert all("ood_distance" in r.gate.scores for r in results)
    assert np.mean([r.gate.accepted for r in results]) >= 0.95  # 99.5th percentile out of fold


def test_over_the_threshold_is_not_brain_mri_without_a_label(gated_model_dir: Path, brains: Path,
                                                              tmp_path: Path) -> None:
    for f in gated_model_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    strict = load(tmp_path / f"{TINY_MODEL_NAME}.ood.npz")
    digest = save(LearnedGate(strict.mean, strict.precision, 0.0), tmp_path / f"{TINY_MODEL_NAME}.ood.npz")
    card_file = tmp_path / f"{TINY_MODEL_NAME}.card.json"
    card = json.loads(card_file.read_text())
    card["input_gate"]["sha256"] = digest
    card_file.write_text(json.dumps(card))
    (r,) = analyse([decode_image(next(brains.iterdir()).read_bytes())],
                   load_model(tmp_path, TINY_MODEL_NAME))
    assert not r.gate.accepted and r.gate.code == "not_brain_mri"
    assert "learned out-of-distribution score" in r.gate.reason
    assert r.label is None and r.cam is None


def test_rules_come_first_and_fit_refuses_too_few() -> None:
    gate = LearnedGate(np.zeros(2), np.eye(2), 1.0)
    ruled = GateOutcome(False, "not_brain_mri", "The image is in colour.", {})
    assert gate.judge(ruled, 0.1).reason == "The image is in colour."
    assert gate.judge(GateOutcome(True, "ok", "fine", {}), 2.0).accepted is False
    with pytest.raises(ValueError):
        fit(np.zeros((10, 4)))


def test_predict_writes_heatmaps_offline(tiny_model_dir: Path, brains: Path, tmp_path: Path) -> None:
    from cli.main import app

    files = sorted(brains.iterdir())[:2]
    out = tmp_path / "maps"
    result = CliRunner().invoke(app, ["predict", *map(str, files), "--model-dir", str(tiny_model_dir),
                                      "--name", TINY_MODEL_NAME, "--heatmaps", str(out)])
    assert result.exit_code == 0, result.output
    for line, path in zip(result.output.strip().splitlines(), files, strict=True):
        record = json.loads(line)
        assert record["explanation"]["label"] != "notumor"
        for kind in ("overlay", "heatmap"):
            png = out / f"{path.stem}.{kind}.png"
            assert record["images"][kind] == str(png)
            with Image.open(png) as img:  # the heatmap is indexed colour (worker/overlay.py)
                assert img.size == (128, 128) and img.mode == ("RGB" if kind == "overlay" else "P")
                assert img.convert("RGB").getbands() == ("R", "G", "B")
