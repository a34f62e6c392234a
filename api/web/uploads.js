// Uploading (drop or pick one or many files) and the session's live list of scans.

import { announce, className, confidenceBand, h, isFinal, percent, stateName } from "./dom.js";

const SESSION_KEY = "neuroscan.session";
const BATCH_CHUNK = 50;  // files per POST /v1/batches: keeps each request a sensible size
const UPLOAD_OFFLINE = "Not uploaded: the NeuroScan service cannot be reached. Try again when it is back.";

export class Uploads {
  constructor({ api, tracker, list, empty, clearButton, onSelect }) {
    this.api = api;
    this.tracker = tracker;
    this.list = list;
    this.empty = empty;
    this.clearButton = clearButton;
    this.onSelect = onSelect;
    this.entries = [];
    this.selectedId = null;
    this.nextKey = 1;
    this.frame = 0;
    clearButton.addEventListener("click", () => this.clearFinished());
  }

  /** Bring back this tab's list after a reload, and resume watching what is unfinished. */
  restore() {
    let saved;
    try { saved = JSON.parse(window.sessionStorage.getItem(SESSION_KEY) || "[]"); } catch { saved = []; }
    this.entries = Array.isArray(saved) ? saved.filter((e) => e && e.filename) : [];
    for (const entry of this.entries) {
      entry.key = this.nextKey++;
      if (entry.state === "uploading") { entry.state = "rejected"; entry.message = "The upload was interrupted; send the file again."; }
      if (entry.id) this.tracker.setState(entry.id, entry.state);
    }
    const batches = new Map();
    for (const entry of this.entries) {
      if (!entry.id || isFinal(entry.state)) continue;
      if (entry.batchId) batches.set(entry.batchId, [...(batches.get(entry.batchId) || []), entry.id]);
      else this.tracker.watch(`/v1/scans/${encodeURIComponent(entry.id)}/events`, [entry.id]);
    }
    for (const [batchId, ids] of batches) {
      this.tracker.watch(`/v1/batches/${encodeURIComponent(batchId)}/events`, ids, batchId);
    }
    this.render();
  }

  forget() {
    this.entries = [];
    this.selectedId = null;
    try { window.sessionStorage.removeItem(SESSION_KEY); } catch { /* nothing kept */ }
    this.render();
  }

  clearFinished() {
    this.entries = this.entries.filter((e) => !isFinal(e.state));
    this.render();
  }

  /** Send dropped or picked files: one scan alone, several as batches. */
  async addFiles(fileList) {
    const files = [...fileList].filter((f) => f && f.size !== undefined);
    if (!files.length) return;
    const entries = files.map((file) => this.#add({ filename: file.name, state: "uploading" }));
    announce(files.length === 1 ? `Uploading ${files[0].name}.` : `Uploading ${files.length} files.`);
    if (files.length === 1) {
      await this.#sendOne(files[0], entries[0]);
      if (entries[0].id) this.select(entries[0].id);
      return;
    }
    for (let i = 0; i < files.length; i += BATCH_CHUNK) {
      await this.#sendBatch(files.slice(i, i + BATCH_CHUNK), entries.slice(i, i + BATCH_CHUNK));
    }
  }

  async #sendOne(file, entry) {
    try {
      const accepted = await this.api.uploadOne(file);
      this.#accepted(entry, accepted.id, null, accepted.state);
      this.tracker.watch(`/v1/scans/${encodeURIComponent(accepted.id)}/events`, [accepted.id]);
    } catch (err) {
      this.#rejected(entry, err);
    }
  }

