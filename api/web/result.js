// The result view of one scan: verdict and confidence band, input-gate warning, viewer,
// probability bars, model identity, the PDF report and the disclaimer.

import {
  CLASSES, DISCLAIMER, announce, browserShows, className, confidenceBand, confidenceBandsExplained,
  formatTime, gateRefused, h, isFinal, percent, safeStem, saveBlob, stateName,
} from "./dom.js";
import { Viewer } from "./viewer.js";

/** Render `scan` into `container`; `reload()` fetches the scan again (fresh signed links). */
export function renderResult(container, scan, { api, reload }) {
  container.replaceChildren(
    header(scan, api),
    ...status(scan),
    media(scan, reload),
    explanationNote(scan),
    details(scan),
    h("p", { class: "disclaimer-inline" }, DISCLAIMER),
  );
  container.dataset.scanId = scan.id;
  container.dataset.state = scan.state;
}

function header(scan, api) {
  const pdfError = h("p", { class: "form-error", role: "alert" });
  // A failed scan has a report too: it documents why no prediction was made.
  const ready = isFinal(scan.state);
  const pdf = h("button", {
    type: "button", class: "btn btn-primary", id: "download-pdf", disabled: !ready,
    title: ready ? "Download the PDF report" : "The report is available once the analysis has finished",
    onclick: () => downloadReport(scan, api, pdf, pdfError),
  }, downloadIcon(), "PDF report");
  const meta = [`Uploaded ${formatTime(scan.created_at)}`, `ID ${String(scan.id).slice(0, 8)}`];
  if (scan.patient_ref) meta.push(`Patient ${scan.patient_ref}`);
  return h("div", { class: "result-head" },
    h("div", { class: "result-title-wrap" },
      h("h2", { id: "result-title", class: "result-file", title: scan.filename || "" }, scan.filename || "Scan"),
      h("p", { class: "muted small" }, meta.join(" · "))),
    h("div", { class: "result-actions" },
      h("span", { class: `badge state-${scan.state}`, id: "result-state" }, stateName(scan.state)),
      pdf),
    pdfError);
}

