"""`neuroscan submit`: send files or folders to a running NeuroScan service as batches.

Walks folders, keeps what is PNG, JPEG, DICOM or ZIP by magic bytes, uploads in chunks with
retries (connection errors and 5xx, exponential backoff), shows a progress bar (accepted,
done, failed), and with `--wait` follows the batches until every scan is final. `--out DIR`
writes `<scan_id>.json`, `<scan_id>.fhir.json`, the heatmap and overlay PNGs and the PDF.
Exits 1 with a summary table when any file was rejected or any scan failed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"PK\x03\x04")
_RETRIES = 5
_FINAL = ("succeeded", "failed")


@dataclass
class Outcome:
    batch_ids: list[str] = field(default_factory=list)
    scan_ids: list[str] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {"filename", "error"}
    scans: dict[str, dict[str, Any]] = field(default_factory=dict)

    def count(self, state: str) -> int:
        return sum(1 for s in self.scans.values() if s["state"] == state)


def is_submittable(path: Path) -> bool:
    """PNG, JPEG, ZIP by their first bytes; DICOM by "DICM" after the 128-byte preamble."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head.startswith(_MAGIC) or head[128:132] == b"DICM"


def collect_files(paths: Sequence[Path]) -> list[Path]:
    """Files named directly plus every submittable file under named folders, sorted, unique."""
    found: list[Path] = []
    for path in paths:
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found += [p for p in candidates if is_submittable(p) and p not in found]
    return found


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _request(client: Any, method: str, url: str, **kwargs: Any) -> Any:
    """One call with retries on connection errors and 5xx (exponential backoff)."""
    import httpx

    for attempt in range(_RETRIES):
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError:
            if attempt == _RETRIES - 1:
                raise
        else:
            if response.status_code < 500 or attempt == _RETRIES - 1:
                return response
        time.sleep(min(2.0**attempt * 0.5, 10.0))
    raise AssertionError("unreachable")


def upload(client: Any, files: list[Path], chunk_size: int, callback_url: str | None,
           outcome: Outcome, on_progress: Any) -> None:
    """POST /v1/batches per chunk; accepted IDs and per-file rejections go into `outcome`."""
    for chunk in _chunks(files, chunk_size):
        parts = [("files", (p.name, p.read_bytes())) for p in chunk]
        data = {"callback_url": callback_url} if callback_url else None
        response = _request(client, "POST", "/v1/batches", files=parts, data=data)
        body = response.json() if response.headers.get("content-type", "").startswith(
            "application/json") else {}
        if response.status_code == 202:
            outcome.batch_ids.append(body["id"])
            outcome.scan_ids += body["scan_ids"]
            outcome.rejected += body.get("rejected", [])
        elif response.status_code == 422 and "rejected" in body:
            outcome.rejected += body["rejected"]
        else:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise typer.BadParameter(f"the service answered {response.status_code}: "
                                     f"{error.get('message') or response.text[:200]}")
        on_progress(len(chunk))


def follow(client: Any, outcome: Outcome, timeout_s: float, on_progress: Any) -> None:
    """Poll the batches until every scan is final (or the timeout passes)."""
    deadline = time.monotonic() + timeout_s
    pending = list(outcome.batch_ids)
    while pending:
        for batch_id in list(pending):
            body = _request(client, "GET", f"/v1/batches/{batch_id}").raise_for_status().json()
            for scan in body["scans"]:
                outcome.scans[scan["id"]] = scan
            if body["done"]:
                pending.remove(batch_id)
        on_progress()
        if pending and time.monotonic() > deadline:
            raise typer.BadParameter(f"gave up waiting after {timeout_s:.0f}s")
        if pending:
            time.sleep(1.0)


def write_outputs(client: Any, outcome: Outcome, out: Path) -> None:
    """Per final scan: JSON, FHIR JSON, heatmap and overlay PNGs, PDF report."""
    import httpx

    out.mkdir(parents=True, exist_ok=True)
    # Image links are signed and may point at another host: never send them the API key.
    with httpx.Client(timeout=120.0) as plain:
        for scan_id in outcome.scan_ids:
            _write_scan(client, plain, scan_id, outcome, out)


