"""`neuroscan submit`: send files or folders to a running NeuroScan service as batches.

Walks folders, keeps what is PNG, JPEG, DICOM or ZIP by magic bytes, uploads in chunks with
retries (connection errors and 5xx, exponential backoff; each chunk carries its own
Idempotency-Key, the same on every retry of it, so a retry never stores a chunk twice), shows a
progress bar (accepted, done, failed), and with `--wait` follows the batches until every scan is
final. `--out DIR` writes `<scan_id>.json`, `<scan_id>.fhir.json`, the heatmap and overlay
PNGs and the PDF. Exits 1 with a summary table when any file was rejected or any scan failed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from neuroscan.client import Client, NeuroScanError, collect_files, is_submittable
from shared.states import FINAL_STATES

__all__ = ["collect_files", "is_submittable", "submit"]


@dataclass
class Outcome:
    batch_ids: list[str] = field(default_factory=list)
    scan_ids: list[str] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {"filename", "error"}
    scans: dict[str, dict[str, Any]] = field(default_factory=dict)

    def count(self, state: str) -> int:
        return sum(1 for s in self.scans.values() if s["state"] == state)


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def upload(client: Client, files: list[Path], chunk_size: int, callback_url: str | None,
           outcome: Outcome, on_progress: Any) -> None:
    """One batch per chunk; accepted IDs and per-file rejections go into `outcome`."""
    for chunk in _chunks(files, chunk_size):
        try:
            batch = client.submit_batch(chunk, callback_url=callback_url)
        except NeuroScanError as exc:
            if exc.status == 422 and isinstance(exc.body, dict) and "rejected" in exc.body:
                outcome.rejected += exc.body["rejected"]
            else:
                raise typer.BadParameter(f"the service answered {exc.status}: {exc.message}") \
                    from exc
        else:
            outcome.batch_ids.append(batch.id)
            outcome.scan_ids += batch.scan_ids
            outcome.rejected += batch.rejected
        on_progress(len(chunk))


def follow(client: Client, outcome: Outcome, timeout_s: float, on_progress: Any) -> None:
    """Poll the batches until every scan is final (or the timeout passes)."""
    deadline = time.monotonic() + timeout_s
    pending = list(outcome.batch_ids)
    while pending:
        for batch_id in list(pending):
            batch = client.batch(batch_id)
            for scan in batch.scans:
                outcome.scans[scan.id] = scan.raw
            if batch.done:
                pending.remove(batch_id)
        on_progress()
        if pending and time.monotonic() > deadline:
            raise typer.BadParameter(f"gave up waiting after {timeout_s:.0f}s")
        if pending:
            time.sleep(1.0)


def write_outputs(client: Client, outcome: Outcome, out: Path) -> None:
    """Per final scan: JSON, FHIR JSON, heatmap and overlay PNGs, PDF report."""
    out.mkdir(parents=True, exist_ok=True)
    for scan_id in outcome.scan_ids:
        _write_scan(client, scan_id, outcome, out)


def _write_scan(client: Client, scan_id: str, outcome: Outcome, out: Path) -> None:
    import json

    scan = client.scan(scan_id).raw
    outcome.scans[scan_id] = scan
    (out / f"{scan_id}.json").write_text(json.dumps(scan, indent=2), encoding="utf-8")
    if scan["state"] not in FINAL_STATES:
        return
    (out / f"{scan_id}.fhir.json").write_text(json.dumps(client.fhir(scan_id), indent=2),
                                              encoding="utf-8")
    (out / f"{scan_id}.pdf").write_bytes(client.report_pdf(scan_id))
    for key, suffix in (("heatmap_url", "heatmap"), ("overlay_url", "overlay")):
        if scan.get(key):
            (out / f"{scan_id}.{suffix}.png").write_bytes(client.download(scan[key]))


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
    with Client(api_url, api_key) as client, \
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