async function downloadReport(scan, api, button, errorLine) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  errorLine.textContent = "";
  announce("Preparing the PDF report…");
  try {
    const blob = await api.reportPdf(scan.id);
    saveBlob(blob, `neuroscan-report-${safeStem(scan.filename)}-${String(scan.id).slice(0, 8)}.pdf`);
    announce("The PDF report was downloaded.");
  } catch (err) {
    errorLine.textContent = `The report could not be downloaded. ${err.message}`;
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

function status(scan) {
  const parts = [];
  if (gateRefused(scan)) {
    const reason = (scan.gate && scan.gate.reason) || (scan.error && scan.error.message) || "";
    parts.push(h("div", { class: "callout callout-warning", id: "gate-warning", role: "alert" },
      h("strong", {}, "Input check: this image does not look like a brain MRI slice."),
      h("p", {}, reason, reason && !/[.!?]$/.test(reason) ? "." : "",
        " No prediction was made. Check that the right file was sent.")));
  } else if (scan.state === "failed") {
    const message = (scan.error && scan.error.message) || "The analysis failed.";
    parts.push(h("div", { class: "callout callout-error", id: "scan-error", role: "alert" },
      h("strong", {}, "The analysis could not be completed."), h("p", {}, message)));
  } else if (scan.state !== "succeeded") {
    parts.push(h("div", { class: "callout callout-info", "aria-live": "polite" },
      h("span", { class: "spinner", "aria-hidden": "true" }),
      h("p", {}, scan.state === "queued"
        ? "Queued: the scan is waiting for a free worker."
        : "Analysing: classifying the slice and computing its Grad-CAM explanation…")));
  }
  if (scan.state === "succeeded" && scan.prediction) parts.push(summary(scan.prediction));
  return parts;
}

function summary(prediction) {
  const band = confidenceBand(prediction.confidence);
  const probabilities = prediction.probabilities || {};
  return h("section", { class: "summary", id: "verdict", "aria-label": "Model finding" },
    h("div", { class: "verdict" },
      h("div", { class: "verdict-item" },
        h("span", { class: "verdict-caption" }, "Model finding"),
        h("strong", { class: "verdict-value", id: "verdict-label" }, className(prediction.label))),
      h("div", { class: "verdict-item" },
        h("span", { class: "verdict-caption" }, "Confidence"),
        h("strong", { class: "verdict-value" }, percent(prediction.confidence))),
      band ? h("span", {
        class: `band band-${band.key}`, id: "confidence-band",
        title: confidenceBandsExplained(),
      }, band.text) : null),
    h("div", { class: "probs" },
      h("h3", { class: "card-title", id: "probs-title" }, "Class probabilities"),
      h("ul", { class: "bars", id: "probabilities", "aria-labelledby": "probs-title" },
        CLASSES.map((label) => bar(label, probabilities[label], label === prediction.label)))));
}

function media(scan, reload) {
  const preview = scan.preview_url
    || (scan.image_url && browserShows(scan.format, scan.image_url) ? scan.image_url : null);
  let retried = false;
  // Signed links expire: fetch the scan again once for fresh ones.
  const onImageError = () => { if (!retried) { retried = true; reload(); } };
  if (!preview && scan.overlay_url) {
    // A DICOM original: show the service's own rendering of the slice with its heatmap.
    return h("figure", { class: "pane" },
      h("div", { class: "stage stage-static" },
        h("img", { src: scan.overlay_url, alt: "Slice with Grad-CAM heatmap", onerror: onImageError })),
      h("figcaption", {}, "Grad-CAM overlay (the DICOM original cannot be shown in the browser)"));
  }
  if (!preview) return h("div", { class: "viewer-placeholder muted" },
    scan.state === "failed" ? "No image to show." : "The images appear when the analysis is done.");
  const viewer = new Viewer({
    original: preview,
    heat: scan.heatmap_url || scan.overlay_url || null,
    onImageError,
  });
  return viewer.element;
}

// What the heatmap shows, in the API's own words (the PDF prints the same two sentences):
// the finding's class, or for "no tumour" the most likely tumour class, never a map of "no tumour".
function explanationNote(scan) {
  const e = scan.explanation;
  if (!e || scan.state !== "succeeded") return null;
  return h("section", {
    class: `explanation${e.is_finding ? "" : " explanation-alternative"}`, id: "explanation",
    "aria-label": "What the heatmap shows",
  },
    h("p", { class: "explanation-title", id: "explanation-title" }, e.title),
    h("p", { class: "muted small", id: "explanation-meaning" }, e.meaning));
}

function details(scan) {
  const cards = [];
  const model = scan.model || {};
  const rows = [];
  if (model.name) rows.push(["Model", model.name]);
  if (model.version) rows.push(["Version", model.version]);
  if (model.sha256) rows.push(["Weights SHA-256", h("code", { title: model.sha256 }, `${model.sha256.slice(0, 12)}…`)]);
  const seconds = elapsed(scan.started_at, scan.finished_at);
  if (seconds !== null) rows.push(["Analysis time", `${seconds.toFixed(2)} s`]);
  if (scan.finished_at) rows.push(["Finished", formatTime(scan.finished_at)]);
  if (rows.length) {
    cards.push(h("section", { class: "card", "aria-labelledby": "model-title", id: "model-info" },
      h("h3", { id: "model-title", class: "card-title" }, "Model and run"),
      h("dl", { class: "facts" }, rows.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]))));
  }
  return h("div", { class: "result-grid" }, cards);
}

function bar(label, value, isTop) {
  const fraction = typeof value === "number" ? Math.max(0, Math.min(1, value)) : 0;
  const fill = h("span", { class: "bar-fill" });
  fill.style.width = `${(fraction * 100).toFixed(1)}%`;
  return h("li", { class: `bar${isTop ? " is-top" : ""}`, dataset: { label } },
    h("span", { class: "bar-name" }, className(label)),
    h("span", {
      class: "bar-track", role: "meter", "aria-label": `${className(label)} probability`,
      "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": (fraction * 100).toFixed(1),
    }, fill),
    h("span", { class: "bar-value" }, percent(value)));
}

function elapsed(start, end) {
  if (!start || !end) return null;
  const ms = new Date(end) - new Date(start);
  return Number.isFinite(ms) && ms >= 0 ? ms / 1000 : null;
}

function downloadIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M12 4v11m0 0-4.5-4.5M12 15l4.5-4.5M5 19h14");
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", "currentColor");
  path.setAttribute("stroke-width", "2");
  path.setAttribute("stroke-linecap", "round");
  path.setAttribute("stroke-linejoin", "round");
  svg.append(path);
  return svg;
}
