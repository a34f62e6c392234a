"""analyse(): gate + preprocessing + one batched Grad-CAM pass + maps in the original frame."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from PIL import Image

from research.synth.generate import render_sample, sample_rng
from shared.imaging import DecodedImage, decode_image
from shared.labels import CLASSES
from shared.preprocessing import preprocess
from worker.inference import analyse
from worker.model import ModelConfig, build_model, load_model, save_model_files


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    keras.utils.set_random_seed(5)
    config = ModelConfig.tiny(name="tiny-inference")
    save_model_files(build_model(config), config, out, temperature=1.6)
    return out


@pytest.fixture(scope="module")
def scans() -> list[DecodedImage]:
    out = []
    for i, (h, w) in enumerate([(256, 256), (300, 240), (200, 260)]):
        img, _, _ = render_sample(sample_rng(11, i), CLASSES[i], 256)
        buf = io.BytesIO()
        Image.fromarray(img).resize((w, h)).save(buf, "PNG")
        out.append(decode_image(buf.getvalue()))
    return out


def _colour_photo() -> DecodedImage:
    rgb = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return decode_image(buf.getvalue())


def test_accepted_results(model_dir: Path, scans) -> None:
    model = load_model(model_dir, "tiny-inference")
    results = analyse(scans, model)
    assert len(results) == len(scans)
    for scan, r in zip(scans, results, strict=True):
        assert r.gate.accepted
        assert r.label in CLASSES
        assert r.probabilities is not None and list(r.probabilities) == list(CLASSES)
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert r.confidence == pytest.approx(max(r.probabilities.values()))
        assert r.label == max(r.probabilities, key=r.probabilities.get)
        assert r.cam is not None and r.cam.shape == scan.pixels.shape[:2]
        assert r.cam.dtype == np.float32 and r.cam.min() >= 0.0 and r.cam.max() <= 1.0
        top, bottom, left, right = preprocess(scan.pixels, model.input_size).box
        outside = np.ones(r.cam.shape, bool)
        outside[top:bottom, left:right] = False
        assert not r.cam[outside].any()  # the model never saw pixels outside the crop
        for png in (r.overlay_png, r.heatmap_png):
            decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
            assert decoded.shape == (*scan.pixels.shape[:2], 3)


def test_rejected_image_has_only_gate(model_dir: Path, scans) -> None:
    model = load_model(model_dir, "tiny-inference")
    results = analyse([scans[0], _colour_photo(), scans[1]], model)
    assert [r.gate.accepted for r in results] == [True, False, True]
    rejected = results[1]
    assert rejected.gate.code == "not_brain_mri"
    assert (rejected.label, rejected.probabilities, rejected.cam, rejected.overlay_png) == (None,) * 4
    alone = analyse([scans[1]], model)[0]  # batch composition does not change a result
    assert alone.probabilities == pytest.approx(results[2].probabilities, abs=1e-5)
    np.testing.assert_allclose(alone.cam, results[2].cam, atol=1e-5)


def test_temperature_from_card_is_applied(model_dir: Path, scans) -> None:
    model = load_model(model_dir, "tiny-inference")
    calibrated = analyse(scans[:1], model)[0].probabilities
    card_path = model_dir / "tiny-inference.card.json"
    card = json.loads(card_path.read_text())
    card["temperature"] = 1.0
    other_dir = model_dir.parent / "t1"
    other_dir.mkdir(exist_ok=True)
    (other_dir / card_path.name).write_text(json.dumps(card))
    (other_dir / "tiny-inference.weights.h5").write_bytes((model_dir / "tiny-inference.weights.h5").read_bytes())
    raw = analyse(scans[:1], load_model(other_dir, "tiny-inference"))[0].probabilities
    logits = np.log(np.array(list(raw.values())))
    expected = np.exp(logits / 1.6) / np.exp(logits / 1.6).sum()
    np.testing.assert_allclose(list(calibrated.values()), expected, atol=1e-5)


def test_requested_class(model_dir: Path, scans) -> None:
    model = load_model(model_dir, "tiny-inference")
    default = analyse(scans[:1], model)[0]
    for c in CLASSES:
        r = analyse(scans[:1], model, class_index=c)[0]
        assert r.label == default.label  # the label is the prediction, whatever map is asked for
        assert r.explained == c
        if c == default.explained:
            np.testing.assert_allclose(r.cam, default.cam, atol=1e-6)
    predicted = analyse(scans[:1], model, class_index=None)[0]
    assert predicted.explained == predicted.label
    with pytest.raises(ValueError):
        analyse(scans[:1], model, class_index="astrocytoma")


def test_default_map_explains_a_tumour_class(model_dir: Path, scans) -> None:
    """Never a map of "no tumour": the finding's map, or the most likely tumour class's."""
    model = load_model(model_dir, "tiny-inference")
    for r in analyse(scans, model):
        tumours = {c: p for c, p in r.probabilities.items() if c != "notumor"}
        assert r.explained == max(tumours, key=tumours.get)
        if r.label != "notumor":
            assert r.explained == r.label
    # The map drawn by default is the map one gets by asking for that class explicitly.
    for scan in scans:
        default = analyse([scan], model)[0]
        explicit = analyse([scan], model, class_index=default.explained)[0]
        np.testing.assert_allclose(default.cam, explicit.cam, atol=1e-6)


def test_empty_and_all_rejected(model_dir: Path) -> None:
    model = load_model(model_dir, "tiny-inference")
    assert analyse([], model) == []
    (only,) = analyse([_colour_photo()], model)
    assert not only.gate.accepted
