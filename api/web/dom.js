// Small DOM and wording helpers shared by the page's modules.
// Everything user-supplied (file names, messages) goes through textContent, never innerHTML.

/** Build an element: h("button", {class: "btn", onclick: fn}, "Text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

// The class order used everywhere (API, database, reports).
export const CLASSES = ["glioma", "meningioma", "notumor", "pituitary"];

const CLASS_NAMES = {
  glioma: "Glioma",
  meningioma: "Meningioma",
  notumor: "No tumour",
  pituitary: "Pituitary tumour",
};

export function className(label) {
  return CLASS_NAMES[label] || label || "—";
}

const STATE_NAMES = {
  uploading: "Uploading…",
  queued: "Queued",
  processing: "Analysing…",
  succeeded: "Done",
  failed: "Failed",
  rejected: "Not accepted",
};

export function stateName(state) {
  return STATE_NAMES[state] || state;
}

export const isFinal = (state) => state === "succeeded" || state === "failed" || state === "rejected";

/** The confidence band the clinic acts on (thresholds from the product's triage policy). */
export function confidenceBand(confidence) {
  if (typeof confidence !== "number") return null;
  if (confidence >= 0.9) return { key: "high", text: "High confidence" };
  if (confidence >= 0.7) return { key: "review", text: "Review" };
  return { key: "expert", text: "Expert review required" };
}

export function percent(value, digits = 1) {
  if (typeof value !== "number" || Number.isNaN(value)) return "—";
  return `${(value * 100).toFixed(digits)}%`;
}

export function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "—";
  return date.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit",
  });
}

/** A file-system-safe stem for download names. */
export function safeStem(filename) {
  const stem = String(filename || "scan").replace(/\.[^.]+$/, "");
  return stem.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 60) || "scan";
}

/** Save a Blob under a file name, as a browser download. */
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: filename, class: "visually-hidden" });
  document.body.append(link);
  link.click();
  link.remove();
  // Revoke later: Chromium reads the blob asynchronously after the click.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Say something to screen-reader users without moving focus. */
export function announce(text) {
  const region = document.getElementById("status-announcer");
  if (!region) return;
  region.textContent = "";
  // A fresh text node after a tick makes repeated identical messages heard again.
  setTimeout(() => { region.textContent = text; }, 30);
}
