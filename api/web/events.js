// Live scan status: Server-Sent Events read with fetch() streaming, because EventSource
// cannot send an Authorization header. Reconnects with backoff and Last-Event-ID, catches up
// with GET /v1/scans/{id} after every reconnect, and polls while the stream keeps failing.

import { isFinal } from "./dom.js";

const MAX_STREAMS = 3;          // browsers allow ~6 connections per host; keep room for requests
const POLL_AFTER_FAILURES = 3;  // consecutive failed connections before polling kicks in
const SAFETY_POLL_MS = 15_000;  // even a healthy stream is cross-checked this often
const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

/** Read an SSE body, calling onEvent({id, event, data}) per dispatched event (WHATWG rules). */
export async function readEventStream(body, onEvent, onRetry = () => {}) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let pending = { id: null, event: "", data: [] };
  const line = (text) => {
    if (text === "") {
      if (pending.data.length) {
        onEvent({ id: pending.id, event: pending.event || "message", data: pending.data.join("\n") });
      }
      pending = { id: pending.id, event: "", data: [] };
      return;
    }
    if (text.startsWith(":")) return;  // a comment: the server's keep-alive
    const colon = text.indexOf(":");
    const field = colon === -1 ? text : text.slice(0, colon);
    let value = colon === -1 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") pending.data.push(value);
    else if (field === "event") pending.event = value;
    else if (field === "id" && !value.includes("\0")) pending.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) onRetry(Number(value));
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    // A lone "\r" at the end may be the first half of "\r\n": wait for the next chunk.
    let match;
    const terminator = /\r\n|\r(?!$)|\n/g;
    let start = 0;
    while ((match = terminator.exec(buffer)) !== null) {
      line(buffer.slice(start, match.index));
      start = match.index + match[0].length;
    }
    buffer = buffer.slice(start);
  }
}

/** Watches groups of scans (one batch, or one scan) until every scan in them is final. */
export class LiveTracker {
  constructor(api, { onState, onScan, onLink }) {
    this.api = api;
    this.onState = onState;   // (scanId, state, {prediction, error}) as soon as an event says so
    this.onScan = onScan;     // (scan JSON) after a fetch of the full record
    this.onLink = onLink;     // (connected: boolean) for the "cannot reach" banner
    this.states = new Map();  // scanId -> last known state
    this.streams = 0;
    this.controller = new AbortController();
  }

  stop() {
    this.controller.abort();
    this.controller = new AbortController();
    this.states.clear();
  }

  setState(id, state) { this.states.set(id, state); }

  /** Follow `scanIds` through the SSE stream at `path` until all are final; `batchId` lets
   * one request catch up on the whole batch instead of one per scan. */
  watch(path, scanIds, batchId = null) {
    const group = { path, ids: [...scanIds], batchId, lastEventId: null, retryMs: null };
    for (const id of group.ids) if (!this.states.has(id)) this.states.set(id, "queued");
    this.#run(group, this.controller.signal).catch(() => { /* stopped: signed out */ });
  }

  #groupDone(group) {
    return group.ids.every((id) => isFinal(this.states.get(id)));
  }

  /** Catch up with the database: whatever changed while no event could reach us. */
  async refresh(group, signal) {
    if (group.batchId) {
      const batch = await this.#quiet(this.api.json(`/v1/batches/${encodeURIComponent(group.batchId)}`, { signal }));
      for (const scan of (batch && batch.scans) || []) this.#learn(scan);
      if (batch) return;
    }
    for (const id of group.ids) {
      if (signal.aborted) return;
      if (isFinal(this.states.get(id))) continue;
      this.#learn(await this.#quiet(this.api.scan(id), id));
    }
  }

  #learn(scan) {
    if (!scan || isFinal(this.states.get(scan.id)) || this.states.get(scan.id) === scan.state
        && !isFinal(scan.state)) return;
    this.states.set(scan.id, scan.state);
    this.onScan(scan);
  }

  /** A GET that only fails loudly when the service is unreachable. */
  async #quiet(request, id = null) {
    try {
      return await request;
    } catch (err) {
      if (err.offline) throw err;
      if (err.status === 404 && id) {
        this.states.set(id, "failed");
        this.onState(id, "failed", { error: { message: err.message } });
      }
      return null;
    }
  }

  async #run(group, signal) {
    let failures = 0;
    let streamMissing = false;
    while (!signal.aborted && !this.#groupDone(group)) {
      const mayStream = !streamMissing && this.streams < MAX_STREAMS;
      if (mayStream) {
        this.streams += 1;
        try {
          const progressed = await this.#stream(group, signal);
          failures = progressed ? 0 : failures + 1;
        } catch (err) {
          if (signal.aborted || err.status === 401) return;
          if (err.status === 404) streamMissing = true;  // no stream route: poll instead
          failures += 1;
        } finally {
          this.streams -= 1;
        }
      }
      if (signal.aborted || this.#groupDone(group)) break;
      if (!mayStream || failures >= POLL_AFTER_FAILURES) {
        try { await this.refresh(group, signal); this.onLink(true); } catch { this.onLink(false); }
      }
      const backoff = group.retryMs ?? Math.min(8000, 500 * 2 ** Math.max(0, failures - 1));
      const jitter = Math.random() * 250;
      await sleep(mayStream && failures > 0 ? backoff + jitter : 2000 + jitter, signal);
    }
  }

  /** One connection; resolves true when at least one event arrived. */
  async #stream(group, signal) {
    const local = new AbortController();
    const stop = () => local.abort();
    signal.addEventListener("abort", stop, { once: true });
    const headers = { Accept: "text/event-stream" };
    if (group.lastEventId) headers["Last-Event-ID"] = group.lastEventId;
    let progressed = false;
    let safety = null;
    try {
      const response = await this.api.fetch(group.path, { headers, signal: local.signal });
      this.onLink(true);
      // Whatever happened while we were away (e.g. the API restarted): catch up now.
      await this.refresh(group, local.signal);
      if (this.#groupDone(group)) return true;
      safety = setInterval(() => {
        this.refresh(group, local.signal).then(() => {
          if (this.#groupDone(group)) local.abort();
        }).catch(() => {});
      }, SAFETY_POLL_MS);
      await readEventStream(response.body, (event) => {
        progressed = true;
        if (event.id) group.lastEventId = event.id;
        this.#handle(group, event, local);
      }, (ms) => { group.retryMs = ms; });
    } catch (err) {
      if (local.signal.aborted && !signal.aborted) return true;  // we closed it: all final
      if (!signal.aborted && err.offline !== false) this.onLink(false);
      throw err;
    } finally {
      if (safety) clearInterval(safety);
      signal.removeEventListener("abort", stop);
    }
    return progressed;
  }

  #handle(group, event, local) {
    let data;
    try { data = JSON.parse(event.data); } catch { return; }
    if (!data || typeof data !== "object") return;
    const id = data.scan_id || (group.ids.length === 1 ? group.ids[0] : null);
    const state = data.state;
    if (!id || !group.ids.includes(id) || typeof state !== "string") return;
    if (isFinal(this.states.get(id))) return;
    this.states.set(id, state);
    // A final event carries the finding (or the error) for the list; the full record, with
    // image links, is fetched only for the scan a reader opens.
    this.onState(id, state, { prediction: data.prediction || null, error: data.error || null });
    if (isFinal(state) && !data.prediction && !data.error) {
      this.api.scan(id).then((scan) => this.onScan(scan)).catch(() => {});
    }
    if (this.#groupDone(group)) local.abort();
  }
}