  async #sendBatch(files, entries) {
    let accepted;
    try {
      accepted = await this.api.uploadBatch(files);
    } catch (err) {
      const refusals = err.body && Array.isArray(err.body.rejected) ? err.body.rejected : null;
      if (refusals) {
        // No file was acceptable: the API says why for each one.
        this.#assign(entries, [], refusals, null);
      } else if ([400, 413, 415, 422].includes(err.status)) {
        // One unacceptable request must not sink the files: send each alone, so each says why.
        for (let i = 0; i < files.length; i += 1) await this.#sendOne(files[i], entries[i]);
      } else {
        for (const entry of entries) this.#rejected(entry, err);
      }
      return;
    }
    const ids = Array.isArray(accepted.scan_ids) ? accepted.scan_ids : [];
    this.#assign(entries, ids, Array.isArray(accepted.rejected) ? accepted.rejected : [], accepted.id);
    if (ids.length) this.tracker.watch(`/v1/batches/${encodeURIComponent(accepted.id)}/events`, ids, accepted.id);
  }

  /** Pair files with the batch's answer: new scan ids in the order the files were sent,
   * skipping the refused files, which the API names (with the reason) in `rejected`. */
  #assign(entries, scanIds, rejected, batchId) {
    const ids = [...scanIds];
    const refusals = [...rejected];
    for (const entry of entries) {
      const refused = refusals.findIndex((r) => r && r.filename === entry.filename);
      if (refused !== -1) {
        const [refusal] = refusals.splice(refused, 1);
        this.#rejected(entry, { message: (refusal.error && refusal.error.message) || "The service did not accept this file." });
      } else if (ids.length) {
        this.#accepted(entry, ids.shift(), batchId, "queued");
      } else {
        this.#rejected(entry, { message: "The service did not accept this file." });
      }
    }
  }

  #add(fields) {
    const entry = { key: this.nextKey++, id: null, batchId: null, label: null, confidence: null, message: "", ...fields };
    this.entries.unshift(entry);
    this.render();
    return entry;
  }

  #accepted(entry, id, batchId, state) {
    Object.assign(entry, { id, batchId, state: state || "queued" });
    this.tracker.setState(id, entry.state);
    this.render();
  }

  #rejected(entry, err) {
    entry.state = "rejected";
    entry.message = err.offline ? UPLOAD_OFFLINE : err.message;
    announce(`${entry.filename} was not accepted: ${entry.message}`);
    this.render();
  }

  /** A state change announced by the event stream, with the finding once final. */
  applyState(id, state, { prediction = null, error = null } = {}) {
    const entry = this.entries.find((e) => e.id === id);
    if (!entry || entry.state === state || isFinal(entry.state)) return;
    entry.state = state;
    if (prediction) Object.assign(entry, { label: prediction.label, confidence: prediction.confidence });
    if (error) entry.message = error.message || "";
    this.#announce(entry);
    this.render();
  }

  /** The full record of a scan, after a fetch. */
  applyScan(scan) {
    const entry = this.entries.find((e) => e.id === scan.id);
    if (!entry) return;
    const changed = entry.state !== scan.state;
    entry.state = scan.state;
    entry.label = scan.prediction ? scan.prediction.label : null;
    entry.confidence = scan.prediction ? scan.prediction.confidence : null;
    entry.message = scan.error ? scan.error.message || "" : "";
    if (changed) this.#announce(entry);
    this.render();
  }

  #announce(entry) {
    // One sentence per scan while there are few; for a large batch, one when it is all done.
    const active = this.entries.filter((e) => !isFinal(e.state)).length;
    if (active + (isFinal(entry.state) ? 1 : 0) > 5) return;
    if (entry.state === "processing") announce(`${entry.filename} is being analysed.`);
    else if (entry.state === "succeeded") {
      announce(`${entry.filename} is done: ${className(entry.label)}, ${percent(entry.confidence)}.`);
    } else if (entry.state === "failed") announce(`${entry.filename} failed: ${entry.message}`);
  }

  select(id) {
    this.selectedId = id;
    this.render();
    this.onSelect(id);
  }

  /** Redraw on the next frame: a batch of hundreds sends hundreds of events in a burst. */
  render() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.#draw();
    });
  }

  #draw() {
    this.list.replaceChildren(...this.entries.map((entry) => this.#item(entry)));
    this.empty.hidden = this.entries.length > 0;
    this.clearButton.hidden = !this.entries.some((e) => isFinal(e.state));
    try {
      const keep = this.entries.map(({ key, ...rest }) => rest);
      window.sessionStorage.setItem(SESSION_KEY, JSON.stringify(keep.slice(0, 200)));
    } catch { /* the list then lasts only until reload */ }
  }

  #item(entry) {
    const badge = h("span", { class: `badge state-${entry.state}` }, stateName(entry.state));
    let detail = null;
    if (entry.state === "succeeded" && entry.label) {
      const band = confidenceBand(entry.confidence);
      detail = h("span", { class: "scan-detail" }, `${className(entry.label)} · ${percent(entry.confidence)}`,
        band ? h("span", { class: `band band-small band-${band.key}` }, band.text) : null);
    } else if (entry.message && (entry.state === "failed" || entry.state === "rejected")) {
      detail = h("span", { class: "scan-detail scan-error" }, entry.message);
    }
    const body = [h("span", { class: "scan-name", title: entry.filename }, entry.filename), badge, detail];
    const attrs = { class: "scan-item", dataset: { state: entry.state, filename: entry.filename } };
    if (!entry.id) return h("li", attrs, h("div", { class: "scan-row" }, body));
    attrs.dataset.scanId = entry.id;
    return h("li", attrs, h("button", {
      type: "button", class: "scan-row scan-open",
      "aria-current": this.selectedId === entry.id ? "true" : null,
      onclick: () => this.select(entry.id),
    }, body));
  }
}

/** Wire a drop zone (and the whole workspace) plus a file input to `onFiles`. */
export function wireDropTargets({ zone, area, input, onFiles }) {
  let depth = 0;
  const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  area.addEventListener("dragenter", (e) => { if (!hasFiles(e)) return; e.preventDefault(); depth += 1; zone.classList.add("is-over"); });
  area.addEventListener("dragover", (e) => { if (!hasFiles(e)) return; e.preventDefault(); e.dataTransfer.dropEffect = "copy"; });
  area.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) zone.classList.remove("is-over"); });
  area.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    zone.classList.remove("is-over");
    onFiles(e.dataTransfer.files);
  });
  // A file dropped beside the target must not make the browser navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  input.addEventListener("change", () => { onFiles(input.files); input.value = ""; });
}
