"""`GET /v1/meta`: the words and rules a client displays scans with, from the one place
each is defined, so that no client keeps its own copy.

- the classes in their order, with display names (`shared.labels`);
- the job states and which are final (`shared.states.JobState`);
- the confidence bands and the disclaimer (`shared.reports.wording`, the reports' wording);
- which originals a browser can show, and which error codes mean the input gate refused the image.

The web page gets the same object embedded in `/app` (`api.routes.web`), so it needs no
extra request and no key before it can draw anything.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from shared import errors
from shared.imaging import BROWSER_FORMATS
from shared.labels import CLASSES, DISPLAY_NAMES, TUMOUR_CLASSES
from shared.reports.wording import CONFIDENCE_BANDS, DISCLAIMER
from shared.states import JobState

router = APIRouter(prefix="/v1", tags=["meta"])


class ClassOut(BaseModel):
    label: str
    name: str
    tumour: bool


class StatesOut(BaseModel):
    all: list[JobState]
    final: list[JobState]


class BandOut(BaseModel):
    key: str
    lowest: float
    name: str


class MetaOut(BaseModel):
    classes: list[ClassOut]
    states: StatesOut
    confidence_bands: list[BandOut]
    disclaimer: str
    browser_formats: list[str]
    gate_error_codes: list[str]


def vocabulary() -> MetaOut:
    return MetaOut(
        classes=[ClassOut(label=c, name=DISPLAY_NAMES[c], tumour=c in TUMOUR_CLASSES) for c in CLASSES],
        states=StatesOut(all=list(JobState), final=[s for s in JobState if s.is_final]),
        confidence_bands=[BandOut(key=k, lowest=lowest, name=name) for k, lowest, name in CONFIDENCE_BANDS],
        disclaimer=DISCLAIMER,
        browser_formats=list(BROWSER_FORMATS),
        gate_error_codes=[errors.NOT_BRAIN_MRI],
    )


@router.get("/meta", response_model=MetaOut, summary="Class names, job states, confidence bands, disclaimer")
def get_meta() -> MetaOut:
    """The vocabulary for showing scans; the same for every tenant."""
    return vocabulary()
