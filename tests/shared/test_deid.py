"""`deidentify` on its own: planted PHI gone, dates shifted consistently, UIDs re-mapped, pixels kept."""

from __future__ import annotations

import datetime as dt
import io
import re

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, MRImageStorage

from shared.deid import deidentify
from shared.dicom import decode_dicom
from shared.errors import InputError
from shared.settings import Settings
from tests.support.dicomkit import mr_dataset, planted_phi, to_bytes

S = Settings(secret_key="unit-test-secret", allowed_modalities=["MR"])
UID = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


def _planted(tag: str = "ZQX") -> tuple[bytes, dict[str, str]]:
    ds = mr_dataset()
    markers = planted_phi(ds, tag)
    return to_bytes(ds), markers


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_no_planted_marker_survives_anywhere_in_the_bytes() -> None:
    data, markers = _planted()
    assert len(markers) >= 20
    for marker in markers.values():
        assert marker.encode() in data, marker  # the test plants what it claims to plant
    out = deidentify(data, "tenant-a", S)
    for keyword, marker in markers.items():
        assert marker.encode() not in out.data, f"{keyword} leaked"
        assert marker not in " ".join(out.removed)
    for date in (b"19470312", b"20190704"):
        assert date not in out.data


def test_attributes_removed_emptied_or_replaced() -> None:
    data, _ = _planted()
    out = deidentify(data, "tenant-a", S)
    ds = _read(out.data)
    assert ds.PatientID == out.patient_ref and str(ds.PatientName) == out.patient_ref
    assert out.patient_ref.startswith("P-") and out.study_ref.startswith("S-")
    for kw in ("AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientBirthDate",
               "PatientSex"):
        assert kw in ds and ds[kw].value in ("", None), kw
    for kw in ("PatientAddress", "InstitutionName", "StationName", "DeviceSerialNumber",
               "OperatorsName", "OtherPatientIDsSequence", "RequestAttributesSequence",
               "StudyDescription", "ImageComments", "PatientAge", "Occupation"):
        assert kw not in ds, kw
        assert kw in out.removed
    assert not any(elem.tag.is_private for elem in ds.iterall())
    assert not any((elem.tag.group & 0xFF00) == 0x6000 for elem in ds.iterall())
    assert not any(elem.VR == "PN" and str(elem.value) not in ("", out.patient_ref)
                   for elem in ds.iterall())
    # The kept anatomy sequence lost the person hidden inside it but kept its codes.
    assert ds.AnatomicRegionSequence[0].CodeMeaning == "Brain"
    assert "ContentSequence" not in ds.AnatomicRegionSequence[0]
    assert ds.PatientIdentityRemoved == "YES"
    assert {c.CodeValue for c in ds.DeidentificationMethodCodeSequence} == {"113100", "113107"}
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert out.data[:128] == b"\0" * 128


def test_dates_shift_consistently_per_patient() -> None:
    data, _ = _planted()
    first = _read(deidentify(data, "tenant-a", S).data)
    shift = dt.datetime.strptime(first.StudyDate, "%Y%m%d") - dt.datetime(2019, 7, 4)
    assert dt.timedelta(days=-3650) <= shift < dt.timedelta(0)
    assert first.SeriesDate == first.StudyDate
    assert first.AcquisitionDateTime == first.StudyDate + "101500"
    # Another study of the same patient a year later keeps the one-year interval.
    ds = mr_dataset()
    planted_phi(ds, "ZQX")
    ds.StudyDate = "20200704"
    ds.StudyInstanceUID = "1.2.3.4.99"
    later = _read(deidentify(to_bytes(ds), "tenant-a", S).data)
    gap = (dt.datetime.strptime(later.StudyDate, "%Y%m%d")
           - dt.datetime.strptime(first.StudyDate, "%Y%m%d"))
    assert gap == dt.timedelta(days=366)


def test_uids_remap_consistently_within_a_tenant_and_differ_across_tenants() -> None:
    data, _ = _planted()
    a1, a2 = deidentify(data, "tenant-a", S), deidentify(data, "tenant-a", S)
    b = deidentify(data, "tenant-b", S)
    da, db = _read(a1.data), _read(b.data)
    assert a1.data == a2.data and a1.patient_ref == a2.patient_ref
    assert a1.patient_ref != b.patient_ref and a1.study_ref != b.study_ref
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert UID.match(da[kw].value) and len(da[kw].value) <= 64, kw
        assert da[kw].value != db[kw].value
    assert da.SOPClassUID == MRImageStorage  # registry UIDs are not identifying
    ref = da.ReferencedImageSequence[0]
    assert ref.ReferencedSOPClassUID == MRImageStorage and UID.match(ref.ReferencedSOPInstanceUID)


def test_same_series_stays_one_series_and_patient_ref_ignores_study() -> None:
    ds1, ds2 = mr_dataset(), mr_dataset()
    ds2.StudyInstanceUID, ds2.SeriesInstanceUID = ds1.StudyInstanceUID, ds1.SeriesInstanceUID
    for ds in (ds1, ds2):
        ds.PatientID = "MRN-1"
    r1, r2 = (deidentify(to_bytes(ds), "t", S) for ds in (ds1, ds2))
    d1, d2 = _read(r1.data), _read(r2.data)
    assert d1.SeriesInstanceUID == d2.SeriesInstanceUID and d1.SOPInstanceUID != d2.SOPInstanceUID
    assert r1.study_ref == r2.study_ref and r1.patient_ref == r2.patient_ref
    other = mr_dataset()
    other.PatientID = "MRN-1"
    r3 = deidentify(to_bytes(other), "t", S)
    assert r3.patient_ref == r1.patient_ref and r3.study_ref != r1.study_ref


@pytest.mark.parametrize("compress", [False, True])
def test_pixels_are_untouched(compress: bool) -> None:
    ds = mr_dataset()
    planted_phi(ds)
    if compress:
        ds.compress(JPEG2000Lossless)
    data = to_bytes(ds)
    out = deidentify(data, "t", S)
    np.testing.assert_array_equal(decode_dicom(out.data, settings=S).pixels,
                                  decode_dicom(data, settings=S).pixels)


def test_burned_in_annotation_is_refused_before_deid() -> None:
    ds = mr_dataset()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(InputError) as err:
        deidentify(to_bytes(ds), "t", S)
    assert err.value.code == "dicom_burned_in_annotation"
