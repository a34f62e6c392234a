"""Which class a scan's Grad-CAM map explains, and the words that say so, everywhere alike.

A Grad-CAM map for "no tumour" is evidence for the absence of something: it spreads over the
whole slice and tells a clinician nothing (a full-frame red wash was seen on real slices). So the map is
always drawn for a tumour class: the predicted one, or, when the finding is "no tumour", the
most likely tumour class, labelled as such with its probability. The worker draws that map
(`worker.inference.analyse`, class request `TUMOUR_CLASS`) and the API, the web page and the
PDF name it with `explanation_for`, from the same probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, Field

from shared.labels import CLASSES, DISPLAY_NAMES, TUMOUR_CLASSES

TUMOUR_CLASS = -2  # class request: the most likely tumour class (see worker.model.gradcam)


class Explanation(BaseModel):
    """What the heatmap shows, in words a clinician can read."""

    label: str = Field(examples=["meningioma"], description="The class the map was drawn for.")
    probability: float = Field(examples=[0.07])
    is_finding: bool = Field(description="True when the map explains the finding itself; false "
                                         "when the finding is no tumour and the map shows the "
                                         "most likely tumour class.")
    title: str = Field(examples=["Where the model looked for meningioma (p = 0.07)"])
    meaning: str = Field(examples=["The warmer the colour, the more that region raised the "
                                   "model's score for meningioma. ..."])


def explained_label(probabilities: Mapping[str, float]) -> str:
    """The tumour class with the highest probability (the first in CLASSES order on a tie)."""
    tumours = [c for c in CLASSES if c in TUMOUR_CLASSES]
    return max(tumours, key=lambda c: float(probabilities.get(c, 0.0)))


def explanation_for(label: str, probabilities: Mapping[str, float]) -> Explanation:
    """The explanation of a finding `label` with these class probabilities."""
    is_finding = label in TUMOUR_CLASSES
    shown = label if is_finding else explained_label(probabilities)
    p = float(probabilities.get(shown, 0.0))
    name = DISPLAY_NAMES[shown].lower()
    if is_finding:
        title = f"Where the model looked for {name} (p = {p:.2f})"
    else:
        title = (f"No tumour found. Where the model looked for the most likely tumour class, "
                 f"{name} (p = {p:.2f})")
    meaning = (f"Grad-CAM map: the warmer the colour, the more that region raised the model's "
               f"score for {name}. It is not an outline of a lesion, and it does not show "
               "that a lesion is there.")
    return Explanation(label=shown, probability=round(p, 4), is_finding=is_finding,
                       title=title, meaning=meaning)
