"""DICOM body-part evidence end to end: read before de-identification, kept through it, and
applied the same way by the live service (PostgreSQL + Redis + a real Celery worker) and by
offline `neuroscan predict`."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from typer.testing import CliRunner

from tests.conftest import TINY_MODEL_NAME
from tests.support.dicomkit import mr_dataset, planted_phi, to_bytes
from tests.support.stack import LiveStack, wait_for_scan

pytestmark = pytest.mark.slow


def _dicom(identify: bool = True, **attrs: str) -> bytes:
    ds = mr_dataset()
    if identify:  # a realistic header: PHI everywhere, including the descriptions
        planted_phi(ds, "HGX")
        del ds.AnatomicRegionSequence  # planted as Brain; each case sets its own evidence
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return to_bytes(ds)


def _cardiac_region() -> bytes:
    ds = mr_dataset()
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "80891009", "SCT", "Heart"
    ds.AnatomicRegionSequence = Sequence([item])
    ds.SeriesDescription = "cine_retro_sax"
    return to_bytes(ds)


CASES = {
    "abdomen.dcm": (_dicom(BodyPartExamined="ABDOMEN", StudyDescription="HGX MR ABDOMEN SMITH"),
                    "DICOM header says BodyPartExamined=ABDOMEN"),
    "shoulder.dcm": (_dicom(StudyDescription="HGX SHOULDER LEFT^DOE", SeriesDescription="PD FS"),
                     "DICOM header says StudyDescription=SHOULDER"),
    "cardiac.dcm": (_dicom(SeriesDescription="HGX 4CH CINE CARDIAC", ProtocolName="cine"),
                    "DICOM header says SeriesDescription=CARDIAC"),
    "heart-region.dcm": (_cardiac_region(), "DICOM header says AnatomicRegionSequence=HEART"),
}
BRAINS = {
    "brain.dcm": _dicom(BodyPartExamined="BRAIN", StudyDescription="HGX MRI BRAIN W/O"),
    "head-and-spine.dcm": _dicom(BodyPartExamined="CSPINE", StudyDescription="HGX HEAD/C-SPINE"),
    "no-evidence.dcm": _dicom(StudyDescription="", SeriesDescription="AX T1 MPRAGE"),
}


@pytest.fixture(scope="module")
def client(live_stack):
    stack: LiveStack = live_stack("pg")
    with stack.client() as c:
        yield c


def _submit(client: httpx.Client, name: str, data: bytes) -> str:
    r = client.post("/v1/scans", files={"file": (name, data, "application/dicom")})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_service_fails_non_brain_headers_with_the_evidence(client: httpx.Client) -> None:
    ids = {name: _submit(client, name, data) for name, (data, _) in CASES.items()}
    for name, (_, reason) in CASES.items():
        body = wait_for_scan(client, ids[name])
        assert body["state"] == "failed", (name, body)
        assert body["error"]["code"] == "not_brain_mri"
        assert body["error"]["message"].startswith(reason), body["error"]
        assert body["gate"]["accepted"] is False and body["prediction"] is None
        assert body["gate"]["header"]["verdict"] == "not_brain"
        assert "HGX" not in json.dumps(body)  # the evidence is a vocabulary word, never PHI


def test_service_passes_brain_and_silent_headers(client: httpx.Client) -> None:
    ids = {name: _submit(client, name, data) for name, data in BRAINS.items()}
    for name, scan_id in ids.items():
        body = wait_for_scan(client, scan_id)
        assert body["state"] == "succeeded", (name, body)
        assert body["gate"]["accepted"] is True
    verdicts = {name: wait_for_scan(client, i)["gate"]["header"]["verdict"] for name, i in ids.items()}
    assert verdicts == {"brain.dcm": "brain", "head-and-spine.dcm": "brain",
                        "no-evidence.dcm": "unknown"}


def test_predict_applies_the_same_header_gate(tiny_model_dir: Path, tmp_path: Path) -> None:
    from cli.main import app

    paths = []
    for name, data in {**{n: d for n, (d, _) in CASES.items()}, **BRAINS}.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    result = CliRunner().invoke(app, ["predict", *paths, "--model-dir", str(tiny_model_dir),
                                      "--name", TINY_MODEL_NAME])
    assert result.exit_code == 0, result.output
    lines = {Path(r["file"]).name: r for r in map(json.loads, result.output.strip().splitlines())}
    for name, (_, reason) in CASES.items():
        assert lines[name]["label"] is None, lines[name]
        assert lines[name]["gate"]["code"] == "not_brain_mri"
        assert lines[name]["gate"]["reason"].startswith(reason)
    for name in BRAINS:
        assert lines[name]["gate"]["accepted"] is True and lines[name]["label"] is not None
