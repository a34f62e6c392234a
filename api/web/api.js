// The page's only HTTP client: adds the Bearer key, turns every failure into a sentence.

const KEY_STORAGE = "neuroscan.apiKey";
export const OFFLINE_MESSAGE = "Cannot reach the NeuroScan service; retrying…";

// Friendlier words for codes whose server message is written for integrators, not clinicians.
const FRIENDLY = {
  unauthorized: "The API key was not accepted. Check it and sign in again.",
  invalid_api_key: "The API key was not accepted. Check it and sign in again.",
  forbidden: "This API key is not allowed to do that.",
  not_found: "That scan could not be found. It may belong to another hospital or have been removed.",
  rate_limited: "Too many requests at once. Please wait a moment and try again.",
  too_many_requests: "Too many requests at once. Please wait a moment and try again.",
  service_unavailable: "The NeuroScan service is busy or restarting. Please try again in a moment.",
  unavailable: "The NeuroScan service is busy or restarting. Please try again in a moment.",
  validation_error: "The service could not read this request. Please reload the page and try again.",
  internal_error: "The NeuroScan service had a problem with this request. Please try again.",
};

const BY_STATUS = {
  401: FRIENDLY.unauthorized,
  403: FRIENDLY.forbidden,
  404: FRIENDLY.not_found,
  413: "The file is larger than the service accepts.",
  429: FRIENDLY.rate_limited,
  502: FRIENDLY.service_unavailable,
  503: FRIENDLY.service_unavailable,
  504: FRIENDLY.service_unavailable,
};

export class ApiError extends Error {
  constructor(message, { status = 0, code = "network_error", offline = false, body = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.offline = offline;
    this.body = body;  // the parsed error body, for callers that need more than the sentence
  }
}

/** A human sentence for an error body, whatever shape the server (or a proxy) sent. */
export function sentenceFor(status, body) {
  const error = body && typeof body === "object" ? body.error : null;
  const code = error && typeof error.code === "string" ? error.code : "";
  const message = error && typeof error.message === "string" ? error.message.trim() : "";
  if (FRIENDLY[code] && (status === 401 || status === 403 || status === 404 || status >= 500 || !message)) {
    return FRIENDLY[code];
  }
  // The API writes its upload messages as sentences for people: show them as they are.
  if (message && !/^[[{]/.test(message) && status < 500) return message;
  return BY_STATUS[status] || (status >= 500 ? FRIENDLY.internal_error
    : "The request could not be completed. Please try again.");
}

export class Api {
  constructor() {
    this.key = null;
    try { this.key = window.sessionStorage.getItem(KEY_STORAGE); } catch { /* private mode */ }
    this.onUnauthorized = () => {};
    this.onReachability = () => {};
  }

  get signedIn() { return Boolean(this.key); }

  setKey(key) {
    this.key = key || null;
    try {
      if (key) window.sessionStorage.setItem(KEY_STORAGE, key);
      else window.sessionStorage.removeItem(KEY_STORAGE);
    } catch { /* the key then lives only in memory */ }
  }

  headers(extra = {}) {
    return this.key ? { Authorization: `Bearer ${this.key}`, ...extra } : { ...extra };
  }

  /** fetch() with the key; resolves to the Response when 2xx, else throws ApiError. */
  async fetch(path, { method = "GET", body, headers = {}, signal, quietAuth = false } = {}) {
    let response;
    try {
      response = await fetch(path, {
        method, body, signal, cache: "no-store", headers: this.headers(headers),
      });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      this.onReachability(false);
      throw new ApiError(OFFLINE_MESSAGE, { offline: true });
    }
    this.onReachability(response.status < 502 || response.status > 504);
    if (response.ok) return response;
    let payload = null;
    try { payload = await response.json(); } catch { /* not JSON: a proxy page, or nothing */ }
    const code = payload && payload.error && payload.error.code ? payload.error.code : `http_${response.status}`;
    const error = new ApiError(sentenceFor(response.status, payload),
      { status: response.status, code, body: payload });
    if (response.status === 401 && !quietAuth) this.onUnauthorized(error);
    throw error;
  }

  async json(path, options) {
    const response = await this.fetch(path, options);
    try {
      return await response.json();
    } catch {
      throw new ApiError("The service sent an answer the page could not read. Please try again.",
        { status: response.status, code: "bad_response" });
    }
  }

  me(key) {
    // Checking a candidate key: a 401 here is a wrong key, not an expired session.
    const headers = key ? { Authorization: `Bearer ${key}` } : {};
    return this.json("/v1/me", { headers, quietAuth: true });
  }

  scan(id) { return this.json(`/v1/scans/${encodeURIComponent(id)}`); }

  scans({ state = "", label = "", page = 1, pageSize = 20 } = {}) {
    const query = new URLSearchParams({ page: String(page), page_size: String(pageSize) });
    if (state) query.set("state", state);
    if (label) query.set("label", label);
    return this.json(`/v1/scans?${query}`);
  }

  uploadOne(file) {
    const form = new FormData();
    form.append("file", file, file.name);
    return this.json("/v1/scans", { method: "POST", body: form });
  }

  uploadBatch(files) {
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    return this.json("/v1/batches", { method: "POST", body: form });
  }

  async reportPdf(id) {
    const response = await this.fetch(`/v1/scans/${encodeURIComponent(id)}/report.pdf`,
      { headers: { Accept: "application/pdf" } });
    return response.blob();
  }
}
