"""PDF reports (reportlab): one page per scan, a summary table per batch.

Inputs are the API's own view of a scan (`ScanOut` or the same as a dict) plus image bytes,
so the report says exactly what the API says. All client-supplied text is escaped before it
reaches reportlab's mini-markup. The client's file name (which often names the patient) is
left out unless the tenant opted in (`include_filename(s)`; `neuroscan privacy`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from reportlab.graphics.charts.barcharts import HorizontalBarChart
from reportlab.graphics.shapes import Drawing
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from shared.labels import CLASSES, DISPLAY_NAMES
from shared.reports.wording import DISCLAIMER, as_plain_dict, confidence_band, flat_metrics

_STYLES = getSampleStyleSheet()
_WARN = ParagraphStyle("warn", parent=_STYLES["Normal"], textColor=colors.HexColor("#8a1c1c"),
                       fontName="Helvetica-Bold", fontSize=9, leading=11)
_SMALL = ParagraphStyle("small", parent=_STYLES["Normal"], fontSize=8, leading=10)
_TINY = ParagraphStyle("tiny", parent=_STYLES["Normal"], fontSize=6.5, leading=8)
_GRID = TableStyle([("FONTSIZE", (0, 0), (-1, -1), 8), ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                    ("BACKGROUND", (0, 0), (0, -1), colors.HexColor("#f0f0f0"))])
_BAND_COLOURS = {"High": "#1b6e20", "Review": "#a15c00", "Expert review required": "#8a1c1c"}


def _text(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return escape(str(value))


def _p(text: str, style: ParagraphStyle | None = None) -> Paragraph:
    return Paragraph(text, style or _SMALL)


def _footer(canvas: Any, doc: Any) -> None:
    canvas.saveState()
    canvas.setFont("Helvetica-Bold", 7.5)
    canvas.setFillColor(colors.HexColor("#8a1c1c"))
    canvas.drawString(1.5 * cm, 1.0 * cm, DISCLAIMER)
    canvas.setFillColor(colors.grey)
    canvas.drawRightString(doc.pagesize[0] - 1.5 * cm, 0.6 * cm, f"Page {doc.page}")
    canvas.restoreState()


def _image(png: bytes | None, caption: str, width: float) -> list[Any]:
    if not png:
        return [_p(f"<i>{caption}: not available</i>")]
    img = Image(io.BytesIO(png))
    scale = width / float(img.imageWidth)
    img.drawWidth, img.drawHeight = width, float(img.imageHeight) * scale
    return [img, _p(caption)]


def _bar_chart(probabilities: dict[str, float]) -> Drawing:
    drawing = Drawing(16 * cm, 4.2 * cm)
    chart = HorizontalBarChart()
    chart.x, chart.y, chart.width, chart.height = 3.2 * cm, 0.5 * cm, 11.5 * cm, 3.4 * cm
    order = list(reversed(CLASSES))  # first class on top
    chart.data = [[100.0 * float(probabilities.get(c, 0.0)) for c in order]]
    chart.categoryAxis.categoryNames = [DISPLAY_NAMES[c] for c in order]
    chart.categoryAxis.labels.fontSize = 8
    chart.valueAxis.valueMin, chart.valueAxis.valueMax, chart.valueAxis.valueStep = 0, 100, 20
    chart.valueAxis.labels.fontSize = 7
    chart.valueAxis.labelTextFormat = "%d%%"
    chart.bars[0].fillColor = colors.HexColor("#3465a4")
    chart.barLabelFormat = "%.1f%%"
    chart.barLabels.fontSize = 7
    chart.barLabels.nudge = 14
    drawing.add(chart)
    return drawing


def _doc(buf: io.BytesIO, title: str, pagesize: tuple[float, float] = A4) -> SimpleDocTemplate:
    return SimpleDocTemplate(buf, pagesize=pagesize, title=title, author="NeuroScan",
                             leftMargin=1.5 * cm, rightMargin=1.5 * cm, topMargin=1.4 * cm,
                             bottomMargin=1.6 * cm)


def _file_name(item: dict[str, Any], include: bool) -> str:
    return _text(item.get("filename")) if include else "(withheld)"


def render_scan_report(scan: Any, original_png: bytes | None, overlay_png: bytes | None,
                       model_card: dict[str, Any] | None, *,
                       include_filename: bool = False) -> bytes:
    """One scan as a PDF: result, images, probabilities, gate, model, references, disclaimer."""
    scan = as_plain_dict(scan)
    story: list[Any] = [Paragraph("NeuroScan — brain MRI AI triage report", _STYLES["Title"]),
                        _p(escape(DISCLAIMER), _WARN), Spacer(1, 0.3 * cm)]
    prediction, error = scan.get("prediction") or None, scan.get("error") or None
    if scan.get("state") == "succeeded" and prediction:
        label, conf = prediction["label"], float(prediction["confidence"])
        band = confidence_band(conf)
        story += [Paragraph(f"Predicted class: <b>{escape(DISPLAY_NAMES.get(label, label))}</b> "
                            f"({conf:.1%})", _STYLES["Heading2"]),
                  _p(f'Confidence band: <font color="{_BAND_COLOURS[band]}"><b>{band}</b></font> '
                     "(High &gt;= 90%, Review 70–90%, Expert review required &lt; 70%)",
                     _STYLES["Normal"])]
    elif scan.get("state") == "failed":
        code, msg = (error or {}).get("code", "unknown"), (error or {}).get("message", "")
        story += [Paragraph("Analysis failed: no prediction was made", _STYLES["Heading2"]),
                  _p(f"Reason: {_text(msg)} Error code: <b>{_text(code)}</b>.",
                     _STYLES["Normal"])]
    else:
        story.append(Paragraph(f"Scan is {_text(scan.get('state'))}: no result yet.",
                               _STYLES["Heading2"]))
    story.append(Spacer(1, 0.3 * cm))
    width = 6.6 * cm
    explanation = scan.get("explanation") or None
    caption = (f"Grad-CAM overlay: {escape(explanation['title'])}" if explanation
               else "Grad-CAM overlay")
    images = Table([[_image(original_png, "Original (as submitted, de-identified)", width),
                     _image(overlay_png, caption, width)]],
                   colWidths=[width + 0.4 * cm] * 2)
    images.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    story.append(images)
    if explanation and overlay_png:
        story.append(_p(f"<b>What the map means.</b> {escape(explanation['meaning'])}"))
    if prediction:
        story += [Paragraph("Class probabilities", _STYLES["Heading3"]),
                  _bar_chart(prediction.get("probabilities") or {})]
    story += [Paragraph("Details", _STYLES["Heading3"]),
              _details_table(scan, model_card, include_filename)]
    buf = io.BytesIO()
    _doc(buf, f"NeuroScan report {scan.get('id', '')}").build(
        story, onFirstPage=_footer, onLaterPages=_footer)
    return buf.getvalue()


def _gate_text(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "—"
    outcome = "accepted" if gate.get("accepted") else "rejected"
    reason = gate.get("reason") or ""
    return f"{outcome} ({_text(gate.get('code'))})" + (f": {_text(reason)}" if reason else "")


def _details_table(scan: dict[str, Any], card: dict[str, Any] | None,
                   include_filename: bool = False) -> Table:
    model = scan.get("model") or {}
    rows: list[tuple[str, str]] = [
        ("Scan ID", _text(scan.get("id"))), ("Patient reference", _text(scan.get("patient_ref"))),
        ("Study reference", _text(scan.get("study_ref"))), ("Batch", _text(scan.get("batch_id"))),
        ("File", f"{_file_name(scan, include_filename)} ({_text(scan.get('format'))}, "
                 f"{_text(scan.get('size_bytes'))} bytes)"),
        ("Input gate", _gate_text(scan.get("gate"))), ("State", _text(scan.get("state"))),
        ("Submitted", _text(scan.get("created_at"))), ("Started", _text(scan.get("started_at"))),
        ("Finished", _text(scan.get("finished_at"))),
        ("Model", f"{_text(model.get('name') or (card or {}).get('name'))} version "
                  f"{_text(model.get('version') or (card or {}).get('version'))}"),
        ("Model SHA-256", _text(model.get("sha256") or ((card or {}).get("weights") or {}).get("sha256"))),
    ]
    rows += [(f"Card metric: {escape(k)}", v) for k, v in flat_metrics(card)]
    if card and card.get("intended_use"):
        rows.append(("Intended use", _text(card["intended_use"])))
    rows.append(("Report generated", _text(datetime.now(UTC))))
    table = Table([[_p(f"<b>{k}</b>"), _p(v)] for k, v in rows], colWidths=[4.2 * cm, 13.8 * cm])
    table.setStyle(_GRID)
    return table


def render_batch_report(batch: Any, scans: Sequence[Any], *,
                        include_filenames: bool = False) -> bytes:
    """A batch as a PDF: counts, then one row per scan."""
    b = as_plain_dict(batch)
    items = [as_plain_dict(x) for x in scans]
    counts: dict[str, int] = {}
    for item in items:
        counts[item.get("state", "?")] = counts.get(item.get("state", "?"), 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no scans"
    story: list[Any] = [Paragraph("NeuroScan — batch summary", _STYLES["Title"]),
                        _p(escape(DISCLAIMER), _WARN), Spacer(1, 0.2 * cm),
                        _p(f"Batch <b>{_text(b.get('id'))}</b>, submitted {_text(b.get('created_at'))}; "
                           f"{len(items)} scan(s): {summary}.", _STYLES["Normal"]),
                        Spacer(1, 0.3 * cm)]
    header = ["Scan ID", "File", "State", "Prediction", "Confidence", "Band", "Patient ref",
              "Study ref", "Error"]
    rows: list[list[Any]] = [[_p(f"<b>{h}</b>", _TINY) for h in header]]
    for item in items:
        pred, err = item.get("prediction") or {}, item.get("error") or {}
        conf = pred.get("confidence")
        cells = [_text(item.get("id")), _file_name(item, include_filenames),
                 _text(item.get("state")),
                 _text(DISPLAY_NAMES.get(pred.get("label", ""), pred.get("label"))),
                 f"{conf:.1%}" if conf is not None else "—",
                 confidence_band(conf) if conf is not None else "—",
                 _text(item.get("patient_ref")), _text(item.get("study_ref")),
                 _text(err.get("code"))]
        rows.append([_p(c, _TINY) for c in cells])
    widths = (4.9, 2.6, 1.8, 2.0, 1.7, 2.6, 3.6, 3.6, 3.9)
    table = Table(rows, repeatRows=1, colWidths=[w * cm for w in widths])
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                               ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#f0f0f0")),
                               ("VALIGN", (0, 0), (-1, -1), "TOP")]))
    story.append(table)
    buf = io.BytesIO()
    _doc(buf, f"NeuroScan batch {b.get('id', '')}", landscape(A4)).build(
        story, onFirstPage=_footer, onLaterPages=_footer)
    return buf.getvalue()
