"""What a DICOM header says about the body part: brain, not brain, or nothing.

A shoulder or abdomen MR passes every image rule a brain slice passes, and the classifier
then names a tumour with confidence. Scanners usually say what they imaged, in
`BodyPartExamined`, `AnatomicRegionSequence` (also per frame in enhanced MR), and in the
study, series and protocol descriptions. `header_evidence` reads those, in that order, and
gives a verdict:

- `brain` when any of them names the head or brain (a brain series is never flagged, even
  when another field disagrees);
- `not_brain` when none names the head and one names another part (abdomen, shoulder,
  heart, spine...), with the field and the term it said;
- `unknown` when the header says nothing we recognise (empty, missing, sequence names only):
  the image gate decides alone.

Only whole words from the two vocabularies below count ("T1_BRAIN_AX" names the brain,
"BRAINARD" names nothing). De-identification removes free-text descriptions; it keeps, in
their place, only the vocabulary words they contained (`clean_descriptor`, PS3.15's Clean
Descriptors Option), so the verdict read after de-identification is the verdict read before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["brain", "not_brain", "unknown"]

DESCRIPTORS = ("StudyDescription", "SeriesDescription", "ProtocolName")

# Head and brain, as BodyPartExamined defined terms (PS3.16 Annex L), English descriptions
# and the usual German, French, Spanish and Italian protocol words.
BRAIN_TERMS = frozenset({
    "HEAD", "BRAIN", "SKULL", "CEREBRUM", "CEREBRAL", "CEREBELLUM", "CRANIUM", "CRANIAL",
    "NEUROCRANIUM", "INTRACRANIAL", "NEURO", "HEADNECK", "HEADANDNECK", "SELLA", "SELLAR",
    "PITUITARY", "HYPOPHYSIS", "IAC", "CEREBRO", "CERVEAU", "CRANE", "CABEZA", "CRANEO",
    "KOPF", "SCHAEDEL", "SCHADEL", "HIRN", "GEHIRN", "SCHAEDELMRT", "CERVELLO", "CRANIO",
    "ENCEPHALON", "NEUROIMAGING", "STROKE", "EPILEPSY", "GLIOMA", "MENINGIOMA",
})
# Other body parts (NECK alone counts: "HEAD NECK" names the head too, and the head wins).
NOT_BRAIN_TERMS = frozenset({
    "ABDOMEN", "ABD", "ABDOMENPELVIS", "CHESTABDOMEN", "CHESTABDPELVIS", "ABDOMINAL",
    "CHEST", "THORAX", "THORACIC", "LUNG", "LUNGS", "MEDIASTINUM", "BREAST", "BREASTS", "MAMMA",
    "HEART", "CARDIAC", "CARDIO", "CARDIOVASCULAR", "MYOCARDIUM", "CMR", "AORTA", "CORONARY",
    "CAROTID", "CAROTIDS",
    "SHOULDER", "ELBOW", "WRIST", "HAND", "FINGER", "ARM", "UPPEREXTREMITY", "EXTREMITY",
    "LOWEREXTREMITY", "HIP", "THIGH", "KNEE", "LEG", "ANKLE", "FOOT", "TOE", "FEMUR", "TIBIA",
    "SPINE", "CSPINE", "TSPINE", "LSPINE", "TLSPINE", "CTSPINE", "LSSPINE", "SSPINE",
    "LUMBAR", "SACRUM", "COCCYX", "WHOLESPINE", "PELVIS", "PROSTATE", "UTERUS", "OVARY",
    "RECTUM", "BLADDER", "LIVER", "HEPATIC", "PANCREAS", "KIDNEY", "KIDNEYS", "RENAL",
    "SPLEEN", "MRCP", "ENTEROGRAPHY", "BOWEL", "NECK", "SCHULTER", "KNIE", "WIRBELSAEULE",
    "HERZ", "BAUCH", "EPAULE", "GENOU", "RODILLA", "HOMBRO", "ABDOMINE",
})
# AnatomicRegionSequence codes (SNOMED CT and the older SRT codes) for head and brain.
BRAIN_CODES = frozenset({"12738006", "69536005", "T-A0100", "T-D1100", "T-A0120", "T-D1000"})
_WORD = re.compile(r"[A-Z]+")


@dataclass(frozen=True)
class HeaderEvidence:
    verdict: Verdict
    field: str | None = None  # the attribute that decided, e.g. "BodyPartExamined"
    term: str | None = None  # the vocabulary word it contained, e.g. "ABDOMEN"

    @property
    def reason(self) -> str:
        if self.verdict == "unknown":
            return "The DICOM header does not name the body part."
        return f"DICOM header says {self.field}={self.term}"

    def to_dict(self) -> dict[str, str | None]:
        return {"verdict": self.verdict, "field": self.field, "term": self.term,
                "reason": self.reason}


def words(text: Any) -> list[str]:
    """Upper-case alphabetic words of a header value (digits and punctuation separate)."""
    return _WORD.findall(str(text or "").upper().replace("Ä", "AE").replace("Ü", "UE")
                         .replace("Ö", "OE"))


def clean_descriptor(text: Any) -> str | None:
    """A description reduced to its body-part words (None when it has none): the Clean
    Descriptors Option for our purpose, safe to keep because every word is ours."""
    kept = ""
    for w in dict.fromkeys(words(text)):
        if (w in BRAIN_TERMS or w in NOT_BRAIN_TERMS) and len(kept) + len(w) < 64:  # LO: 64
            kept = f"{kept} {w}".strip()
    return kept or None


def _region_items(ds: Any) -> list[Any]:
    items = list(getattr(ds, "AnatomicRegionSequence", None) or [])
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in (getattr(ds, groups, None) or [])[:1]:
            for frame in getattr(group, "FrameAnatomySequence", None) or []:
                items.extend(getattr(frame, "AnatomicRegionSequence", None) or [])
    return items


def _fields(ds: Any) -> list[tuple[str, list[str], bool]]:
    """(field, its words, whether a brain code was named), in the order they are trusted."""
    out = [("BodyPartExamined", words(getattr(ds, "BodyPartExamined", "")), False)]
    for item in _region_items(ds):
        code = str(getattr(item, "CodeValue", "") or "").strip()
        out.append(("AnatomicRegionSequence", words(getattr(item, "CodeMeaning", "")),
                    code in BRAIN_CODES))
    out += [(kw, words(getattr(ds, kw, "")), False) for kw in DESCRIPTORS]
    return out


def header_evidence(ds: Any) -> HeaderEvidence:
    """The header's verdict on the body part (module docstring); never raises on odd values."""
    try:
        fields = _fields(ds)
    except Exception:  # a malformed optional attribute is no evidence, not an error
        return HeaderEvidence("unknown")
    for name, found, brain_code in fields:
        brain = next((w for w in found if w in BRAIN_TERMS), None)
        if brain or brain_code:
            return HeaderEvidence("brain", name, brain or "brain code")
    for name, found, _ in fields:
        other = next((w for w in found if w in NOT_BRAIN_TERMS), None)
        if other:
            return HeaderEvidence("not_brain", name, other)
    return HeaderEvidence("unknown")
