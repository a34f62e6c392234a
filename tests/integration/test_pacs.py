"""Orthanc in front of NeuroScan, for real: a PACS sends a multi-slice series by DICOMweb
STOW-RS and by DICOM C-STORE; NeuroScan answers with a series finding and files an SR, the
key slice's overlay and the PDF back into Orthanc under the ORIGINAL study, while the
original patient identifiers never reach NeuroScan's database, storage or logs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.support import dicomkit
from tests.support import orthanc as orthanc_support
from tests.support.stack import LiveStack, free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not orthanc_support.available(),
    reason="Orthanc and its DICOMweb plugin are not installed (scripts/ensure_services.sh)")]

TENANT = "pacs-hospital"
NEUROSCAN_AET, ORTHANC_AET = "NEUROSCAN", "ORTHANC"


@pytest.fixture(scope="module")
def pacs(live_stack: Callable[..., LiveStack], tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[LiveStack, orthanc_support.Orthanc, int]]:
    http_port, dicom_port = free_port(19300, 19349), free_port(19350, 19399)
    store_port = free_port(19400, 19449)
    pacs = orthanc_support.Orthanc(tmp_path_factory.mktemp("orthanc"), http_port, dicom_port)
    tenants = [{"tenant": TENANT, "ae_title": NEUROSCAN_AET, "calling_aes": [ORTHANC_AET],
                "destination_url": pacs.dicomweb}]
    env = {"DICOM_TENANTS": json.dumps(tenants), "DICOM_SERIES_SETTLE_S": "3"}
    stack = live_stack("embedded", port_range=(19450, 19499), env=env, tenant=TENANT)
    pacs.start(
        dicomweb_servers={"neuroscan": {"Url": f"{stack.base_url}/dicomweb/",
                                        "HttpHeaders": {"Authorization": f"Bearer {stack.api_key}"}}},
        modalities={"neuroscan": [NEUROSCAN_AET, "127.0.0.1", store_port]})
    log = open(stack.root / "dicom-listen.log", "ab")  # noqa: SIM115
    listener = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "dicom-listen", "--port", str(store_port)],
        env={**stack.env, "DICOM_PORT": str(store_port)}, stdout=log, stderr=subprocess.STDOUT,
        cwd=stack.root, start_new_session=True)
    try:
        yield stack, pacs, store_port
    finally:
        listener.terminate()
        listener.wait(timeout=20)
        log.close()
        pacs.stop()


def _series(tag: str, slices: int = 4) -> tuple[list[bytes], dict[str, str]]:
    """A brain MR series of `slices` slices for one patient with unique marker identifiers."""
    study, series = generate_uid(), generate_uid()
    phi = {"PatientName": f"PACS^{tag}^MARKER", "PatientID": f"MRN-{tag}-77",
           "AccessionNumber": f"ACC{tag}9", "study": study, "series": series}
    files = []
    for k in range(slices):
        ds = dicomkit.mr_dataset(dicomkit.brain_like(seed=k))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = phi["PatientName"], phi["PatientID"]
        ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
        ds.AccessionNumber = phi["AccessionNumber"]
        ds.StudyDate, ds.StudyTime = "20240102", "101500"
        ds.SeriesDescription, ds.BodyPartExamined = "AX T1 BRAIN", "BRAIN"
        ds.InstanceNumber = k + 1
        files.append(dicomkit.to_bytes(ds))
    return files, phi


def _new_series(stack: LiveStack, known: set[str], timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    with stack.client() as client:
        while time.monotonic() < deadline:
            found = [s["id"] for s in client.get("/v1/series").json() if s["id"] not in known]
            if found:
                return str(found[0])
            time.sleep(0.5)
    raise AssertionError(f"no new series in NeuroScan\n{stack.logs()}")


def _wait_delivered(stack: LiveStack, series_id: str, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with stack.client() as client:
        while time.monotonic() < deadline:
            body: dict[str, Any] = client.get(f"/v1/series/{series_id}").json()
            if body["delivery"]["state"] in ("delivered", "failed") or body["state"] == "failed":
                return body
            time.sleep(1.0)
    raise AssertionError(f"series {series_id} not delivered: {body}\n{stack.logs()}")


def _known(stack: LiveStack) -> set[str]:
    with stack.client() as client:
        return {s["id"] for s in client.get("/v1/series").json()}


def _check_round_trip(stack: LiveStack, pacs: orthanc_support.Orthanc, series_id: str,
                      phi: dict[str, str], slices: int) -> None:
    body = _wait_delivered(stack, series_id)
    assert body["state"] == "succeeded", body
    assert body["delivery"]["state"] == "delivered", body
    assert len(body["slices"]) == slices and all(s["state"] == "succeeded" for s in body["slices"])
    finding = body["finding"]
    top = max(s["tumour_probability"] for s in body["slices"])
    assert finding["tumour_probability"] == pytest.approx(top)
    key = max(body["slices"], key=lambda s: s["tumour_probability"])
    assert body["key_slice"]["id"] == key["scan_id"] and body["key_slice"]["heatmap_url"]

    # In Orthanc, under the original study, next to the original images and the same patient.
    found = [pydicom.dcmread(io.BytesIO(b)) for b in pacs.study_instances(phi["study"])]
    by_modality: dict[str, list[Any]] = {}
    for ds in found:
        by_modality.setdefault(ds.Modality, []).append(ds)
    assert sorted(by_modality) == ["DOC", "MR", "OT", "SR"], sorted(by_modality)
    assert len(by_modality["MR"]) == slices
    assert len(pacs.rest("GET", "/studies")) == len(pacs.rest("GET", "/patients"))
    sr, sc, doc = by_modality["SR"][0], by_modality["OT"][0], by_modality["DOC"][0]
    for ds in (sr, sc, doc):
        assert ds.StudyInstanceUID == phi["study"]
        assert str(ds.PatientID) == phi["PatientID"] and str(ds.PatientName) == phi["PatientName"]
        assert ds.SeriesInstanceUID != phi["series"]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR, TID 1500
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.pixel_array.ndim == 3
    assert doc.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert bytes(doc.EncapsulatedDocument).startswith(b"%PDF")
    original_keys = {str(d.SOPInstanceUID) for d in by_modality["MR"]}
    key_ref = sc.SourceImageSequence[0].ReferencedSOPInstanceUID
    assert key_ref in original_keys  # the overlay points at the original key slice
    codes = json.dumps(sr.to_json_dict())
    assert body["finding"]["label"].upper() in codes

    # Nowhere in NeuroScan: database (with its WAL), stored files, logs.
    markers = [phi["PatientName"], phi["PatientID"], phi["AccessionNumber"], phi["study"],
               phi["series"], *original_keys]
    places = [p for p in Path(stack.root).rglob("*") if p.is_file()]
    for path in places:
        data = path.read_bytes()
        for marker in markers:
            assert marker.encode() not in data, f"{marker!r} found in {path}"


def test_stow_rs_series_round_trip(pacs: tuple[LiveStack, orthanc_support.Orthanc, int]) -> None:
    stack, orthanc, _ = pacs
    files, phi = _series("STOW")
    for data in files:
        orthanc.upload(data)
    series_orthanc_id = orthanc.rest("POST", "/tools/lookup", content=phi["series"])[0]["ID"]
    known = _known(stack)
    orthanc.rest("POST", "/dicom-web/servers/neuroscan/stow",
                 json={"Resources": [series_orthanc_id], "Synchronous": True})
    series_id = _new_series(stack, known)  # completed by the settle time (3 s here)
    _check_round_trip(stack, orthanc, series_id, phi, len(files))


def test_c_store_series_round_trip(pacs: tuple[LiveStack, orthanc_support.Orthanc, int]) -> None:
    stack, orthanc, _ = pacs
    files, phi = _series("CSTORE", slices=3)
    for data in files:
        orthanc.upload(data)
    series_orthanc_id = orthanc.rest("POST", "/tools/lookup", content=phi["series"])[0]["ID"]
    known = _known(stack)
    orthanc.rest("POST", "/modalities/neuroscan/store",
                 json={"Resources": [series_orthanc_id], "Synchronous": True})
    series_id = _new_series(stack, known)
    with stack.client() as client:  # the explicit call, instead of the settle time
        assert client.post(f"/v1/series/{series_id}/complete").status_code == 202
    _check_round_trip(stack, orthanc, series_id, phi, len(files))


def test_stow_rs_answer_and_auth(pacs: tuple[LiveStack, orthanc_support.Orthanc, int]) -> None:
    """The STOW-RS answer is PS3.18 JSON under the sender's UIDs; no key, no entry."""
    stack, _, _ = pacs
    files, phi = _series("ANSWER", slices=1)
    bad = dicomkit.mr_dataset(modality="CT")
    boundary = "xyzzy"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + files[0]
            + f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + dicomkit.to_bytes(bad) + f"\r\n--{boundary}--\r\n".encode())
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    with stack.client() as client:
        answer = client.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype})
        assert answer.status_code == 202, answer.text
        assert answer.headers["content-type"].startswith("application/dicom+json")
        data = answer.json()
        ref = data["00081199"]["Value"][0]
        assert ref["00081155"]["Value"] == [pydicom.dcmread(io.BytesIO(files[0])).SOPInstanceUID]
        failed = data["00081198"]["Value"][0]
        assert failed["00081197"]["Value"] == [0x0122]
        assert failed["00091001"]["Value"] == ["dicom_modality_not_allowed"]
        unsupported = client.post("/dicomweb/studies", content=b"x",
                                  headers={"Content-Type": "application/dicom"})
        assert unsupported.status_code == 415
    with stack.client(api_key="nsk_wrong") as client:
        assert client.post("/dicomweb/studies", content=body,
                           headers={"Content-Type": ctype}).status_code == 401


