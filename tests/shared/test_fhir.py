"""FHIR export: R4B model round trip plus the structure a hospital's FHIR server expects."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from shared.fhir import PATIENT_REF_SYSTEM, scan_to_fhir
from shared.labels import CLASSES
from shared.reports.wording import DISCLAIMER

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PROBS = {"glioma": 0.81, "meningioma": 0.1, "notumor": 0.05, "pituitary": 0.04}


def _scan(**over: Any) -> dict[str, Any]:
    scan = {"id": "5b0d9d7e-1111-4222-8333-944455556666", "state": "succeeded",
            "prediction": {"label": "glioma", "confidence": 0.81, "probabilities": PROBS},
            "model": {"name": "neuroscan-cnn", "version": "2.1.0", "sha256": "ab" * 32},
            "heatmap_url": "/media/results/h.png?sig=1", "overlay_url": "https://cdn.example/o.png",
            "created_at": NOW, "finished_at": NOW, "patient_ref": "P-00112233445566778899",
            "study_ref": "S-99887766554433221100", "error": None}
    scan.update(over)
    return scan


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


def _check_r4_invariants(doc: dict[str, Any]) -> None:
    # Round trip through the models, from JSON text as a FHIR server would receive it.
    again = DiagnosticReport.model_validate_json(json.dumps(doc))
    assert again.model_dump(mode="json", by_alias=True, exclude_none=True) == doc
    contained = {c["id"]: c for c in doc.get("contained", [])}
    refs = _references(doc)
    for cid in contained:  # dom-3: every contained resource is referenced
        assert f"#{cid}" in refs, cid
    for ref in refs:  # and every local reference resolves
        assert not ref.startswith("#") or ref[1:] in contained, ref


def test_succeeded_scan_is_a_final_report_with_four_observations_and_the_model() -> None:
    doc = scan_to_fhir(_scan(), base_url="http://api.test:8000")
    _check_r4_invariants(doc)
    assert doc["resourceType"] == "DiagnosticReport" and doc["status"] == "final"
    assert doc["code"]["text"] == "Brain MRI AI triage"
    assert doc["subject"]["identifier"] == {"system": PATIENT_REF_SYSTEM,
                                            "value": "P-00112233445566778899"}
    assert {"system": "urn:neuroscan:study-ref", "value": "S-99887766554433221100"} in doc["identifier"]
    contained = {c["id"]: c for c in doc["contained"]}
    device = Device.model_validate(contained["model"])
    assert device.deviceName[0].name == "neuroscan-cnn" and device.version[0].value == "2.1.0"
    assert device.identifier[0].value == "ab" * 32
    assert [r["reference"] for r in doc["result"]] == [f"#prob-{c}" for c in CLASSES]
    values = {}
    for label in CLASSES:
        obs = Observation.model_validate(contained[f"prob-{label}"])
        assert obs.device.reference == "#model" and obs.status == "final"
        assert obs.valueQuantity.code == "1" and obs.valueQuantity.system == "http://unitsofmeasure.org"
        values[label] = float(obs.valueQuantity.value)
    assert values == PROBS
    assert contained["prob-glioma"]["interpretation"][0]["text"] == "Predicted class"
    forms = {f["title"]: f for f in doc["presentedForm"]}
    assert forms["Grad-CAM heatmap"] == {"contentType": "image/png", "title": "Grad-CAM heatmap",
                                         "url": "http://api.test:8000/media/results/h.png?sig=1"}
    assert forms["Grad-CAM overlay"]["url"] == "https://cdn.example/o.png"
    assert forms["NeuroScan PDF report"]["url"].endswith(
        "/v1/scans/5b0d9d7e-1111-4222-8333-944455556666/report.pdf")
    assert "Glioma (confidence 81.0%; Review)" in doc["conclusion"] and DISCLAIMER in doc["conclusion"]
    assert doc["issued"] == "2026-03-01T12:00:00Z"


def test_failed_scan_is_cancelled_with_the_reason() -> None:
    doc = scan_to_fhir(_scan(state="failed", prediction=None, heatmap_url=None, overlay_url=None,
                             error={"code": "not_brain_mri", "message": "Not a brain MRI."}),
                       base_url="http://x")
    _check_r4_invariants(doc)
    assert doc["status"] == "cancelled" and "result" not in doc and "contained" not in doc
    assert "not_brain_mri" in doc["conclusion"] and DISCLAIMER in doc["conclusion"]


def test_queued_scan_is_registered_and_without_patient_ref_has_no_subject() -> None:
    doc = scan_to_fhir(_scan(state="queued", prediction=None, patient_ref=None, finished_at=None),
                       base_url="http://x")
    _check_r4_invariants(doc)
    assert doc["status"] == "registered" and "subject" not in doc and "issued" not in doc
