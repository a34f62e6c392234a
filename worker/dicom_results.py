"""A series' results as DICOM objects, filed under the original study (results back to PACS).

Three objects, each in a new series of the original study:
- a Comprehensive SR following TID 1500 "Measurement Report" (highdicom): one measurement
  group (TID 1501) holding the series finding as a qualitative evaluation, the probabilities
  as numeric measurements (UCUM "1"), the model as Algorithm Identification (name, version,
  SHA-256) and the device as observer, the key slice as source image, the disclaimer as text.
  Why TID 1500: it is the template PACS viewers and the IHE AI Results (AIR) profile read for
  AI findings, and it carries image-level qualitative findings, numbers, algorithm identity
  and image references without inventing structure; a Key Object Selection could only point
  at the key slice, and a Basic Text SR would carry the finding as prose no system can read.
- a Secondary Capture (RGB) of the key slice's Grad-CAM overlay;
- the PDF report as Encapsulated PDF.

The patient and study attributes are copied from the PACS's own record of the study
(QIDO-RS at delivery time, in memory only): NeuroScan never stores them, and the objects
land in the same patient and study as the images they describe. Codes: SNOMED CT
404684003 "Clinical finding" names the finding; the four classes and the probability
concepts have no standard codes we can vouch for, so they use the private scheme "99NEUROSC"
(DICOM PS3.16 8.2: private designators begin with "99").
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from shared.labels import CLASSES, DISPLAY_NAMES
from shared.reports.wording import DISCLAIMER

# highdicom logs the UIDs of the datasets it copies from at INFO: the original UIDs must
# never reach a log.
logging.getLogger("highdicom").setLevel(logging.WARNING)

MANUFACTURER = "NeuroScan"
_SCHEME = "99NEUROSC"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
_CLASS_CODES = {c: Code(f"NS-{c.upper()}", _SCHEME, DISPLAY_NAMES[c]) for c in CLASSES}
_FINDING = Code("404684003", "SCT", "Clinical finding")
_P_TUMOUR = Code("NS-P-TUMOUR", _SCHEME, "Probability of tumour (series, max over slices)")
_P_CLASS = {c: Code(f"NS-P-{c.upper()}", _SCHEME, f"Probability of {DISPLAY_NAMES[c].lower()}")
            for c in CLASSES}
_MR_BRAIN = Code("24590-2", "LN", "MR Brain")
_UNIT_ONE = Code("1", "UCUM", "no units")
# Study-level attributes copied from the PACS so the objects join the original study.
PATIENT_STUDY_KEYWORDS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                          "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                          "ReferringPhysicianName")


@dataclass
class SourceSlice:
    sop_uid: str  # original
    sop_class_uid: str  # original
    instance_number: int | None


@dataclass
class SeriesResult:
    """What the objects say: the finding and where it came from (no PHI here)."""

    study_uid: str  # original
    series_uid: str  # original
    label: str
    probability: float
    tumour_probability: float
    key_probabilities: dict[str, float]
    slices_scored: int
    model_name: str
    model_version: str
    model_sha256: str
    key: SourceSlice
    slices: list[SourceSlice]


def reference_dataset(patient_study: Dataset, result: SeriesResult, src: SourceSlice) -> Dataset:
    """A stand-in for an original slice: its UIDs and the study's patient/study module."""
    ds = Dataset()
    for kw in PATIENT_STUDY_KEYWORDS:
        setattr(ds, kw, patient_study.get(kw, "") if kw in patient_study else "")
    ds.StudyInstanceUID = result.study_uid
    ds.SeriesInstanceUID = result.series_uid
    ds.SOPInstanceUID = src.sop_uid
    ds.SOPClassUID = src.sop_class_uid
    ds.Modality = "MR"
    return ds


