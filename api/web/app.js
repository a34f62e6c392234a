// The clinician's page: sign-in, views, theme, and the wiring between the modules.

import { Api, OFFLINE_MESSAGE } from "./api.js";
import { $, announce, h, isFinal } from "./dom.js";
import { LiveTracker } from "./events.js";
import { History } from "./history.js";
import { renderResult } from "./result.js";
import { Uploads, wireDropTargets } from "./uploads.js";

const THEME_KEY = "neuroscan.theme";
const api = new Api();
const views = { signin: $("#view-signin"), analyse: $("#view-analyse"), history: $("#view-history") };
let selectedId = null;
let selectedState = null;
let healthTimer = null;

// ---------- reachability: one banner for every kind of network trouble ----------
function setReachable(ok) {
  const banner = $("#connection");
  if (ok) {
    banner.hidden = true;
    banner.textContent = "";
    clearInterval(healthTimer);
    healthTimer = null;
    return;
  }
  banner.textContent = OFFLINE_MESSAGE;
  banner.hidden = false;
  // Keep asking, so the banner goes away by itself when the service is back.
  healthTimer ??= setInterval(async () => {
    try { if ((await fetch("/healthz", { cache: "no-store" })).ok) setReachable(true); } catch { /* still down */ }
  }, 3000);
}
api.onReachability = setReachable;

// ---------- modules ----------
const tracker = new LiveTracker(api, {
  onState: (id, state, message) => {
    uploads.applyState(id, state, message);
    if (id === selectedId && state !== selectedState) refreshSelected();
  },
  onScan: (scan) => {
    uploads.applyScan(scan);
    if (scan.id === selectedId && scan.state !== selectedState) showScan(scan);
  },
  onLink: setReachable,
});

const uploads = new Uploads({
  api, tracker, list: $("#scan-list"), empty: $("#scan-list-empty"), clearButton: $("#clear-list"),
  onSelect: (id) => openScan(id, { focus: false }),
});

const history = new History({ api, onOpen: (id) => openScan(id, { focus: true }) });

wireDropTargets({
  zone: $("#dropzone"), area: views.analyse, input: $("#file-input"),
  onFiles: (files) => uploads.addFiles(files),
});

// ---------- result panel ----------
function showScan(scan) {
  selectedState = scan.state;
  $("#result-empty").hidden = true;
  const body = $("#result-body");
  body.hidden = false;
  renderResult(body, scan, { api, reload: refreshSelected });
}

async function refreshSelected() {
  if (!selectedId) return;
  const id = selectedId;
  try {
    const scan = await api.scan(id);
    if (id === selectedId) showScan(scan);
  } catch (err) {
    if (id === selectedId && !err.offline) showResultError(err.message);
  }
}

function showResultError(message) {
  $("#result-empty").hidden = true;
  const body = $("#result-body");
  body.hidden = false;
  body.replaceChildren(h("div", { class: "callout callout-error", role: "alert" },
    h("strong", {}, "This scan could not be shown."), h("p", {}, message)));
}

async function openScan(id, { focus }) {
  selectedId = id;
  selectedState = null;
  uploads.selectedId = id;
  uploads.render();
  showView("analyse");
  try {
    const scan = await api.scan(id);
    if (id !== selectedId) return;
    showScan(scan);
    if (!isFinal(scan.state)) tracker.setState(id, scan.state);
    if (focus) $("#result").focus();
  } catch (err) {
    if (id === selectedId) showResultError(err.message);
  }
}

function clearResult() {
  selectedId = null;
  selectedState = null;
  $("#result-body").replaceChildren();
  $("#result-body").hidden = true;
  $("#result-empty").hidden = false;
}

// ---------- views ----------
function showView(name) {
  for (const [key, el] of Object.entries(views)) el.hidden = key !== name;
  for (const tab of document.querySelectorAll(".tab")) {
    if (tab.dataset.view === name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  const signedIn = name !== "signin";
  $("#tabs").hidden = !signedIn;
  $("#sign-out").hidden = !signedIn;
  $("#tenant").hidden = !signedIn;
  if (name === "history") history.load();
  if (signedIn && location.hash !== `#${name}`) replaceHash(`#${name}`);
}

function replaceHash(hash) {
  window.history.replaceState(null, "", hash);
}

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => showView(tab.dataset.view));
}

// ---------- sign in / out ----------
function enterWorkspace(me) {
  const tenant = me && me.tenant ? me.tenant.name : "";
  $("#tenant-name").textContent = tenant || "Your hospital";
  uploads.restore();
  showView(location.hash === "#history" ? "history" : "analyse");
}

function signOut(message = "") {
  tracker.stop();
  api.setKey(null);
  uploads.forget();
  clearResult();
  $("#tenant-name").textContent = "";
  $("#signin-error").textContent = message;
  replaceHash(location.pathname);
  showView("signin");
  $("#api-key").focus();
}

api.onUnauthorized = () => signOut("Your session has ended: the API key is no longer accepted. Please sign in again.");

$("#signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("#api-key");
  const error = $("#signin-error");
  const button = $("#signin-submit");
  const key = input.value.trim();
  error.textContent = "";
  if (!key) { error.textContent = "Enter your API key to sign in."; input.focus(); return; }
  button.disabled = true;
  button.textContent = "Signing in…";
  try {
    const me = await api.me(key);
    api.setKey(key);
    input.value = "";
    enterWorkspace(me);
    announce(`Signed in for ${$("#tenant-name").textContent}.`);
  } catch (err) {
    error.textContent = err.status === 401 || err.status === 403
      ? "That API key was not recognised. Check it and try again."
      : err.offline ? "Cannot reach the NeuroScan service. Check that it is running, then try again." : err.message;
    input.focus();
  } finally {
    button.disabled = false;
    button.textContent = "Sign in";
  }
});

$("#sign-out").addEventListener("click", () => signOut());

// ---------- theme ----------
function applyTheme(theme) {
  document.documentElement.setAttribute("data-theme", theme);
  const next = theme === "dark" ? "light" : "dark";
  const button = $("#theme-toggle");
  button.setAttribute("aria-label", `Switch to ${next} theme`);
  button.title = `Switch to ${next} theme`;
}

$("#theme-toggle").addEventListener("click", () => {
  const theme = document.documentElement.getAttribute("data-theme") === "dark" ? "light" : "dark";
  applyTheme(theme);
  try { window.localStorage.setItem(THEME_KEY, theme); } catch { /* not persisted */ }
});

// Follow the system's setting until the user has chosen one here.
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", (e) => {
  let saved = null;
  try { saved = window.localStorage.getItem(THEME_KEY); } catch { /* none */ }
  if (!saved) applyTheme(e.matches ? "dark" : "light");
});

// ---------- start ----------
async function start() {
  applyTheme(document.documentElement.getAttribute("data-theme") || "light");
  if (!api.signedIn) { showView("signin"); return; }
  try {
    enterWorkspace(await api.me());
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      signOut("Your session has ended: the API key is no longer accepted. Please sign in again.");
    } else {
      // Service down at load: keep the session, show the workspace and the banner, and
      // fill in the hospital's name once the service answers.
      enterWorkspace(null);
      if (!err.offline) $("#connection").textContent = err.message;
      retryTenantName();
    }
  }
}

function retryTenantName() {
  const timer = setInterval(async () => {
    if (!api.signedIn) { clearInterval(timer); return; }
    try {
      const me = await api.me();
      clearInterval(timer);
      $("#tenant-name").textContent = me.tenant.name;
    } catch { /* still unreachable: try again */ }
  }, 5000);
}

start();
