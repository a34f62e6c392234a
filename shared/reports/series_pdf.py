"""A series as a PDF: the series finding, the key slice and its overlay, every slice beneath."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib.units import cm
from reportlab.platypus import Paragraph, Spacer, Table, TableStyle

from shared.labels import DISPLAY_NAMES
from shared.reports.pdf import _STYLES, _WARN, _bar_chart, _doc, _footer, _image, _p
from shared.reports.wording import DISCLAIMER
from shared.series import METHOD


def render_series_report(series: Any, slices: Sequence[dict[str, Any]], key_png: bytes | None,
                         overlay_png: bytes | None, model: str) -> bytes:
    """`series`: a DicomSeries row; `slices`: dicts with instance_number, state, label,
    confidence, tumour_probability."""
    label = series.label or "unknown"
    story: list[Any] = [Paragraph("NeuroScan — brain MRI series AI triage report", _STYLES["Title"]),
                        _p(escape(DISCLAIMER), _WARN), Spacer(1, 0.3 * cm)]
    if series.state == "succeeded":
        story += [Paragraph(f"Series finding: <b>{escape(DISPLAY_NAMES.get(label, label))}</b> "
                            f"({(series.probability or 0):.1%}); P(tumour) "
                            f"{(series.tumour_probability or 0):.1%}", _STYLES["Heading2"]),
                  _p(f"How slices are combined: {escape(METHOD)}.")]
    else:
        story.append(Paragraph(f"Series {escape(series.state)}: {escape(series.error_message or '')}",
                               _STYLES["Heading2"]))
    width = 6.6 * cm
    images = Table([[_image(key_png, "Key slice (de-identified)", width),
                     _image(overlay_png, "Grad-CAM overlay, key slice", width)]],
                   colWidths=[width + 0.4 * cm] * 2)
    images.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    story.append(images)
    details = series.finding or {}
    if details.get("key_probabilities"):
        story += [Paragraph("Key slice probabilities", _STYLES["Heading3"]),
                  _bar_chart(details["key_probabilities"])]
    rows = [["Instance", "State", "Slice result", "P(tumour)"]]
    for s in slices:
        p = s.get("tumour_probability")
        rows.append([str(s.get("instance_number") or "—"), s.get("state") or "",
                     f"{DISPLAY_NAMES.get(s.get('label') or '', s.get('label') or '—')}",
                     f"{p:.1%}" if p is not None else "—"])
    story += [Paragraph("Slices", _STYLES["Heading3"]), Table(rows, repeatRows=1),
              Spacer(1, 0.3 * cm),
              _p(f"Model: {escape(model)}. Series {escape(series.id)}, study "
                 f"{escape(series.study_ref or '—')}, patient {escape(series.patient_ref or '—')}.")]
    buf = io.BytesIO()
    _doc(buf, f"NeuroScan series report {series.id}").build(
        story, onFirstPage=_footer, onLaterPages=_footer)
    return buf.getvalue()
