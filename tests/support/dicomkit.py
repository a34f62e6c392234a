"""Build real DICOM Part 10 files in tests (pydicom Dataset + FileMetaDataset), no fixtures on disk.

`mr_dataset` makes an MR image; `planted_phi` puts unique marker strings into identifying
attributes (top level, nested sequences, private tags) so leak tests can search for them.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)


def brain_like(size: int = 96, seed: int = 0) -> np.ndarray:
    """A float image in [0, 1]: a bright ellipse with texture on black (enough to decode)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    head = (xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1
    img = np.where(head, 0.55 + 0.25 * np.cos(6 * xx) * np.sin(5 * yy), 0.0)
    img = img + head * rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1)


def mr_dataset(pixels: np.ndarray | None = None, *, bits: int = 16, signed: bool = False,
               frames: int = 1, photometric: str = "MONOCHROME2",
               modality: str = "MR") -> Dataset:
    """An uncompressed MR image (or multi-frame) with realistic pixel module attributes."""
    img = brain_like() if pixels is None else pixels
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.Rows, ds.Columns = img.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)
    stack = np.stack([img * (0.5 + 0.5 * k / max(frames - 1, 1)) for k in range(frames)])
    top = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    low = -(2 ** (bits - 1)) if signed else 0
    values = np.round(low + stack * (top - low))
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16,
             (16, True): np.int16}[(ds.BitsAllocated, signed)]
    arr = values.astype(dtype)
    if frames > 1:
        ds.NumberOfFrames = frames
    else:
        arr = arr[0]
    ds.PixelData = arr.tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def jpeg_baseline(ds: Dataset, quality: int = 95) -> Dataset:
    """Re-encode an 8-bit single-frame MR dataset as JPEG Baseline (Pillow's encoder)."""
    from PIL import Image
    from pydicom.uid import JPEGBaseline8Bit

    arr = ds.pixel_array
    assert arr.dtype == np.uint8 and arr.ndim == 2
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    return ds


def gdcm_compress(ds: Dataset, syntax: str) -> Dataset:
    """Compress with GDCM (JPEG lossless process 14 / SV1, JPEG-LS lossless) via a temp file."""
    import tempfile

    import gdcm
    import pydicom

    kinds = {"jpeg_lossless": gdcm.TransferSyntax.JPEGLosslessProcess14,
             "jpeg_lossless_sv1": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
             "jpeg_ls_lossless": gdcm.TransferSyntax.JPEGLSLossless}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = f"{tmp}/in.dcm", f"{tmp}/out.dcm"
        ds.save_as(src, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(src)
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(kinds[syntax]))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(dst)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()
        return pydicom.dcmread(dst)


