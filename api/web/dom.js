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

// The server's vocabulary (GET /v1/meta), embedded in the page by api/routes/web.py:
// class names and order, job states and which are final, confidence bands, the disclaimer.
// The page keeps no copy of any of it.
export const VOCABULARY = readVocabulary();

function readVocabulary() {
  const block = document.getElementById("vocabulary");
  try {
    return JSON.parse(block ? block.textContent : "");
  } catch {
    throw new Error("The page was served without its vocabulary (api/routes/web.py fills it in).");
  }
}

// The class order used everywhere (API, database, reports).
export const CLASSES = VOCABULARY.classes.map((c) => c.label);

const CLASS_NAMES = Object.fromEntries(VOCABULARY.classes.map((c) => [c.label, c.name]));

export function className(label) {
  return CLASS_NAMES[label] || label || "—";
}

// How the page words each state, the server's and its own two: a file still uploading, and
// one the service refused at the door (the server never made a scan of it).
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

/** The server's job states, in their order. */
export const STATES = VOCABULARY.states.all;

const FINAL = new Set([...VOCABULARY.states.final, "rejected"]);

/** Will this entry change again? The server's final states, and a refused upload. */
export const isFinal = (state) => FINAL.has(state);

/** The confidence band the clinic acts on (the reports' bands: the PDF prints the same). */
export function confidenceBand(confidence) {
  if (typeof confidence !== "number") return null;
  const bands = VOCABULARY.confidence_bands;
  const band = bands.find((b) => confidence >= b.lowest) || bands[bands.length - 1];
  return { key: band.key, text: band.name };
}

/** "High: 90% or more. Review: 70 to 90%. …", from the same bands. */
export function confidenceBandsExplained() {
  const bands = VOCABULARY.confidence_bands;
  return bands.map((band, i) => {
    const lowest = Math.round(band.lowest * 100);
    if (i === 0) return `${band.name}: ${lowest}% or more.`;
    const upper = Math.round(bands[i - 1].lowest * 100);
    return i === bands.length - 1 && lowest === 0
      ? `${band.name}: below ${upper}%.` : `${band.name}: ${lowest} to ${upper}%.`;
  }).join(" ");
}

export const DISCLAIMER = VOCABULARY.disclaimer;

/** Did the input gate refuse this scan's image (so there is no prediction to show)? */
export function gateRefused(scan) {
  const gate = scan.gate || {};
  return Boolean(scan.error && VOCABULARY.gate_error_codes.includes(scan.error.code)) || gate.accepted === false;
}

/** Can a browser show this original in an <img>? */
export function browserShows(format, url) {
  return VOCABULARY.browser_formats.includes(format) || /\.(png|jpe?g)(\?|$)/i.test(url || "");
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