def build_sr(patient_study: Dataset, result: SeriesResult, series_number: int = 9901) -> Dataset:
    """TID 1500 Measurement Report in a Comprehensive SR (see the module docstring)."""
    evidence = [reference_dataset(patient_study, result, s) for s in result.slices]
    key_ref = reference_dataset(patient_study, result, result.key)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=result.model_name, manufacturer_name=MANUFACTURER,
            model_name=f"{result.model_name} {result.model_version}"))
    algorithm = hd.sr.AlgorithmIdentification(
        name=result.model_name, version=result.model_version,
        parameters=[f"sha256={result.model_sha256}", "series=max over slices of P(tumour)"])
    measurements = [hd.sr.Measurement(name=_P_TUMOUR, value=round(result.tumour_probability, 6),
                                      unit=_UNIT_ONE)]
    measurements += [hd.sr.Measurement(name=_P_CLASS[c], value=round(p, 6), unit=_UNIT_ONE)
                     for c, p in result.key_probabilities.items()]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier="NeuroScan series finding"),
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=key_ref.SOPClassUID,
            referenced_sop_instance_uid=key_ref.SOPInstanceUID)],
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=_FINDING, value=_CLASS_CODES[result.label])])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_MR_BRAIN, imaging_measurements=[group])
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=report[0], series_instance_uid=generate_uid(),
        series_number=series_number, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = "NeuroScan AI finding (research use only)"
    _append_disclaimer(sr)
    return sr


def _append_disclaimer(sr: Dataset) -> None:
    """The disclaimer as a TEXT comment under the measurement group (not verifiable by a
    machine, but read by every SR viewer next to the finding)."""
    text = hd.sr.TextContentItem(name=hd.sr.CodedConcept("121106", "DCM", "Comment"),
                                 value=DISCLAIMER, relationship_type="CONTAINS")
    for item in sr.ContentSequence:
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "126010":
            item.ContentSequence[0].ContentSequence.append(text)  # the measurement group
            return
    sr.ContentSequence.append(text)


def build_overlay(patient_study: Dataset, result: SeriesResult, overlay_png: bytes,
                  series_number: int = 9902) -> Dataset:
    """The key slice's Grad-CAM overlay as an RGB Secondary Capture."""
    pixels = np.asarray(Image.open(io.BytesIO(overlay_png)).convert("RGB"))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference_dataset(patient_study, result, result.key), pixel_array=pixels,
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=("L", "P"), transfer_syntax_uid=ExplicitVRLittleEndian)
    sc.SeriesDescription = "NeuroScan Grad-CAM overlay (research use only)"
    sc.BurnedInAnnotation = "NO"
    sc.DerivationDescription = (f"Grad-CAM of {result.model_name} {result.model_version} for "
                                f"{DISPLAY_NAMES[result.label]} on the key slice")
    sc.SourceImageSequence = [_sop_ref(result.key)]
    return sc


def build_pdf(patient_study: Dataset, result: SeriesResult, pdf: bytes,
              series_number: int = 9903) -> Dataset:
    """The PDF report as an Encapsulated PDF instance (PS3.3 A.45.1)."""
    ref = reference_dataset(patient_study, result, result.key)
    ds = Dataset()
    for kw in (*PATIENT_STUDY_KEYWORDS, "StudyInstanceUID"):
        setattr(ds, kw, ref.get(kw, ""))
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.Manufacturer = MANUFACTURER
    ds.ConversionType = "WSD"
    ds.ContentDate = ds.AcquisitionDateTime = ""
    ds.ContentTime = ""
    ds.BurnedInAnnotation = "NO"
    ds.DocumentTitle = "NeuroScan AI triage report (research use only)"
    ds.SeriesDescription = "NeuroScan PDF report (research use only)"
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.SourceInstanceSequence = [_sop_ref(result.key)]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _sop_ref(src: SourceSlice) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = src.sop_class_uid
    item.ReferencedSOPInstanceUID = src.sop_uid
    return item


def to_part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def patient_study_from_json(study_json: dict[str, Any]) -> Dataset:
    """The study-level attributes from a QIDO-RS answer (PS3.18 JSON), nothing else."""
    ds = Dataset.from_json(study_json)
    keep = Dataset()
    for kw in PATIENT_STUDY_KEYWORDS:
        if kw in ds:
            setattr(keep, kw, ds.get(kw))
    return keep