def test_client_library_dicomweb_series(pacs: tuple[LiveStack, orthanc_support.Orthanc, int],
                                        tmp_path: Path) -> None:
    """`neuroscan.client` against the live stack: STOW-RS a folder, wait for the series."""
    from neuroscan.client import Client, NeuroScanError

    stack, orthanc, _ = pacs
    files, phi = _series("CLIENT", slices=2)
    for k, data in enumerate(files):
        (tmp_path / f"slice{k}.dcm").write_bytes(data)
        orthanc.upload(data)  # the PACS has the study the results are filed under
    with Client(stack.base_url, stack.api_key) as ns:
        stow = ns.submit_dicomweb([tmp_path])
        assert stow.status == 200 and len(stow.stored) == 2 and len(stow.series_ids) == 1
        series = ns.wait_series(stow.series_ids[0], complete=True, delivered=True, timeout=300)
        assert series.state == "succeeded" and series.label is not None
        assert series.delivery_state == "delivered"
        assert series.key_scan_id in {s["scan_id"] for s in series.slices}
        assert ns.scan(series.key_scan_id).done
    with Client(stack.base_url, "nsk_wrong", retries=1) as ns, \
            pytest.raises(NeuroScanError) as err:
        ns.series(stow.series_ids[0])
    assert err.value.status == 401 and err.value.code == "unauthorized"
