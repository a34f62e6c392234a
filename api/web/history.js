// The tenant's scan history: filters by class and status, paginated, newest first.

import { $, CLASSES, STATES, className, confidenceBand, formatTime, h, percent, stateName } from "./dom.js";

const PAGE_SIZE = 15;

export class History {
  constructor({ api, onOpen }) {
    this.api = api;
    this.onOpen = onOpen;
    this.page = 1;
    this.total = 0;
    this.loading = null;
    this.labelSelect = $("#filter-label");
    this.stateSelect = $("#filter-state");
    this.rows = $("#history-rows");
    this.emptyNote = $("#history-empty");
    this.errorLine = $("#history-error");
    this.pageLabel = $("#history-page");
    this.prev = $("#history-prev");
    this.next = $("#history-next");
    this.table = $("#history-table");
    // The filters offer what the server knows: its classes and its job states.
    this.labelSelect.append(...CLASSES.map((label) => h("option", { value: label }, className(label))));
    this.stateSelect.append(...STATES.map((state) => h("option", { value: state },
      stateName(state).replace(/…$/, ""))));
    const refilter = () => { this.page = 1; this.load(); };
    this.labelSelect.addEventListener("change", refilter);
    this.stateSelect.addEventListener("change", refilter);
    $("#history-refresh").addEventListener("click", () => this.load());
    this.prev.addEventListener("click", () => { if (this.page > 1) { this.page -= 1; this.load(); } });
    this.next.addEventListener("click", () => { if (this.page < this.pages) { this.page += 1; this.load(); } });
  }

  get pages() { return Math.max(1, Math.ceil(this.total / PAGE_SIZE)); }

  async load() {
    // A newer request (another filter click) supersedes an older one still in flight.
    const token = Symbol("load");
    this.loading = token;
    this.table.setAttribute("aria-busy", "true");
    this.errorLine.textContent = "";
    try {
      const result = await this.api.scans({
        label: this.labelSelect.value, state: this.stateSelect.value, page: this.page, pageSize: PAGE_SIZE,
      });
      if (this.loading !== token) return;
      this.total = Number(result.total) || 0;
      this.#render(Array.isArray(result.items) ? result.items : []);
    } catch (err) {
      if (this.loading !== token) return;
      this.errorLine.textContent = `The history could not be loaded. ${err.message}`;
    } finally {
      if (this.loading === token) this.table.removeAttribute("aria-busy");
    }
  }

  #render(items) {
    this.rows.replaceChildren(...items.map((scan) => this.#row(scan)));
    this.emptyNote.hidden = items.length > 0;
    const first = this.total ? (this.page - 1) * PAGE_SIZE + 1 : 0;
    const last = (this.page - 1) * PAGE_SIZE + items.length;
    this.pageLabel.textContent = this.total
      ? `${first}–${last} of ${this.total} scan${this.total === 1 ? "" : "s"} · page ${this.page} of ${this.pages}`
      : "No scans";
    this.prev.disabled = this.page <= 1;
    this.next.disabled = this.page >= this.pages;
  }

  #row(scan) {
    const prediction = scan.prediction || null;
    const band = prediction ? confidenceBand(prediction.confidence) : null;
    const result = prediction
      ? className(prediction.label)
      : scan.state === "failed" ? h("span", { class: "scan-error" }, (scan.error && scan.error.message) || "Failed") : "—";
    return h("tr", { dataset: { scanId: scan.id, state: scan.state, label: prediction ? prediction.label : "" } },
      h("td", { class: "nowrap" }, formatTime(scan.created_at)),
      h("td", { class: "file-cell", title: scan.filename || "" }, scan.filename || "—"),
      h("td", {}, h("span", { class: `badge state-${scan.state}` }, stateName(scan.state))),
      h("td", {}, result),
      h("td", { class: "nowrap" }, prediction ? percent(prediction.confidence) : "—",
        band ? h("span", { class: `band band-small band-${band.key}` }, band.text) : null),
      h("td", { class: "actions" },
        h("button", {
          type: "button", class: "btn btn-secondary btn-small",
          "aria-label": `Open ${scan.filename || "scan"}`, onclick: () => this.onOpen(scan.id),
        }, "Open")));
  }
}
