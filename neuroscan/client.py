"""The NeuroScan client library: submit, wait, download, verify webhooks.

    from neuroscan.client import Client

    with Client("https://neuroscan.example.org", api_key="nsk_...") as ns:
        batch = ns.submit(["/data/export/"])          # files, folders, ZIPs
        for scan in ns.wait_batch(batch.id).scans:
            print(scan.id, scan.state, scan.label, scan.confidence)
        stow = ns.submit_dicomweb(["/data/series/"])  # DICOM instances by STOW-RS
        series = ns.wait_series(stow.series_ids[0], complete=True)
        print(series.label, series.tumour_probability, series.key_scan_id)

Every error the API answers becomes a `NeuroScanError` with its `code` (the API's
`error.code`), `message` and HTTP `status`. Connection errors and 5xx are retried with
exponential backoff. Every submission carries an `Idempotency-Key` (a new UUID per submission,
the same on each retry of it), so a retry after a lost answer never makes a second scan; pass
`idempotency_key=` to choose it (to resume after a crash, say). `AsyncClient` offers the same
calls with `await`. Depends on httpx only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["AsyncClient", "Batch", "Client", "NeuroScanError", "Scan", "Series", "StowResult",
           "collect_files", "verify_webhook"]

FINAL = ("succeeded", "failed")
IDEMPOTENCY_HEADER = "Idempotency-Key"
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"PK\x03\x04")


class NeuroScanError(Exception):
    """An error answer from the API: `code` is its `error.code` (e.g. `unauthorized`)."""

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body


@dataclass(frozen=True)
class Scan:
    id: str
    state: str
    label: str | None
    confidence: float | None
    probabilities: dict[str, float]
    error_code: str | None
    error_message: str | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def done(self) -> bool:
        return self.state in FINAL

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Scan:
        pred, err = body.get("prediction") or {}, body.get("error") or {}
        return cls(id=body["id"], state=body["state"], label=pred.get("label"),
                   confidence=pred.get("confidence"), probabilities=pred.get("probabilities") or {},
                   error_code=err.get("code"), error_message=err.get("message"), raw=body)


@dataclass(frozen=True)
class Batch:
    id: str
    scan_ids: list[str]
    done: bool
    scans: list[Scan]
    rejected: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Batch:
        scans = [Scan.from_json(s) for s in body.get("scans", [])]
        ids = body.get("scan_ids") or [s.id for s in scans]
        return cls(id=body["id"], scan_ids=list(ids), done=bool(body.get("done", False)),
                   scans=scans, rejected=list(body.get("rejected", [])), raw=body)


@dataclass(frozen=True)
class Series:
    id: str
    state: str
    label: str | None
    probability: float | None
    tumour_probability: float | None
    key_scan_id: str | None
    slices: list[dict[str, Any]]
    delivery_state: str | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def done(self) -> bool:
        return self.state in FINAL

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Series:
        finding = body.get("finding") or {}
        key = body.get("key_slice") or {}
        return cls(id=body["id"], state=body["state"], label=finding.get("label"),
                   probability=finding.get("probability"),
                   tumour_probability=finding.get("tumour_probability"),
                   key_scan_id=key.get("id"), slices=list(body.get("slices", [])),
                   delivery_state=(body.get("delivery") or {}).get("state"), raw=body)


@dataclass(frozen=True)
class StowResult:
    """A STOW-RS answer: which instances were stored (sender's SOP UIDs), into which series,
    and which failed with which error code."""

    series_ids: list[str]
    stored: list[str]
    failed: list[dict[str, Any]]  # {"sop_uid", "reason", "code", "message"}
    status: int


def is_submittable(path: Path) -> bool:
    """PNG, JPEG, ZIP by their first bytes; DICOM by "DICM" after the 128-byte preamble."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head.startswith(_MAGIC) or head[128:132] == b"DICM"


def is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def collect_files(paths: Iterable[Path | str], accept: Any = is_submittable) -> list[Path]:
    """Files named directly plus every accepted file under named folders, sorted, unique."""
    found: list[Path] = []
    for path in map(Path, paths):
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found += [p for p in candidates if accept(p) and p not in found]
    return found


def verify_webhook(secret: str | bytes, headers: Any, body: bytes, tolerance_s: int = 300,
                   now: float | None = None) -> bool:
    """True when `X-NeuroScan-Signature` is HMAC-SHA256(secret, timestamp + "." + body) and
    the timestamp is within `tolerance_s` (replays are refused)."""
    key = secret.encode() if isinstance(secret, str) else secret
    lower = {k.lower(): v for k, v in dict(headers).items()}
    ts, sig = lower.get("x-neuroscan-timestamp", ""), lower.get("x-neuroscan-signature", "")
    try:
        if abs((now or time.time()) - int(ts)) > tolerance_s:
            return False
    except ValueError:
        return False
    mac = hmac.new(key, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest("sha256=" + mac, sig)


def _idempotency(key: str | None) -> dict[str, str]:
    """The submission's header: one key, made here once, sent on every retry of the request
    (`Client._request` repeats the same headers), so the service stores it once."""
    return {IDEMPOTENCY_HEADER: key or str(uuid.uuid4())}


def _raise_for(response: httpx.Response) -> httpx.Response:
    if response.status_code < 400:
        return response
    try:
        body = response.json()
        err = body.get("error", {}) if isinstance(body, dict) else {}
    except ValueError:
        body, err = response.text, {}
    raise NeuroScanError(response.status_code, err.get("code") or f"http_{response.status_code}",
                         err.get("message") or str(body)[:200], body)


def _stow_body(files: Sequence[Path | bytes]) -> tuple[bytes, str]:
    boundary = f"neuroscan-{uuid.uuid4().hex}"
    out = bytearray()
    for item in files:
        data = item if isinstance(item, bytes) else Path(item).read_bytes()
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f'multipart/related; type="application/dicom"; boundary={boundary}'


def _stow_result(response: httpx.Response) -> StowResult:
    if response.status_code not in (200, 202, 409):
        _raise_for(response)
    body = response.json() if response.content else {}

    def value(item: dict[str, Any], tag: str) -> Any:
        return (item.get(tag, {}).get("Value") or [None])[0]

    stored = [value(i, "00081155") for i in body.get("00081199", {}).get("Value", [])]
    failed = [{"sop_uid": value(i, "00081155"), "reason": value(i, "00081197"),
               "code": value(i, "00091001"), "message": value(i, "00091002")}
              for i in body.get("00081198", {}).get("Value", [])]
    series = [s for s in response.headers.get("x-neuroscan-series", "").split(",") if s]
    return StowResult(series_ids=series, stored=stored, failed=failed,
                      status=response.status_code)


class Client:
    """Synchronous client (httpx). Use as a context manager, or call close()."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 120.0,
                 retries: int = 5, transport: httpx.BaseTransport | None = None) -> None:
        self.retries = retries
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                  headers={"Authorization": f"Bearer {api_key}"},
                                  transport=transport)
        # Signed media links may point at another host: never send them the key.
        self._plain = httpx.Client(timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        self._plain.close()

    def _request(self, method: str, url: str, *, client: httpx.Client | None = None,
                 **kwargs: Any) -> httpx.Response:
        """One call with retries on connection errors and 5xx (exponential backoff)."""
        http = client or self._http
        for attempt in range(self.retries):
            try:
                response = http.request(method, url, **kwargs)
            except httpx.TransportError:
                if attempt == self.retries - 1:
                    raise
            else:
                if response.status_code < 500 or attempt == self.retries - 1:
                    return response
            time.sleep(min(2.0**attempt * 0.5, 10.0))
        raise AssertionError("unreachable")

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return _raise_for(self._request(method, url, **kwargs)).json()

    # --- submitting ------------------------------------------------------------------
    def submit_scan(self, file: Path | str | bytes, *, filename: str | None = None,
                    callback_url: str | None = None,
                    idempotency_key: str | None = None) -> Scan:
        """One file -> the queued scan (the interactive queue: ahead of batches)."""
        data = file if isinstance(file, bytes) else Path(file).read_bytes()
        name = filename or (Path(file).name if not isinstance(file, bytes) else "upload")
        form = {"callback_url": callback_url} if callback_url else None
        body = self._json("POST", "/v1/scans", files={"file": (name, data)}, data=form,
                          headers=_idempotency(idempotency_key))
        return Scan.from_json({**body, "state": body.get("state", "queued")})

    def submit_batch(self, files: Sequence[Path | str], *, callback_url: str | None = None,
                     idempotency_key: str | None = None) -> Batch:
        """One batch of files (PNG, JPEG, DICOM, ZIP). A 422 whose files were all refused
        raises NeuroScanError with `body["rejected"]` per file."""
        parts = [("files", (Path(p).name, Path(p).read_bytes())) for p in files]
        form = {"callback_url": callback_url} if callback_url else None
        return Batch.from_json(self._json("POST", "/v1/batches", files=parts, data=form,
                                          headers=_idempotency(idempotency_key)))

    def submit(self, paths: Iterable[Path | str], *, chunk_size: int = 50,
               callback_url: str | None = None) -> list[Batch]:
        """Files, folders (walked) and ZIPs, in batches of `chunk_size` files."""
        files = collect_files(paths)
        return [self.submit_batch(files[i:i + chunk_size], callback_url=callback_url)
                for i in range(0, len(files), chunk_size)]

    def submit_dicomweb(self, items: Iterable[Path | str | bytes], *,
                        chunk_size: int = 100) -> StowResult:
        """DICOM instances (files, folders, or bytes) by STOW-RS; grouped into series."""
        flat: list[Path | bytes] = []
        for item in items:
            flat += [item] if isinstance(item, bytes) else collect_files([item], is_dicom)
        results = []
        for i in range(0, len(flat), chunk_size):
            body, ctype = _stow_body(flat[i:i + chunk_size])
            results.append(_stow_result(self._request(
                "POST", "/dicomweb/studies", content=body,
                headers={"Content-Type": ctype, "Accept": "application/dicom+json"})))
        return StowResult(series_ids=sorted({s for r in results for s in r.series_ids}),
                          stored=[u for r in results for u in r.stored],
                          failed=[f for r in results for f in r.failed],
                          status=max((r.status for r in results), default=200))

    # --- reading ---------------------------------------------------------------------
    def scan(self, scan_id: str) -> Scan:
        return Scan.from_json(self._json("GET", f"/v1/scans/{scan_id}"))

    def batch(self, batch_id: str) -> Batch:
        return Batch.from_json(self._json("GET", f"/v1/batches/{batch_id}"))

    def series(self, series_id: str) -> Series:
        return Series.from_json(self._json("GET", f"/v1/series/{series_id}"))

    def complete_series(self, series_id: str) -> Series:
        """No more slices will come: the finding is made once its slices are final."""
        return Series.from_json(self._json("POST", f"/v1/series/{series_id}/complete"))

    def wait_scan(self, scan_id: str, timeout: float = 600.0, poll_s: float = 1.0) -> Scan:
        return self._wait(lambda: self.scan(scan_id), timeout, poll_s)

    def wait_batch(self, batch_id: str, timeout: float = 3600.0, poll_s: float = 1.0) -> Batch:
        return self._wait(lambda: self.batch(batch_id), timeout, poll_s)

    def wait_series(self, series_id: str, timeout: float = 900.0, poll_s: float = 1.0, *,
                    complete: bool = False, delivered: bool = False) -> Series:
        """Until the finding is made (and with `delivered`, sent back to the PACS)."""
        if complete:
            self.complete_series(series_id)

        def ready(s: Series) -> bool:
            return s.done and (not delivered or s.delivery_state != "pending")

        return self._wait(lambda: self.series(series_id), timeout, poll_s, ready)

    def _wait(self, fetch: Any, timeout: float, poll_s: float, ready: Any = None) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            item = fetch()
            if (ready or (lambda x: x.done))(item):
                return item
            if time.monotonic() > deadline:
                raise TimeoutError(f"not final after {timeout:.0f}s: {item.id} is {item.state}")
            time.sleep(poll_s)

    def events(self, scan_id: str) -> Iterator[dict[str, Any]]:
        """The scan's state changes as they happen (Server-Sent Events), until it is final."""
        with self._http.stream("GET", f"/v1/scans/{scan_id}/events", timeout=None) as response:
            _raise_for(response) if response.status_code >= 400 else None
            for line in response.iter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:].strip())
                    yield event
                    if event.get("state") in FINAL:
                        return

    # --- downloading -----------------------------------------------------------------
    def report_pdf(self, scan_id: str) -> bytes:
        return _raise_for(self._request("GET", f"/v1/scans/{scan_id}/report.pdf")).content

    def fhir(self, scan_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/scans/{scan_id}/fhir")
        return result

    def download(self, signed_url: str) -> bytes:
        """A signed media link (heatmap, overlay, image), fetched without the API key."""
        return _raise_for(self._request("GET", signed_url, client=self._plain)).content


class AsyncClient:
    """The same calls for asyncio code (httpx.AsyncClient); a subset: submit, read, wait."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 120.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout,
                                       headers={"Authorization": f"Bearer {api_key}"},
                                       transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return _raise_for(await self._http.request(method, url, **kwargs)).json()

    async def submit_scan(self, file: Path | str | bytes, *, filename: str | None = None,
                          idempotency_key: str | None = None) -> Scan:
        data = file if isinstance(file, bytes) else Path(file).read_bytes()
        name = filename or (Path(file).name if not isinstance(file, bytes) else "upload")
        body = await self._json("POST", "/v1/scans", files={"file": (name, data)},
                                headers=_idempotency(idempotency_key))
        return Scan.from_json({**body, "state": body.get("state", "queued")})

    async def submit_batch(self, files: Sequence[Path | str], *,
                           idempotency_key: str | None = None) -> Batch:
        parts = [("files", (Path(p).name, Path(p).read_bytes())) for p in files]
        return Batch.from_json(await self._json("POST", "/v1/batches", files=parts,
                                                headers=_idempotency(idempotency_key)))

    async def submit_dicomweb(self, items: Sequence[Path | bytes]) -> StowResult:
        body, ctype = _stow_body(items)
        return _stow_result(await self._http.post(
            "/dicomweb/studies", content=body,
            headers={"Content-Type": ctype, "Accept": "application/dicom+json"}))

    async def scan(self, scan_id: str) -> Scan:
        return Scan.from_json(await self._json("GET", f"/v1/scans/{scan_id}"))

    async def series(self, series_id: str) -> Series:
        return Series.from_json(await self._json("GET", f"/v1/series/{series_id}"))

    async def wait_scan(self, scan_id: str, timeout: float = 600.0, poll_s: float = 1.0) -> Scan:
        deadline = time.monotonic() + timeout
        while not (scan := await self.scan(scan_id)).done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"scan {scan_id} is {scan.state} after {timeout:.0f}s")
            await asyncio.sleep(poll_s)
        return scan
