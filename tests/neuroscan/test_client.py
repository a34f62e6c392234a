"""`neuroscan submit` as a hospital engineer runs it: a folder of DICOM files against a live stack."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless
from pypdf import PdfReader

from cli.client import collect_files
from shared.reports.wording import DISCLAIMER
from tests.support.dicomkit import jpeg_baseline, mr_dataset, planted_phi, to_bytes
from tests.support.images import brain_png, brain_slice
from tests.support.stack import DICOM_STACK_ENV, DICOM_STACK_PORTS, LiveStack

ROOT = Path(__file__).resolve().parents[2]


def _dicom(seed: int, **kw: Any) -> Dataset:
    ds = mr_dataset(brain_slice(seed, "meningioma").astype(np.float64) / 255.0, **kw)
    planted_phi(ds, "CLIQJZ")
    return ds


def _folder(root: Path) -> Path:
    folder = root / "study"
    (folder / "series2").mkdir(parents=True)
    (folder / "a.dcm").write_bytes(to_bytes(_dicom(1, bits=12)))
    rle = _dicom(2, bits=16)
    rle.compress(RLELossless)
    (folder / "series2" / "b").write_bytes(to_bytes(rle))  # no extension: found by magic bytes
    (folder / "c.dcm").write_bytes(to_bytes(jpeg_baseline(_dicom(3, bits=8))))
    (folder / "d.dcm").write_bytes(to_bytes(_dicom(4, bits=12, frames=3)))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("x/e.dcm", to_bytes(_dicom(5)))
        zf.writestr("x/f.dcm", to_bytes(_dicom(6)))
    (folder / "more.zip").write_bytes(archive.getvalue())
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def stack(live_stack: Any) -> LiveStack:
    return live_stack("embedded", port_range=DICOM_STACK_PORTS["embedded"], env=DICOM_STACK_ENV,
                      tenant="hospital-deid")


def _submit(stack: LiveStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEUROSCAN_API_URL": stack.base_url, "NEUROSCAN_API_KEY": stack.api_key,
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "cli.main", "submit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_collect_files_by_magic_bytes(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    names = [p.name for p in collect_files([folder])]
    assert names == ["a.dcm", "c.dcm", "d.dcm", "more.zip", "b"]


def test_folder_of_dicom_gives_json_fhir_pngs_and_pdf_per_scan(stack: LiveStack,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "results"
    run = _submit(stack, str(_folder(tmp_path)), "--wait", "--out", str(out), "--chunk-size", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "accepted 6" in run.stderr and "done 6" in run.stderr and "failed 0" in run.stderr
    results = sorted(out.glob("*.fhir.json"))
    assert len(results) == 6
    for fhir_path in results:
        scan_id = fhir_path.name.removesuffix(".fhir.json")
        scan = json.loads((out / f"{scan_id}.json").read_text())
        assert scan["state"] == "succeeded" and scan["patient_ref"].startswith("P-")
        report = DiagnosticReport.model_validate_json(fhir_path.read_text())
        assert report.status == "final" and len(report.result) == 4
        for suffix in ("heatmap", "overlay"):
            assert (out / f"{scan_id}.{suffix}.png").read_bytes().startswith(b"\x89PNG")
        text = " ".join((PdfReader(out / f"{scan_id}.pdf").pages[0].extract_text() or "").split())
        assert DISCLAIMER in text and scan["study_ref"] in text
        for name in (f"{scan_id}.json", f"{scan_id}.fhir.json"):
            assert "CLIQJZ" not in (out / name).read_text()
    assert "succeeded" in run.stdout


def test_rejected_files_make_a_non_zero_exit_with_a_summary(stack: LiveStack,
                                                            tmp_path: Path) -> None:
    ct = to_bytes(mr_dataset(modality="CT"))
    (tmp_path / "ct.dcm").write_bytes(ct)
    (tmp_path / "ok.png").write_bytes(brain_png(7))
    run = _submit(stack, str(tmp_path / "ct.dcm"), str(tmp_path / "ok.png"), "--wait")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "ct.dcm" in run.stdout and "rejected" in run.stdout
    assert "dicom_modality_not_allowed" in run.stdout


def test_missing_key_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "ok.png").write_bytes(brain_png(8))
    env = {k: v for k, v in os.environ.items() if k != "NEUROSCAN_API_KEY"}
    run = subprocess.run([sys.executable, "-m", "cli.main", "submit", str(tmp_path)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "NEUROSCAN_API_KEY" in run.stderr