def _write_scan(client: Any, plain: Any, scan_id: str, outcome: Outcome, out: Path) -> None:
    import json

    scan = _request(client, "GET", f"/v1/scans/{scan_id}").raise_for_status().json()
    outcome.scans[scan_id] = scan
    (out / f"{scan_id}.json").write_text(json.dumps(scan, indent=2), encoding="utf-8")
    if scan["state"] not in _FINAL:
        return
    fhir = _request(client, "GET", f"/v1/scans/{scan_id}/fhir").raise_for_status()
    (out / f"{scan_id}.fhir.json").write_text(json.dumps(fhir.json(), indent=2), encoding="utf-8")
    pdf = _request(client, "GET", f"/v1/scans/{scan_id}/report.pdf").raise_for_status()
    (out / f"{scan_id}.pdf").write_bytes(pdf.content)
    for key, suffix in (("heatmap_url", "heatmap"), ("overlay_url", "overlay")):
        if scan.get(key):
            image = _request(plain, "GET", scan[key]).raise_for_status()
            (out / f"{scan_id}.{suffix}.png").write_bytes(image.content)


def _summary(outcome: Outcome, waited: bool) -> Any:
    from rich.table import Table

    table = Table(title="NeuroScan submission")
    for column in ("file / scan", "state", "result", "detail"):
        table.add_column(column)
    for item in outcome.rejected:
        err = item.get("error", {})
        table.add_row(str(item.get("filename")), "rejected", err.get("code", ""),
                      err.get("message", ""))
    for scan_id in outcome.scan_ids:
        scan = outcome.scans.get(scan_id, {"state": "queued" if not waited else "unknown"})
        pred, err = scan.get("prediction") or {}, scan.get("error") or {}
        result = f"{pred['label']} {pred['confidence']:.1%}" if pred else err.get("code", "")
        table.add_row(f"{scan.get('filename') or ''} {scan_id}", scan["state"], result,
                      err.get("message", ""))
    return table


def submit(
    paths: Annotated[list[Path], typer.Argument(exists=True, help="Files or folders to send")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow until every scan is final")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write results here (implies --wait)")] = None,
    api_url: Annotated[str, typer.Option(envvar="NEUROSCAN_API_URL", help="Service URL")] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option(envvar="NEUROSCAN_API_KEY", help="API key")] = None,
    chunk_size: Annotated[int, typer.Option(min=1, max=1000, help="Files per request")] = 50,
    callback_url: Annotated[str | None, typer.Option(help="Webhook for each batch")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait")] = 3600.0,
) -> None:
    """Submit PNG, JPEG, DICOM or ZIP files (folders are walked) as batches."""
    import httpx
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    if not api_key:
        raise typer.BadParameter("set NEUROSCAN_API_KEY or pass --api-key")
    files = collect_files(paths)
    if not files:
        raise typer.BadParameter("no PNG, JPEG, DICOM or ZIP files found")
    wait = wait or out is not None
    console = Console(stderr=True)
    outcome = Outcome()
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("accepted {task.fields[accepted]}  done {task.fields[done]}  "
                          "failed {task.fields[failed]}"))
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {api_key}"},
                      timeout=120.0) as client, \
            Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("uploading", total=len(files), accepted=0, done=0, failed=0)

        def uploaded(n: int) -> None:
            progress.update(bar, advance=n, accepted=len(outcome.scan_ids),
                            failed=len(outcome.rejected))

        upload(client, files, chunk_size, callback_url, outcome, uploaded)
        if wait and outcome.scan_ids:
            progress.update(bar, description="analysing", total=len(outcome.scan_ids), completed=0)

            def polled() -> None:
                done, failed = outcome.count("succeeded"), outcome.count("failed")
                progress.update(bar, completed=done + failed, done=done,
                                failed=failed + len(outcome.rejected))

            follow(client, outcome, timeout, polled)
        if out is not None:
            write_outputs(client, outcome, out)
    Console().print(_summary(outcome, wait))
    if outcome.rejected or outcome.count("failed"):
        raise typer.Exit(code=1)
