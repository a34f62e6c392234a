"""Body-part evidence in DICOM headers: the verdict, its survival through de-identification,
the gate's reason, and the real MR files that packages ship."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from shared.anatomy import clean_descriptor, header_evidence
from shared.deid import deidentify
from shared.imaging import decode_image
from shared.settings import Settings
from tests.support.dicomkit import mr_dataset, planted_phi, to_bytes
from worker.gate import assess

S = Settings(allowed_modalities=["MR"], secret_key="anatomy-test-secret-0123456789abcdef")


def _with(**attrs: str) -> bytes:
    ds = mr_dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return to_bytes(ds)


def _region(meaning: str, code: str = "") -> Sequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SCT", meaning
    return Sequence([item])


NOT_BRAIN = [
    ({"BodyPartExamined": "ABDOMEN"}, "BodyPartExamined=ABDOMEN"),
    ({"BodyPartExamined": "LSPINE"}, "BodyPartExamined=LSPINE"),
    ({"StudyDescription": "MR SHOULDER RIGHT"}, "StudyDescription=SHOULDER"),
    ({"SeriesDescription": "cine_4ch_cardiac"}, "SeriesDescription=CARDIAC"),
    ({"ProtocolName": "t2_tse_sag_L-SPINE"}, "ProtocolName=SPINE"),
    ({"StudyDescription": "KNEE^ROUTINE", "ProtocolName": "pd_fs_cor"}, "StudyDescription=KNEE"),
    ({"BodyPartExamined": "HEART", "StudyDescription": "CMR"}, "BodyPartExamined=HEART"),
    ({"StudyDescription": "Becken/Pelvis", "SeriesDescription": "t1 liver"},
     "StudyDescription=PELVIS"),
]
BRAIN = [
    {"BodyPartExamined": "HEAD"},
    {"BodyPartExamined": "BRAIN"},
    {"StudyDescription": "MRI BRAIN W/WO CONTRAST"},
    {"SeriesDescription": "AX T2 FLAIR", "ProtocolName": "NEURO^HEAD"},
    # Conflicting fields: a brain series is never flagged.
    {"BodyPartExamined": "CSPINE", "StudyDescription": "BRAIN + C-SPINE"},
    {"BodyPartExamined": "HEADNECK"},
    {"StudyDescription": "Schaedel nativ"},
]
UNKNOWN = [
    {},
    {"BodyPartExamined": ""},
    {"StudyDescription": "", "SeriesDescription": "   ", "ProtocolName": ""},
    {"SeriesDescription": "AX T1 MPRAGE", "ProtocolName": "t1_mprage_sag_p2"},
    {"StudyDescription": "ZQXBRAINARD FOR MR SMITH"},  # a word containing BRAIN is not BRAIN
]


@pytest.mark.parametrize(("attrs", "reason"), NOT_BRAIN)
def test_non_brain_headers_are_rejected_by_the_gate_naming_the_evidence(attrs, reason) -> None:
    image = decode_image(_with(**attrs))
    outcome = assess(image)
    assert not outcome.accepted and outcome.code == "not_brain_mri"
    assert outcome.reason.startswith(f"DICOM header says {reason}")
    assert outcome.to_dict()["header"]["verdict"] == "not_brain"


@pytest.mark.parametrize("attrs", BRAIN)
def test_brain_headers_pass(attrs) -> None:
    image = decode_image(_with(**attrs))
    assert image.meta["anatomy"]["verdict"] == "brain"
    assert assess(image).accepted


@pytest.mark.parametrize("attrs", UNKNOWN)
def test_empty_or_unrecognised_headers_are_no_evidence(attrs) -> None:
    image = decode_image(_with(**attrs))
    assert image.meta["anatomy"]["verdict"] == "unknown"
    assert assess(image).accepted  # the image gate decides alone, and this image is fine


def test_anatomic_region_sequence_top_level_and_per_frame() -> None:
    ds = mr_dataset()
    ds.AnatomicRegionSequence = _region("Shoulder", "16982005")
    assert header_evidence(ds).reason == "DICOM header says AnatomicRegionSequence=SHOULDER"
    ds.AnatomicRegionSequence = _region("", "12738006")  # SNOMED CT code for brain, no meaning
    assert header_evidence(ds).verdict == "brain"

    enhanced = mr_dataset()
    frame = Dataset()
    frame.AnatomicRegionSequence = _region("Abdomen")
    group = Dataset()
    group.FrameAnatomySequence = Sequence([frame])
    enhanced.SharedFunctionalGroupsSequence = Sequence([group])
    assert header_evidence(enhanced).term == "ABDOMEN"


@pytest.mark.parametrize(("attrs", "_"), NOT_BRAIN)
def test_evidence_survives_de_identification(attrs, _) -> None:
    raw = _with(**attrs)
    before = decode_image(raw).meta["anatomy"]
    after = decode_image(deidentify(raw, "tenant-a", S).data).meta["anatomy"]
    assert after == before


@pytest.mark.parametrize("attrs", BRAIN + UNKNOWN)
def test_brain_and_unknown_verdicts_survive_de_identification(attrs) -> None:
    raw = _with(**attrs)
    before = decode_image(raw).meta["anatomy"]["verdict"]
    assert decode_image(deidentify(raw, "tenant-a", S).data).meta["anatomy"][
        "verdict"] == before


def test_descriptors_keep_only_body_part_words_and_say_so() -> None:
    ds = mr_dataset()
    planted_phi(ds)
    ds.StudyDescription = "ZQXSMITH SHOULDER MR 2019 DR JONES"
    ds.ProtocolName = "ZQXDOE knee left"
    out = deidentify(to_bytes(ds), "tenant-a", S)
    kept = pydicom.dcmread(io.BytesIO(out.data))
    assert kept.StudyDescription == "SHOULDER" and kept.ProtocolName == "KNEE"
    assert "SeriesDescription" not in kept  # "ZQXAX T1 SMITH": no body-part word
    assert b"ZQX" not in out.data and b"JONES" not in out.data
    assert "113105" in {c.CodeValue for c in kept.DeidentificationMethodCodeSequence}
    assert clean_descriptor("Mr Head Smith, brain tumour follow-up") == "HEAD BRAIN"
    assert clean_descriptor("T1 MPRAGE") is None


def test_real_mr_files_that_packages_ship() -> None:
    """pydicom's abdomen MR and its carotid-study localizers say so; its head and brain(-MRA)
    files and nibabel's brain DICOMs (DTI, resting state, TOF, a neuro T1 map) are never
    flagged."""
    abdomen = pydicom.dcmread(get_testdata_file("examples_overlay.dcm"))
    assert header_evidence(abdomen).reason == "DICOM header says BodyPartExamined=ABDOMEN"
    root = Path(get_testdata_file("MR_small.dcm")).parent
    series = [pydicom.dcmread(p, stop_before_pixels=True)
              for p in sorted(root.glob("dicomdirtests/*/MR*/*"))]
    carotids = [ds for ds in series if ds.StudyDescription == "Carotids"]
    assert len(carotids) == 2
    assert {header_evidence(ds).reason for ds in carotids} == {
        "DICOM header says StudyDescription=CAROTIDS"}
    brains = [Path(get_testdata_file("MR_small.dcm"))]
    brains += [Path(ds.filename) for ds in series if ds.StudyDescription != "Carotids"]
    nib = Path(pydicom.__file__).parents[1] / "nibabel"
    brains += sorted(nib.glob("**/tests/data/*.dcm"))
    assert len(brains) >= 10
    verdicts = {p.name: header_evidence(pydicom.dcmread(p, stop_before_pixels=True)).verdict
                for p in brains}
    assert "not_brain" not in verdicts.values(), verdicts
