"""The scan pipeline as plain functions: claim, decode, analyse, store, finish.

A task calls `process_scans` with IDs only; everything else is re-read from the database.
Every step is safe to repeat: claiming skips scans that are already final or leased by a
live worker, asset names are deterministic (scan id + suffix) and overwrite, and `finish`
writes a result only to a scan that is not final yet, in the same transaction as its
`scan_events` row. A claimed scan carries a lease that a heartbeat renews while the task
runs (`worker/leases.py`); the reconciler (`worker/reconciler.py`) takes back the scans of
a worker whose lease ran out.

Dynamic batching: a task claims its own scans and, in the same transaction, queued scans
that other tasks were sent for, up to WORKER_MAX_BATCH (`claim_queued`); their own messages
later find them leased or final and cost one SELECT each. Per-image work (decode, gate,
preprocessing, rendering, uploads) runs on a small thread pool (`worker/parallel.py`); the
results of a batch are written in one transaction. docs/performance.md has the profile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from shared.db.models import Batch, Scan, ScanUpload, new_id, utcnow
from shared.db.session import sync_session
from shared.errors import UNDECODABLE, InputError
from shared.events import transition
from shared.imaging import BROWSER_FORMATS, MEDIA_TYPES, DecodedImage, decode_image, to_png_bytes
from shared.lifecycle import settle_results
from shared.logs import log_context
from shared.settings import get_settings
from shared.states import UNFINISHED_STATES, JobState
from shared.storage import Storage, get_storage
from shared.wakeup import publish
from worker import metrics
from worker.leases import Heartbeat, release
from worker.parallel import io_map, parallel_map

if TYPE_CHECKING:
    from worker.inference import Analysis
    from worker.model import LoadedModel

log = logging.getLogger(__name__)

Notify = Callable[[str, str], None]  # (scan or batch id, "scan" | "batch")
Resend = Callable[[list[str]], object]  # sends each of these scans in a task of its own
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "dicom": "dcm"}

_model: LoadedModel | None = None
_model_lock = threading.Lock()


def get_model() -> LoadedModel:
    """The worker process's model: loaded (hash checked against its card) on first use, once.

    Not in `worker_process_init`, whose handlers are killed after 4 s; with the solo or
    threads pool this runs in the process that serves the tasks."""
    global _model
    with _model_lock:
        if _model is None:
            from worker.inference import configure_threads
            from worker.model import load_model

            settings = get_settings()
            configure_threads(settings)
            _model = load_model(settings.model_dir, settings.model_name)
            log.info("loaded model %s %s (sha256 %s)", _model.name, _model.version, _model.sha256)
            metrics.model_loaded(_model)
        return _model


@dataclass
class Claimed:
    scan_id: str
    format: str
    frame: int | None
    data: bytes
    media_type: str
    created_at: Any


@dataclass
class Outcome:
    scan_id: str
    state: JobState
    fields: dict[str, Any] = field(default_factory=dict)


def claim(session: Session, scan_ids: Sequence[str], owner: str | None = None,
          lease_s: float | None = None) -> list[Claimed]:
    """queued/processing -> processing (attempts + 1), leased to `owner`, for scans not final
    and not leased by another live task; others skipped."""
    owner = owner or new_id()
    now = utcnow()
    expires = now + timedelta(seconds=lease_s or get_settings().scan_lease_s)
    # Rows are always locked in id order (here, in finish, in fail_unfinished): no deadlocks.
    rows = [row for row in session.scalars(select(Scan).where(
        Scan.id.in_(list(scan_ids)), Scan.state.in_(UNFINISHED_STATES)
    ).order_by(Scan.id).with_for_update()).all()
        # A duplicate message must not run a scan another worker is still working on.
        if row.lease_owner in (None, owner) or row.lease_expires_at is None
        or row.lease_expires_at <= now]
    if not rows:
        return []
    uploads = {u.scan_id: u for u in session.scalars(
        select(ScanUpload).where(ScanUpload.scan_id.in_([r.id for r in rows])))}
    claimed = []
    for row in rows:
        row.attempts += 1
        row.lease_owner, row.lease_expires_at = owner, expires
        transition(session, row, JobState.PROCESSING)
        upload = uploads.get(row.id)
        if upload is not None:
            data, media_type = upload.data, upload.media_type
        elif row.image_ref:
            # The database copy goes once a result is written (data lifecycle); a task
            # delivered again after that reads the original back from storage.
            data, media_type = get_storage().get(row.image_ref), MEDIA_TYPES[row.format]
        else:  # cannot happen through the API; say so rather than retry forever
            fail_row(session, row, "upload_missing", "The uploaded file is no longer stored.")
            continue
        claimed.append(Claimed(row.id, row.format, row.frame, data, media_type, row.created_at))
    return claimed


def claim_queued(session: Session, limit: int, owner: str, lease_s: float,
                 exclude: Sequence[str] = (), singles_only: bool = False) -> list[Claimed]:
    """Dynamic batching: up to `limit` more scans that are queued for other tasks, leased to
    `owner` as `claim` does: single scans (no batch: someone is waiting) before batch scans,
    oldest first within each; `singles_only` (an interactive task: its pass stays short) takes
    no batch scans. Only scans never lost by a worker (a scan that was runs alone, README
    "Guarantees") and not locked by another worker (SKIP LOCKED)."""
    if limit <= 0:
        return []
    query = select(Scan.id).where(
        Scan.state == JobState.QUEUED.value, Scan.lease_owner.is_(None),
        Scan.lost_leases == 0, Scan.id.not_in(list(exclude)))
    if singles_only:
        query = query.where(Scan.batch_id.is_(None))
    singles_first = case((Scan.batch_id.is_(None), 0), else_=1)
    ids = list(session.scalars(query.order_by(singles_first, Scan.created_at, Scan.id)
                               .limit(limit).with_for_update(skip_locked=True)))
    return claim(session, ids, owner, lease_s) if ids else []


def _decode(items: Sequence[Claimed]) -> tuple[list[tuple[Claimed, DecodedImage]], list[Outcome]]:
    max_side = get_settings().decode_max_side  # bounded memory whatever the upload's size

    def one(item: Claimed) -> DecodedImage | InputError:
        try:
            return decode_image(item.data, frame=item.frame, max_side=max_side)
        except InputError as exc:  # permanent: the same bytes will never decode
            return exc
        except MemoryError:
            raise  # the machine's state, not the file's: the batch is retried
        except Exception as exc:  # a decoder's own bug on this file fails this scan alone
            log.warning("scan %s: unexpected %s while decoding", item.scan_id,
                        type(exc).__name__, exc_info=True)
            return InputError(f"The image could not be decoded ({type(exc).__name__}).",
                              code=UNDECODABLE)

    decoded, failed = [], []
    for item, image in zip(items, parallel_map(one, items), strict=True):
        if isinstance(image, InputError):
            failed.append(Outcome(item.scan_id, JobState.FAILED,
                                  {"error_code": image.code, "error_message": image.message}))
        else:
            decoded.append((item, image))
    return decoded, failed


def _assets(item: Claimed, image: DecodedImage,
            analysis: Analysis) -> list[tuple[str, str, str, bytes, str]]:
    """(ref field, folder, name, bytes, media type) of the original and explanation images,
    under deterministic names (a retry overwrites them)."""
    out = [("image_ref", "uploads", f"{item.scan_id}.{_EXTENSIONS[item.format]}", item.data,
            item.media_type)]
    if item.format not in BROWSER_FORMATS or image.shrunk:  # anything else gets a PNG preview
        # The decoded, windowed frame the model saw (the DICOM was de-identified at intake;
        # the PNG carries pixels only), so that browsers and reports can show it; for a PNG
        # or JPEG larger than DECODE_MAX_SIDE, a display-sized rendition (the PDF report
        # draws from it instead of decoding the original again).
        out.append(("preview_ref", "results", f"{item.scan_id}-preview.png",
                    to_png_bytes(image.pixels), "image/png"))
    if analysis.heatmap_png is not None and analysis.overlay_png is not None:
        out.append(("heatmap_ref", "results", f"{item.scan_id}-heatmap.png",
                    analysis.heatmap_png, "image/png"))
        out.append(("overlay_ref", "results", f"{item.scan_id}-overlay.png",
                    analysis.overlay_png, "image/png"))
    return out


def analyse_and_store(items: Sequence[Claimed], model: LoadedModel,
                      storage: Storage) -> list[Outcome]:
    from worker.inference import analyse  # TensorFlow only where inference runs

    with metrics.stage("decode") as decoding:
        decoded, outcomes = _decode(items)
    t1 = time.perf_counter()  # preprocess, model and overlay are timed in analyse()
    analyses = analyse([img for _, img in decoded], model) if decoded else []
    t2 = time.perf_counter()
    model_fields = {"model_name": model.name, "model_version": model.version,
                    "model_sha256": model.sha256}
    batch_timing = {"batch_size": len(items), "decode_ms": decoding.ms,
                    "inference_ms": round((t2 - t1) * 1000, 2)}

    pairs = list(zip(decoded, analyses, strict=True))
    assets = parallel_map(lambda pair: _assets(pair[0][0], pair[0][1], pair[1]), pairs)
    # Every asset of the batch is uploaded at once on the I/O pool (Cloudinary: a round trip
    # each), so a single scan's three uploads overlap too.
    with metrics.stage("upload") as uploading:
        uploads = [(k, asset) for k, scan_assets in enumerate(assets) for asset in scan_assets]
        stored = io_map(lambda job: storage.put(*job[1][1:]), uploads)
    refs: list[dict[str, str]] = [{} for _ in pairs]
    for (k, asset), ref in zip(uploads, stored, strict=True):
        refs[k][asset[0]] = ref
    timings = {**batch_timing, "storage_ms": uploading.ms}
    for ((item, _), analysis), scan_refs in zip(pairs, refs, strict=True):
        fields: dict[str, Any] = {"gate": analysis.gate.to_dict(), **model_fields, **scan_refs,
                                  "timings": dict(timings)}
        if not analysis.gate.accepted:
            metrics.gate_rejected([analysis.gate.code])
            outcomes.append(Outcome(item.scan_id, JobState.FAILED, {
                **fields, "error_code": analysis.gate.code,
                "error_message": analysis.gate.reason}))
        else:
            outcomes.append(Outcome(item.scan_id, JobState.SUCCEEDED, {
                **fields, "label": analysis.label, "confidence": analysis.confidence,
                "probabilities": analysis.probabilities}))
    return outcomes


def finish(session: Session, outcomes: Sequence[Outcome]) -> list[Scan]:
    """Write each outcome to its scan if the scan is not final yet; returns the scans finished."""
    by_id = {o.scan_id: o for o in outcomes}
    rows = session.scalars(select(Scan).where(
        Scan.id.in_(list(by_id)), Scan.state.in_(UNFINISHED_STATES))
        .order_by(Scan.id).with_for_update()).all()
    now = utcnow()
    for row in rows:
        outcome = by_id[row.id]
        for name, value in outcome.fields.items():
            setattr(row, name, value)
        timings = dict(row.timings or {})
        timings["queue_s"] = round(((row.started_at or now) - row.created_at).total_seconds(), 3)
        timings["total_s"] = round((now - row.created_at).total_seconds(), 3)
        row.timings = timings
        row.lease_owner = row.lease_expires_at = None
        transition(session, row, outcome.state, at=now)
    # Blobs of stored originals go; a scan deleted meanwhile stays deleted (shared/lifecycle.py).
    settle_results(session, {o.scan_id: o.fields for o in outcomes}, [r.id for r in rows])
    return list(rows)


def fail_row(session: Session, row: Scan, code: str, message: str) -> None:
    row.error_code, row.error_message = code, message
    row.lease_owner = row.lease_expires_at = None
    transition(session, row, JobState.FAILED)


def fail_unfinished(scan_ids: Sequence[str], code: str, message: str,
                    notify: Notify | None = None) -> list[str]:
    """Give up on scans a task could not finish: failed with `code`, never left processing."""
    with sync_session() as session:
        rows = session.scalars(select(Scan).where(
            Scan.id.in_(list(scan_ids)), Scan.state.in_(UNFINISHED_STATES))
            .order_by(Scan.id).with_for_update()).all()
        for row in rows:
            fail_row(session, row, code, message)
        done = [(r.id, r.callback_url, r.batch_id) for r in rows]
    _report(done, {scan_id: (JobState.FAILED.value, code) for scan_id, _, _ in done})
    announce(done, notify)
    return [scan_id for scan_id, _, _ in done]


def announce(done: Sequence[tuple[str, str | None, str | None]], notify: Notify | None) -> None:
    """After commit: wake the event streams, scan webhooks, and batch completion (decided
    once, by a conditional UPDATE)."""
    publish([i for scan_id, _, batch_id in done for i in (scan_id, batch_id)])
    for scan_id, callback_url, _ in done:
        if callback_url and notify:
            notify(scan_id, "scan")
    for batch_id in sorted({b for _, _, b in done if b}):
        with sync_session() as session:
            unfinished = session.scalar(select(Scan.id).where(
                Scan.batch_id == batch_id, Scan.state.in_(UNFINISHED_STATES)).limit(1))
            if unfinished is not None:
                continue
            won = session.execute(update(Batch).where(
                Batch.id == batch_id, Batch.finished_at.is_(None)).values(finished_at=utcnow()))
            callback = session.scalar(select(Batch.callback_url).where(Batch.id == batch_id))
        if won.rowcount == 1 and callback and notify:  # type: ignore[attr-defined]
            notify(batch_id, "batch")


def process_scans(scan_ids: Sequence[str], *, notify: Notify | None = None,
                  storage: Storage | None = None, owner: str | None = None,
                  gather: int = 0, resend: Resend | None = None,
                  singles_only: bool = False) -> list[str]:
    """The whole pipeline for one task; returns the IDs of the scans it finished.

    `owner` names the task holding the leases (a Celery retry keeps its task id). With
    `gather` (the task passes WORKER_MAX_BATCH) queued scans of other tasks join this one's
    model pass (`claim_queued`; with `singles_only`, no batch scans) up to that many in all.
    If the pass fails, those extras are given back and handed to `resend` (each alone, as a
    failed batch is retried); the task's own scans are its retry's business."""
    settings = get_settings()
    owner = owner or new_id()
    started = time.monotonic()
    # Loaded before any lease is taken: the first load is seconds of busy CPU.
    model = get_model()
    with metrics.stage("database"), sync_session() as session:
        claimed = claim(session, scan_ids, owner, settings.scan_lease_s)
        if claimed:
            claimed += claim_queued(session, gather - len(claimed), owner, settings.scan_lease_s,
                                    exclude=scan_ids, singles_only=singles_only)
    _log_not_claimed(scan_ids, claimed)
    if not claimed:
        return []
    if gather and len(claimed) < gather and settings.worker_batch_wait_ms > 0:
        # Triton's max queue delay: a moment for concurrent single scans to arrive.
        time.sleep(settings.worker_batch_wait_ms / 1000)
        with metrics.stage("database"), sync_session() as session:
            claimed += claim_queued(session, gather - len(claimed), owner, settings.scan_lease_s,
                                    exclude=scan_ids, singles_only=singles_only)
    ids = [item.scan_id for item in claimed]
    metrics.BATCH_SIZE.observe(len(ids))
    publish(ids)  # their `processing` events
    own = set(scan_ids)
    extras = [scan_id for scan_id in ids if scan_id not in own]
    if extras:
        log.debug("task %s: %d own scans + %d gathered", owner, len(ids) - len(extras),
                  len(extras))
    log.info("model pass of %d scans (%d gathered)", len(ids), len(extras),
             extra={"scan_ids": ids})
    with log_context(scan_ids=ids), Heartbeat(ids, owner, settings.scan_lease_s,
                                              settings.task_time_limit_s):
        try:
            outcomes = analyse_and_store(claimed, model, storage or get_storage())
            done = _write_results(outcomes, deadline=started + settings.task_time_limit_s)
        except BaseException:
            # Not ours any more: a retry or the reconciler takes them (if the database is
            # what failed, this fails too and the lease simply runs out).
            release(ids, owner)
            if extras and resend is not None:
                _resend_quietly(resend, extras)
            raise
    _report(done, {o.scan_id: (o.state.value, o.fields.get("error_code")) for o in outcomes},
            gathered=set(extras))
    announce(done, notify)
    return [scan_id for scan_id, _, _ in done]


def _log_not_claimed(scan_ids: Sequence[str], claimed: Sequence[Claimed]) -> None:
    """A message whose scans are final, or in another task's pass (dynamic batching), says so
    under its own request id: the scan id leads on to the pass that processed it."""
    taken = {item.scan_id for item in claimed}
    for scan_id in scan_ids:
        if scan_id not in taken:
            log.info("scan %s is final or in another task's pass", scan_id,
                     extra={"scan_id": scan_id})


def _report(done: Sequence[tuple[str, str | None, str | None]],
            results: dict[str, tuple[str, str | None]], gathered: set[str] | None = None) -> None:
    """One count (metrics) and one log line per scan finished: its id, batch, state, error
    code; `gathered` when it joined this pass from another task's message."""
    for scan_id, _, batch_id in done:
        state, error_code = results[scan_id]
        metrics.scans_finished([(state, error_code)])
        log.log(logging.INFO if state == JobState.SUCCEEDED.value else logging.WARNING,
                "scan %s %s%s", scan_id, state, f" ({error_code})" if error_code else "",
                extra={"scan_id": scan_id, "batch_id": batch_id, "state": state,
                       "error_code": error_code, "gathered": scan_id in (gathered or ())})


def _resend_quietly(resend: Resend, scan_ids: list[str]) -> None:
    """Gathered scans of a failed pass go back to the queue, each alone; if the broker is
    down too, the reconciler re-sends them (they are unleased and not final)."""
    try:
        resend(scan_ids)
    except Exception:
        log.warning("could not re-send %d gathered scans; left to the reconciler",
                    len(scan_ids), exc_info=True)


def _write_results(outcomes: Sequence[Outcome],
                   deadline: float) -> list[tuple[str, str | None, str | None]]:
    """`finish` in its own transaction, retried while the database is unreachable (until
    `deadline`, monotonic): the model pass is the costly part, so a result already computed
    is held and written when the database answers again, not computed a second time."""
    delay = 0.5
    while True:
        try:
            with metrics.stage("database"), sync_session() as session:
                rows = finish(session, outcomes)
                return [(r.id, r.callback_url, r.batch_id) for r in rows]
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unreachable writing %d results (%s); retrying in %.1fs",
                        len(outcomes), type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
