"""A "no tumour" answer in Chromium and in its PDF: the map is the most likely tumour class's,
labelled as such, with a sentence on what the map means (never a map of "no tumour").

The stack serves real tiny weights whose `notumor` logit bias was raised, saved through the
production save path with its card, so every slice reads notumor."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from pypdf import PdfReader

from shared.labels import CLASSES, DISPLAY_NAMES
from tests.e2e.support import open_case
from tests.support.images import brain_png
from tests.support.stack import LiveStack

pytestmark = pytest.mark.slow

NAME = "neuroscan-tiny-notumor"


@pytest.fixture(scope="module")
def notumor_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    from worker.model import ModelConfig, build_model, save_model_files

    keras.utils.set_random_seed(99)
    config = ModelConfig.tiny(name=NAME)
    model = build_model(config)
    dense = model.get_layer("logits")
    kernel, bias = dense.get_weights()
    bias[CLASSES.index("notumor")] += 8.0
    dense.set_weights([kernel, bias])
    out = tmp_path_factory.mktemp("notumor-model")
    save_model_files(model, config, out, training={"note": "tiny, notumor bias +8; for tests"})
    return out


@pytest.fixture(scope="module")
def stack(live_stack, notumor_model_dir: Path) -> LiveStack:
    return live_stack("embedded", port_range=(19000, 19999),
                      env={"MODEL_DIR": str(notumor_model_dir), "MODEL_NAME": NAME})


def test_notumor_answer_shows_the_most_likely_tumour_map_labelled_on_page_and_pdf(
        stack: LiveStack, page: Page, tmp_path: Path) -> None:
    path = tmp_path / "normal-slice.png"
    path.write_bytes(brain_png(104, "notumor"))
    scan_id = open_case(page, stack, path, timeout_ms=120_000)
    expect(page.locator("#verdict-label")).to_have_text("No tumour")

    with stack.client() as client:
        scan = client.get(f"/v1/scans/{scan_id}").raise_for_status().json()
    probs = scan["prediction"]["probabilities"]
    tumour = max((c for c in CLASSES if c != "notumor"), key=probs.get)
    name = DISPLAY_NAMES[tumour].lower()
    explanation = scan["explanation"]
    assert explanation["label"] == tumour and explanation["is_finding"] is False
    assert explanation["probability"] == pytest.approx(probs[tumour], abs=1e-4)
    title = (f"No tumour found. Where the model looked for the most likely tumour class, "
             f"{name} (p = {probs[tumour]:.2f})")
    assert explanation["title"] == title

    expect(page.locator("#explanation-title")).to_have_text(title)
    expect(page.locator("#explanation-meaning")).to_have_text(re.compile(
        rf"^Grad-CAM map: the warmer the colour, the more that region raised the model's score "
        rf"for {name}\. It is not an outline of a lesion"))
    heat = page.locator(".layer img.heat")
    expect(heat).to_be_visible()

    with page.expect_download() as download_info:
        page.click("#download-pdf")
    pdf = Path(download_info.value.path()).read_bytes()
    text = " ".join((p.extract_text() or "") for p in PdfReader(io.BytesIO(pdf)).pages)
    flat = re.sub(r"\s+", " ", text)
    assert "Predicted class: No tumour" in flat
    assert f"Where the model looked for the most likely tumour class, {name}" in flat
    assert "What the map means." in flat and "It is not an outline of a lesion" in flat
