"""De-identify a DICOM file before anything is stored (PS3.15 Annex E, Basic Profile).

Applied to the whole dataset, nested sequences included:
- the attributes of Annex E's table that matter for MR (names, IDs, addresses, institution,
  station, device serial, descriptions, comments, requesting/performing staff, patient
  characteristics) are removed, or emptied where the IOD needs them present (type 2);
- belt and braces beyond the table: every person name (PN), every free-text value (LO, SH,
  LT, ST, UT, UC, AE, AS, UR) not on a short list of technical keywords, every private tag,
  every curve (50xx) and overlay (60xx) group and every unknown or UN element is removed;
- dates (DA, DT) shift by a per-tenant, per-patient number of days (1 to 3650 back), so
  intervals within a patient survive (Retain Longitudinal Temporal Information with Modified
  Dates); times of day are kept;
- UIDs (UI) other than DICOM's own registry UIDs are re-mapped to `2.25.<128-bit integer>`
  from an HMAC, so the same UID always maps to the same new one within a tenant;
- study, series and protocol descriptions keep only their body-part words (Clean Descriptors
  Option, `shared.anatomy.clean_descriptor`: every kept word is from our vocabulary), so the
  input gate reads the same header evidence after de-identification as before;
- PatientID and PatientName become the pseudonym `patient_ref`; PatientIdentityRemoved=YES,
  DeidentificationMethod(+CodeSequence) record what was done; the 128-byte preamble is zeroed.

Pseudonyms: a per-tenant key K = HMAC-SHA256(SECRET_KEY, "neuroscan/deid/v1/" + tenant_id);
patient_ref = "P-" + first 20 hex of HMAC(K, "patient\\0" + PatientID + "^" + IssuerOfPatientID),
study_ref = "S-" + first 20 hex of HMAC(K, "study\\0" + StudyInstanceUID). Stable, not
reversible without the secret; nothing needs a table. Values are never logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
from dataclasses import dataclass, field
from typing import Any

from shared.anatomy import DESCRIPTORS, clean_descriptor
from shared.dicom import check_dataset, read_dataset
from shared.settings import Settings, get_settings

_KEY_CONTEXT = b"neuroscan/deid/v1/"
_MAX_SHIFT_DAYS = 3650

# Annex E attributes acted on by keyword (the rest of the table is caught by the VR rules).
_EMPTY = frozenset({  # "Z": type 2 in the MR IOD, so present but empty
    "AccessionNumber", "PatientBirthDate", "PatientSex", "ReferringPhysicianName", "StudyID",
})
_REMOVE = frozenset({  # "X"
    "AcquisitionComments", "AdditionalPatientHistory", "AdmissionID", "AdmittingDiagnosesDescription",
    "Allergies", "AuthorObserverSequence", "BranchOfService", "ContentCreatorName",
    "ContentSequence", "CountryOfResidence", "CurrentPatientLocation", "DerivationDescription",
    "DeviceSerialNumber", "DigitalSignaturesSequence", "EthnicGroup", "FrameComments",
    "GraphicAnnotationSequence", "IconImageSequence", "ImageComments", "InstitutionAddress",
    "InstitutionCodeSequence", "InstitutionName", "InstitutionalDepartmentName",
    "IssuerOfPatientID", "LastMenstrualDate", "MedicalAlerts", "MedicalRecordLocator",
    "MilitaryRank", "ModifiedAttributesSequence", "NameOfPhysiciansReadingStudy",
    "Occupation", "OperatorIdentificationSequence", "OperatorsName", "OriginalAttributesSequence",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientAddress",
    "PatientAge", "PatientBirthName", "PatientBirthTime", "PatientComments",
    "PatientInsurancePlanCodeSequence", "PatientMotherBirthName", "PatientReligiousPreference",
    "PatientSize", "PatientState", "PatientTelephoneNumbers", "PatientWeight",
    "PerformedProcedureStepDescription", "PerformedProcedureStepID", "PerformedStationName",
    "PerformingPhysicianIdentificationSequence", "PerformingPhysicianName", "PersonAddress",
    "PersonIdentificationCodeSequence", "PersonName", "PersonTelephoneNumbers",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "PhysiciansReadingStudyIdentificationSequence", "PregnancyStatus", "ProtocolName",
    "ReasonForStudy", "ReferencedPatientAliasSequence", "ReferencedPatientSequence",
    "ReferencedPerformedProcedureStepSequence", "ReferencedStudySequence",
    "ReferringPhysicianAddress", "ReferringPhysicianIdentificationSequence",
    "ReferringPhysicianTelephoneNumbers", "RegionOfResidence", "RequestAttributesSequence",
    "RequestedProcedureDescription", "RequestedProcedureID", "RequestingPhysician",
    "RequestingService", "ResponsibleOrganization", "ResponsiblePerson", "SeriesDescription",
    "SmokingStatus", "SpecialNeeds", "StationName", "StudyComments", "StudyDescription",
    "StudyIDIssuer", "TextComments", "TimezoneOffsetFromUTC", "VerifyingObserverName",
    "VerifyingObserverSequence", "VerifyingOrganization", "VisitComments",
})
_TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC", "AE", "AS", "UR"})
# Free-text keywords that describe the machine or the sequence, never the person.
_SAFE_TEXT = frozenset({
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "SequenceName",
    "PulseSequenceName", "ReceiveCoilName", "TransmitCoilName", "ImagedNucleus", "RescaleType",
    "CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning",
    "LongCodeValue", "URNCodeValue", "ContextIdentifier", "MappingResource",
})
_REGISTRY_UID_ROOT = "1.2.840.10008."  # SOP classes, transfer syntaxes: not identifying


@dataclass
class DeidResult:
    data: bytes
    patient_ref: str
    study_ref: str
    removed: list[str] = field(default_factory=list)  # keywords or tags acted on, never values

    @property
    def stored_name(self) -> str:
        """A neutral file name: the client's may carry a patient name."""
        return f"{self.study_ref}-{hashlib.sha256(self.data).hexdigest()[:8]}.dcm"


