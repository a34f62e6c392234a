"""PDF reports: text extracted with pypdf, page 1 rendered with pdftoppm and checked for ink."""

from __future__ import annotations

import io
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader

from shared.reports.pdf import render_batch_report, render_scan_report
from shared.reports.wording import DISCLAIMER, confidence_band, flat_metrics
from tests.support.dicomkit import brain_like

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PROBS = {"glioma": 0.0412, "meningioma": 0.9311, "notumor": 0.0105, "pituitary": 0.0172}


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _scan(**over: object) -> dict:
    scan = {"id": "5b0d9d7e-1111-4222-8333-944455556666", "state": "succeeded",
            "filename": "S-1234-1.dcm", "format": "dicom", "size_bytes": 20480,
            "prediction": {"label": "meningioma", "confidence": 0.9311, "probabilities": PROBS},
            "gate": {"accepted": True, "code": "ok", "reason": "brain MRI", "scores": {}},
            "model": {"name": "neuroscan-cnn", "version": "2.1.0", "sha256": "c0ffee" * 10 + "abcd"},
            "created_at": NOW, "started_at": NOW, "finished_at": NOW, "batch_id": None,
            "patient_ref": "P-0A1B2C3D4E5F60718293", "study_ref": "S-99887766554433221100",
            "error": None}
    scan.update(over)
    return scan


def _text(pdf: bytes) -> str:
    return " ".join((page.extract_text() or "") for page in PdfReader(io.BytesIO(pdf)).pages)


def _page1_ink(pdf: bytes, tmp_path: Path) -> float:
    src = tmp_path / "r.pdf"
    src.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "50", "-f", "1", "-l", "1", "-png", str(src),
                    str(tmp_path / "page")], check=True, timeout=60)
    page = np.asarray(Image.open(next(tmp_path.glob("page*.png"))).convert("L"), dtype=np.float32)
    return float(np.mean(page < 200))


def test_scan_report_states_result_probabilities_model_refs_and_disclaimer(tmp_path: Path) -> None:
    grey = (brain_like(128) * 255).astype(np.uint8)
    overlay = np.stack([grey, grey // 2, grey // 3], axis=-1)
    card = {"name": "neuroscan-cnn", "version": "2.1.0",
            "metrics": {"accuracy": 0.8765, "macro_f1": 0.8642, "per_class": {"glioma": {"recall": 0.81}}}}
    pdf = render_scan_report(_scan(), _png(grey), _png(overlay), card)
    assert pdf.startswith(b"%PDF")
    text = " ".join(_text(pdf).split())
    assert "Predicted class: Meningioma (93.1%)" in text
    for shown in ("4.1%", "93.1%", "1.1%", "1.7%", "Glioma", "No tumour", "Pituitary tumour"):
        assert shown in text, shown
    assert "Confidence band: High" in text
    assert DISCLAIMER in text
    assert "P-0A1B2C3D4E5F60718293" in text and "S-99887766554433221100" in text
    assert "5b0d9d7e-1111-4222-8333-944455556666" in text
    assert "c0ffee" * 10 + "abcd" in text and "version 2.1.0" in text
    assert "accuracy" in text and "0.8765" in text and "per_class.glioma.recall" in text
    assert "accepted (ok)" in text and "2026-03-01 12:00:00 UTC" in text
    assert 0.05 < _page1_ink(pdf, tmp_path) < 0.9


def test_failed_scan_report_says_why_in_words(tmp_path: Path) -> None:
    scan = _scan(state="failed", prediction=None,
                 gate={"accepted": False, "code": "not_brain_mri", "reason": "a colour photograph"},
                 error={"code": "not_brain_mri",
                        "message": "The image does not look like a brain MRI slice."})
    pdf = render_scan_report(scan, None, None, None)
    text = " ".join(_text(pdf).split())
    assert "Analysis failed" in text
    assert "The image does not look like a brain MRI slice." in text and "not_brain_mri" in text
    assert "rejected (not_brain_mri)" in text and "Predicted class" not in text
    assert DISCLAIMER in text
    assert _page1_ink(pdf, tmp_path) > 0.01


def test_client_text_is_escaped_not_interpreted() -> None:
    pdf = render_scan_report(_scan(filename="<b>x</b> & <font size=40>y"), None, None, None,
                             include_filename=True)  # a tenant that opted in to file names
    assert "<b>x</b> & <font size=40>y" in _text(pdf)
    # By default the file name stays out (tests/integration/test_filenames_private.py).
    assert "<b>x</b>" not in _text(render_scan_report(
        _scan(filename="<b>x</b> & <font size=40>y"), None, None, None))


def test_batch_report_lists_every_scan(tmp_path: Path) -> None:
    ok = _scan()
    bad = _scan(id="77777777-8888-4999-8aaa-bbbbbbbbbbbb", state="failed", prediction=None,
                error={"code": "undecodable_image", "message": "broken"})
    pdf = render_batch_report({"id": "batch-42", "created_at": NOW}, [ok, bad])
    text = " ".join(_text(pdf).split())
    assert "batch-42" in text and "1 failed, 1 succeeded" in text
    assert "undecodable_image" in text and "Meningioma" in text and "High" in text
    assert DISCLAIMER in text
    assert _page1_ink(pdf, tmp_path) > 0.01


@pytest.mark.parametrize("conf,band", [(0.95, "High"), (0.90, "High"), (0.8999, "Review"),
                                       (0.70, "Review"), (0.6999, "Expert review required")])
def test_confidence_bands(conf: float, band: str) -> None:
    assert confidence_band(conf) == band


def test_flat_metrics_keeps_numbers_only() -> None:
    card = {"metrics": {"accuracy": 0.5, "note": "text", "flag": True, "cm": [[1, 2]],
                        "per_class": {"a": {"f1": 0.25}}}}
    assert flat_metrics(card) == [("accuracy", "0.5"), ("per_class.a.f1", "0.25")]


def test_scan_report_names_the_class_the_map_explains_and_what_it_means() -> None:
    from shared.explanation import explanation_for

    grey = (brain_like(96) * 255).astype(np.uint8)
    explanation = explanation_for("meningioma", PROBS).model_dump()
    text = " ".join(_text(render_scan_report(_scan(explanation=explanation), _png(grey),
                                             _png(grey), None)).split())
    assert "Where the model looked for meningioma (p = 0.93)" in text
    assert "What the map means. Grad-CAM map: the warmer the colour" in text
    notumor = {"glioma": 0.02, "meningioma": 0.05, "notumor": 0.9, "pituitary": 0.03}
    explanation = explanation_for("notumor", notumor).model_dump()
    assert explanation["label"] == "meningioma" and explanation["is_finding"] is False
    scan = _scan(prediction={"label": "notumor", "confidence": 0.9, "probabilities": notumor},
                 explanation=explanation)
    text = " ".join(_text(render_scan_report(scan, _png(grey), _png(grey), None)).split())
    assert ("No tumour found. Where the model looked for the most likely tumour class, "
            "meningioma (p = 0.05)") in text