# Unique markers: each one must never be found outside the client's own copy.
def planted_phi(ds: Dataset, tag: str = "ZQX") -> dict[str, str]:
    """Plant PHI with unique markers in >20 identifying attributes; returns keyword -> marker."""
    m: dict[str, str] = {}

    def put(target: Dataset, keyword: str, value: Any, marker: str | None = None) -> None:
        setattr(target, keyword, value)
        m[keyword] = marker or str(value)

    put(ds, "PatientName", f"{tag}DOE^JANEPN", f"{tag}DOE")
    put(ds, "PatientID", f"{tag}MRN4711")
    put(ds, "OtherPatientIDs", f"{tag}OTHERID88")
    put(ds, "PatientBirthDate", "19470312")
    put(ds, "PatientAddress", f"{tag}12 ELM STREET SPRINGFIELD")
    put(ds, "PatientTelephoneNumbers", f"{tag}5550199")
    put(ds, "PatientMotherBirthName", f"{tag}MOTHERNAME")
    put(ds, "ReferringPhysicianName", f"{tag}REFERRER^ALAN")
    put(ds, "PerformingPhysicianName", f"{tag}PERFORMER^BETH")
    put(ds, "OperatorsName", f"{tag}OPERATOR^CARL")
    put(ds, "RequestingPhysician", f"{tag}REQUESTER^DANA")
    put(ds, "InstitutionName", f"{tag}ST ELSEWHERE HOSPITAL")
    put(ds, "InstitutionAddress", f"{tag}1 HOSPITAL ROAD")
    put(ds, "InstitutionalDepartmentName", f"{tag}NEURORADIOLOGY WEST")
    put(ds, "StationName", f"{tag}MRSTATION7")
    put(ds, "AccessionNumber", f"{tag}ACC1234")
    put(ds, "StudyID", f"{tag}STUDY9")
    put(ds, "DeviceSerialNumber", f"{tag}SERIAL0042")
    put(ds, "StudyDescription", f"{tag}BRAIN FOR MR SMITH")
    put(ds, "SeriesDescription", f"{tag}AX T1 SMITH")
    put(ds, "ImageComments", f"{tag}PATIENT MOVED, WIFE PRESENT")
    put(ds, "AdditionalPatientHistory", f"{tag}HISTORY OF FALLS")
    put(ds, "StudyDate", "20190704")
    put(ds, "SeriesDate", "20190704")
    put(ds, "AcquisitionDateTime", "20190704101500")
    ds.StudyTime = "101500"
    ds.PatientSex = "F"
    ds.PatientAge = "072Y"  # planted, but too short to be a searchable marker
    put(ds, "MedicalRecordLocator", f"{tag}LOCATOR77")
    put(ds, "EthnicGroup", f"{tag}ETHNIC")
    put(ds, "Occupation", f"{tag}KEEPER")
    put(ds, "ProtocolName", f"{tag}PROTOCOL FOR DOE")
    uid_marker = "1.2.826.0.1.3680043.9.7777." + "".join(str(ord(c)) for c in tag)
    put(ds, "FrameOfReferenceUID", uid_marker + ".5")
    # UIDs are identifiers too: make the study UID carry a marker we can search for.
    put(ds, "StudyInstanceUID", uid_marker + ".1")
    put(ds, "SeriesInstanceUID", uid_marker + ".2")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid_marker + ".3"
    m["SOPInstanceUID"] = uid_marker + ".3"

    other = Dataset()
    other.PatientID = f"{tag}NESTEDOTHERID"
    other.IssuerOfPatientID = f"{tag}ISSUER"
    ds.OtherPatientIDsSequence = Sequence([other])
    m["OtherPatientIDsSequence.PatientID"] = other.PatientID
    m["OtherPatientIDsSequence.IssuerOfPatientID"] = other.IssuerOfPatientID

    request = Dataset()
    request.RequestedProcedureID = f"{tag}REQPROC"
    request.ScheduledProcedureStepID = f"{tag}SPSID"
    ds.RequestAttributesSequence = Sequence([request])
    m["RequestAttributesSequence.RequestedProcedureID"] = request.RequestedProcedureID

    # A nested sequence that is kept (anatomy) with a person's name hidden inside.
    anatomy = Dataset()
    anatomy.CodeValue, anatomy.CodingSchemeDesignator, anatomy.CodeMeaning = "T-A0100", "SRT", "Brain"
    observer = Dataset()
    observer.PersonName = f"{tag}OBSERVER^EVE"
    observer.PersonIdentificationCodeSequence = Sequence()
    anatomy.ContentSequence = Sequence([observer])
    ds.AnatomicRegionSequence = Sequence([anatomy])
    m["AnatomicRegionSequence.PersonName"] = f"{tag}OBSERVER"

    referenced = Dataset()
    referenced.ReferencedSOPClassUID = MRImageStorage
    referenced.ReferencedSOPInstanceUID = uid_marker + ".4"
    ds.ReferencedImageSequence = Sequence([referenced])
    m["ReferencedImageSequence.ReferencedSOPInstanceUID"] = uid_marker + ".4"

    block = ds.private_block(0x0029, "ACME PRIVATE", create=True)
    block.add_new(0x10, "LO", f"{tag}PRIVATE NAME FIELD")
    m["private(0029,1010)"] = f"{tag}PRIVATE NAME FIELD"
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)  # overlay data
    ds.add_new(0x60004000, "LT", f"{tag}OVERLAY COMMENT")
    m["OverlayComments"] = f"{tag}OVERLAY COMMENT"
    return m