@dataclass
class _Context:
    key: bytes
    shift: dt.timedelta
    acted: dict[str, None] = field(default_factory=dict)  # an ordered set

    def note(self, name: str) -> None:
        self.acted.setdefault(name, None)

    def uid(self, old: str) -> str:
        digest = hmac.new(self.key, b"uid\0" + old.encode(), hashlib.sha256).digest()
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def tenant_key(tenant_id: str, settings: Settings | None = None) -> bytes:
    """The per-tenant pseudonymisation key derived from SECRET_KEY."""
    secret = (settings or get_settings()).secret_key.encode()
    return hmac.new(secret, _KEY_CONTEXT + tenant_id.encode(), hashlib.sha256).digest()


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """`P-…` / `S-…`: 20 upper-case hex characters of HMAC(key, kind NUL value)."""
    digest = hmac.new(key, kind.encode() + b"\0" + value.encode(), hashlib.sha256).hexdigest()
    return f"{kind[0].upper()}-{digest[:20].upper()}"


def deidentify(data: bytes, tenant_id: str, settings: Settings | None = None) -> DeidResult:
    """De-identified Part 10 bytes with the tenant's pseudonymous patient and study refs."""
    settings = settings or get_settings()
    ds = read_dataset(data, settings)
    check_dataset(ds, settings)  # burned-in annotation and documents never get this far
    key = tenant_key(tenant_id, settings)
    identity = _patient_identity(ds, data)
    patient_ref = pseudonym(key, "patient", identity)
    study_uid = str(getattr(ds, "StudyInstanceUID", "") or "")
    study_ref = pseudonym(key, "study", study_uid or hashlib.sha256(data).hexdigest())
    days = int(hmac.new(key, b"dates\0" + identity.encode(), hashlib.sha256).hexdigest()[:8], 16)
    ctx = _Context(key=key, shift=dt.timedelta(days=-(1 + days % _MAX_SHIFT_DAYS)))

    if "SOPInstanceUID" not in ds:  # needed for the file meta; derive one that is stable
        ds.SOPInstanceUID = ctx.uid("sop:" + hashlib.sha256(data).hexdigest())
    descriptors = {kw: clean_descriptor(ds.get(kw)) for kw in DESCRIPTORS}
    _clean(ds, ctx)
    kept = {kw: value for kw, value in descriptors.items() if value}
    for kw, value in kept.items():
        setattr(ds, kw, value)
    ds.PatientID = ds.PatientName = patient_ref
    _mark(ds, cleaned_descriptors=bool(kept))
    _rebuild_meta(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return DeidResult(data=buf.getvalue(), patient_ref=patient_ref, study_ref=study_ref,
                      removed=list(ctx.acted))


def _patient_identity(ds: Any, data: bytes) -> str:
    pid = str(getattr(ds, "PatientID", "") or "").strip()
    if pid:
        return f"{pid}^{str(getattr(ds, 'IssuerOfPatientID', '') or '').strip()}"
    # No ID: fall back to the study, so one study's files at least share a patient_ref.
    return "study:" + str(getattr(ds, "StudyInstanceUID", "") or hashlib.sha256(data).hexdigest())


def _clean(ds: Any, ctx: _Context) -> None:
    for tag in list(ds.keys()):
        elem = ds[tag]
        kw = elem.keyword
        name = kw or f"({tag.group:04X},{tag.element:04X})"
        if (tag.is_private or (tag.group & 0xFF00) in (0x5000, 0x6000) or not kw
                or elem.VR == "UN" or kw in _REMOVE):
            del ds[tag]
            ctx.note("private tags" if tag.is_private else name)
        elif kw in _EMPTY:
            elem.value = ""
            ctx.note(kw)
        elif elem.VR == "SQ":
            for item in elem.value:
                _clean(item, ctx)
        elif elem.VR == "PN" or (elem.VR in _TEXT_VRS and kw not in _SAFE_TEXT):
            del ds[tag]
            ctx.note(kw)
        elif elem.VR in ("DA", "DT") and elem.value not in (None, ""):
            elem.value = _map_values(elem.value, _shift_da if elem.VR == "DA" else _shift_dt, ctx)
            ctx.note(kw)
        elif elem.VR == "UI" and elem.value not in (None, ""):
            elem.value = _map_values(elem.value, lambda v, c: v if v.startswith(
                _REGISTRY_UID_ROOT) else c.uid(v), ctx)
            ctx.note(kw)


def _map_values(value: Any, fn: Any, ctx: _Context) -> Any:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return fn(str(value), ctx)
    return [fn(str(v), ctx) for v in value]


def _shift_da(value: str, ctx: _Context) -> str:
    try:
        return (dt.datetime.strptime(value.strip()[:8], "%Y%m%d") + ctx.shift).strftime("%Y%m%d")
    except ValueError:
        return ""  # unparseable dates are dropped, not passed through


def _shift_dt(value: str, ctx: _Context) -> str:
    text = value.strip()
    for sign in "+-&":  # drop the UTC offset: it hints at the place
        cut = text.find(sign, 8)
        if cut != -1:
            text = text[:cut]
    date = _shift_da(text[:8], ctx) if len(text) >= 8 else ""
    return date + text[8:] if date else ""


def _mark(ds: Any, *, cleaned_descriptors: bool = False) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    methods = ["PS3.15 E Basic Profile", "Modified Dates Option", "NeuroScan deid v1"]
    options = [("113100", "Basic Application Confidentiality Profile"),
               ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")]
    if cleaned_descriptors:
        methods.insert(2, "Clean Descriptors Option (body-part words only)")
        options.append(("113105", "Clean Descriptors Option"))
    ds.DeidentificationMethod = methods
    codes = []
    for value, meaning in options:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(codes)


def _rebuild_meta(ds: Any) -> None:
    """A fresh file meta group: no source AE titles or private meta elements survive."""
    from pydicom.dataset import FileMetaDataset

    old = ds.file_meta
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = old.TransferSyntaxUID
    meta.MediaStorageSOPClassUID = getattr(ds, "SOPClassUID", old.get("MediaStorageSOPClassUID"))
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    ds.preamble = b"\0" * 128  # a preamble can carry a whole TIFF (dual-personality files)
