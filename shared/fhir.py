"""A scan as a FHIR R4 DiagnosticReport, built and validated with fhir.resources' R4B models.

fhir.resources 8 models R5 by default and R4B in `fhir.resources.R4B`; R4B is wire-compatible
with R4 for DiagnosticReport, Observation, Device and Attachment, so we build with R4B and
serve `application/fhir+json` with `fhirVersion=4.0`.

Shape: the report contains one Observation per class probability (valueQuantity, UCUM "1")
and the model as a Device (name, version, SHA-256 identifier). R4 does not allow a Device as
DiagnosticReport.performer (Practitioner, PractitionerRole, Organization, CareTeam only), so
the model is named where R4 allows a device: every Observation's `device` points at it. The
subject is the pseudonymous patient (a logical reference by identifier, no Patient resource);
the heatmap, overlay and PDF are `presentedForm` attachments linked by URL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.labels import CLASSES, DISPLAY_NAMES
from shared.reports.wording import DISCLAIMER, as_plain_dict, confidence_band

FHIR_MEDIA_TYPE = "application/fhir+json; fhirVersion=4.0"
PATIENT_REF_SYSTEM = "urn:neuroscan:patient-ref"
STUDY_REF_SYSTEM = "urn:neuroscan:study-ref"
MODEL_HASH_SYSTEM = "urn:neuroscan:model-sha256"
CLASS_SYSTEM = "urn:neuroscan:class"
_STATUS = {"queued": "registered", "processing": "partial", "succeeded": "final",
           "failed": "cancelled"}


def _instant(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).isoformat(timespec="seconds")


def _absolute(url: str | None, base_url: str) -> str | None:
    if not url:
        return None
    return url if "://" in url else base_url.rstrip("/") + "/" + url.lstrip("/")


def scan_to_fhir(scan: Any, *, base_url: str) -> dict[str, Any]:
    """The DiagnosticReport as JSON-ready dict, validated against the R4B model."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    scan = as_plain_dict(scan)
    report = DiagnosticReport.model_validate(_build(scan, base_url))
    return report.model_dump(mode="json", by_alias=True, exclude_none=True)


def _subject(scan: dict[str, Any]) -> dict[str, Any] | None:
    if not scan.get("patient_ref"):
        return None
    return {"type": "Patient", "display": f"Pseudonymous patient {scan['patient_ref']}",
            "identifier": {"system": PATIENT_REF_SYSTEM, "value": scan["patient_ref"]}}


def _device(model: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Device", "id": "model", "status": "active",
            "type": {"text": "AI image classification model (software)"},
            "deviceName": [{"name": model.get("name") or "unknown", "type": "model-name"}],
            "version": [{"value": model.get("version") or "unknown"}],
            "identifier": [{"system": MODEL_HASH_SYSTEM, "value": model.get("sha256") or "unknown"}],
            "note": [{"text": DISCLAIMER}]}


def _observation(scan: dict[str, Any], label: str, p: float, predicted: str) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": f"prob-{label}", "status": "final",
        "code": {"coding": [{"system": CLASS_SYSTEM, "code": label, "display": DISPLAY_NAMES[label]}],
                 "text": f"AI probability of {DISPLAY_NAMES[label].lower()}"},
        "valueQuantity": {"value": round(float(p), 6), "unit": "probability",
                          "system": "http://unitsofmeasure.org", "code": "1"},
        "device": {"reference": "#model"},
        "effectiveDateTime": _instant(scan.get("finished_at")),
    }
    if label == predicted:
        obs["interpretation"] = [{"text": "Predicted class"}]
    if subject := _subject(scan):
        obs["subject"] = subject
    return obs


def _attachments(scan: dict[str, Any], base_url: str) -> list[dict[str, Any]]:
    forms = []
    for key, title in (("heatmap_url", "Grad-CAM heatmap"), ("overlay_url", "Grad-CAM overlay")):
        if url := _absolute(scan.get(key), base_url):
            forms.append({"contentType": "image/png", "url": url, "title": title})
    forms.append({"contentType": "application/pdf", "title": "NeuroScan PDF report",
                  "url": _absolute(f"/v1/scans/{scan['id']}/report.pdf", base_url)})
    return forms


def _conclusion(scan: dict[str, Any]) -> str:
    prediction, error = scan.get("prediction"), scan.get("error") or {}
    if scan.get("state") == "succeeded" and prediction:
        conf = float(prediction["confidence"])
        name = DISPLAY_NAMES.get(prediction["label"], prediction["label"])
        return (f"AI triage: {name} (confidence {conf:.1%}; {confidence_band(conf)}). "
                + DISCLAIMER)
    if scan.get("state") == "failed":
        return (f"Analysis failed ({error.get('code', 'unknown')}): "
                f"{error.get('message', '')} {DISCLAIMER}")
    return f"Analysis not finished ({scan.get('state')}). {DISCLAIMER}"


def _build(scan: dict[str, Any], base_url: str) -> dict[str, Any]:
    prediction = scan.get("prediction") or None
    contained: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    if prediction:  # the Device only when Observations refer to it (R4 dom-3)
        contained.append(_device(scan.get("model") or {}))
        probs = prediction.get("probabilities") or {}
        for label in CLASSES:
            contained.append(_observation(scan, label, probs.get(label, 0.0), prediction["label"]))
            results.append({"reference": f"#prob-{label}"})
    identifiers = [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{scan['id']}"}]
    if scan.get("study_ref"):
        identifiers.append({"system": STUDY_REF_SYSTEM, "value": scan["study_ref"]})
    doc: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": scan["id"],
        "identifier": identifiers, "status": _STATUS.get(scan.get("state", ""), "registered"),
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "24590-2",
                             "display": "MR Brain"}], "text": "Brain MRI AI triage"},
        "effectiveDateTime": _instant(scan.get("created_at")),
        "issued": _instant(scan.get("finished_at")),
        "conclusion": _conclusion(scan),
        "presentedForm": _attachments(scan, base_url),
    }
    if subject := _subject(scan):
        doc["subject"] = subject
    if contained:
        doc["contained"] = contained
    if results:
        doc["result"] = results
    return {k: v for k, v in doc.items() if v is not None}
