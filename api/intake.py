"""Accepting uploads: read within the size limit, check, store durably, then enqueue.

`accept_upload` is the single place where an upload's bytes are judged and, for DICOM,
prepared for storage; everything that must happen to every accepted file happens there.
Storing writes the `queued` scan row, its original bytes and its first event in one
transaction; only after the commit is the task sent, so `202 Accepted` means "we have it"
even when the broker is down (the worker's start-up sweep re-enqueues what was not sent).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from fastapi import UploadFile
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.concurrency import run_in_threadpool

from shared import archive, errors, webhooks
from shared.db.models import Batch, Scan, ScanUpload, new_id, utcnow
from shared.deid import deidentify
from shared.errors import InputError
from shared.events import transition
from shared.imaging import MEDIA_TYPES, decode_and_check, strip_metadata
from shared.queue import enqueue_scans, make_producer
from shared.settings import Settings, get_settings
from shared.states import JobState

log = logging.getLogger(__name__)

_READ_CHUNK = 1 << 20


@dataclass
class AcceptedUpload:
    """An upload that passed every check, with the bytes we will store."""

    data: bytes
    format: str
    filename: str | None
    frame: int | None
    patient_ref: str | None = None
    study_ref: str | None = None

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


async def read_limited(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes, refusing (413) as soon as more than `limit` have been read."""
    chunks, size = [], 0
    while chunk := await upload.read(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise InputError(f"The file is larger than the limit of {limit} bytes.",
                             code=errors.FILE_TOO_LARGE, http_status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def accept_upload(data: bytes, *, filename: str | None, frame: int | None, tenant_id: str,
                  settings: Settings) -> AcceptedUpload:
    """Judge one upload (type by magic bytes, decodable, dimensions); InputError if refused.

    Synchronous (decoding is CPU work): routes call it through `run_in_threadpool`."""
    image = decode_and_check(data, frame=frame, settings=settings)
    if image.format == "dicom":  # de-identified before anything is stored or logged
        deid = deidentify(data, tenant_id, settings)
        return AcceptedUpload(data=deid.data, format="dicom", filename=deid.stored_name,
                              frame=frame, patient_ref=deid.patient_ref, study_ref=deid.study_ref)
    # PNG/JPEG: stored without EXIF/XMP/text chunks, pixels byte for byte the same.
    return AcceptedUpload(data=strip_metadata(data), format=image.format,
                          filename=_clean_filename(filename),
                          frame=frame)


class Staging:
    """Accepted uploads kept in a temporary file until they are written: a batch is judged
    with no database connection held, then stored in one short transaction."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by __exit__)
        self._items: list[tuple[AcceptedUpload, int, int]] = []

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, upload: AcceptedUpload) -> None:
        self._file.seek(0, 2)
        offset = self._file.tell()
        self._file.write(upload.data)
        self._items.append((replace(upload, data=b""), offset, len(upload.data)))

    def __iter__(self) -> Iterator[AcceptedUpload]:
        for upload, offset, size in self._items:
            self._file.seek(offset)
            yield replace(upload, data=self._file.read(size))


def _clean_filename(name: str | None) -> str | None:
    if not name:
        return None
    # Client text: keep the base name only, bounded, without control characters.
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in base if ch.isprintable())[:255] or None


def check_callback_url(url: str | None) -> str | None:
    """https only, no private/link-local targets (SSRF): shared.webhooks' policy."""
    checked = webhooks.check_callback_url(url, get_settings())
    return checked.url if checked else None


def batch_members(data: bytes, filename: str | None, settings: Settings) -> list[archive.Member]:
    """A ZIP (by magic bytes) becomes its member files (each with its own error, if it could
    not be read); anything else is itself."""
    if not archive.is_zip(data):
        return [archive.Member(name=filename or "", data=data)]
    return archive.expand_zip(data, settings)


def add_scan(session: AsyncSession, tenant_id: str, upload: AcceptedUpload, *,
             batch_id: str | None = None, callback_url: str | None = None) -> Scan:
    """Add the queued scan, its bytes and its `queued` event to the session (not committed)."""
    # Ids are set here, not at flush: the upload row and the event refer to the scan.
    scan = Scan(id=new_id(), tenant_id=tenant_id, batch_id=batch_id, state=None,
                      created_at=utcnow(), filename=upload.filename,
                      format=upload.format, size_bytes=len(upload.data),
                      sha256=hashlib.sha256(upload.data).hexdigest(), frame=upload.frame,
                      attempts=0, callback_url=callback_url, patient_ref=upload.patient_ref,
                      study_ref=upload.study_ref)
    transition(session, scan, JobState.QUEUED, at=scan.created_at)
    session.add(scan)
    session.add(ScanUpload(scan_id=scan.id, data=upload.data, media_type=upload.media_type))
    return scan


def new_batch(session: AsyncSession, tenant_id: str, callback_url: str | None) -> Batch:
    batch = Batch(id=new_id(), tenant_id=tenant_id, callback_url=callback_url, total=0)
    session.add(batch)
    return batch


@lru_cache(maxsize=1)
def producer() -> Any:
    return make_producer(get_settings())


class _Sender:
    """Sends the tasks of concurrent requests together (a group commit for the broker).

    Requests that finish while a send is in flight wait for the next one, which carries all
    their scan IDs at once (split per queue into tasks of `worker_batch_size`): one broker
    write for many uploads (kombu's SQLite transport has a single writer; Redis saves round
    trips) and fuller batches for the worker. Interactive scans are sent first. Each request
    still returns only after its own IDs were sent."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._pending: list[tuple[list[str], str, asyncio.Future[bool]]] = []

    async def send(self, scan_ids: list[str], queue: str, settings: Settings) -> bool:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((scan_ids, queue, done))
        async with self._lock:
            if not done.done():  # nobody took ours along while we waited: send all pending
                group, self._pending = self._pending, []
                by_queue: dict[str, list[str]] = {settings.queue_interactive: []}
                for group_ids, group_queue, _ in group:
                    by_queue.setdefault(group_queue, []).extend(group_ids)
                try:
                    await run_in_threadpool(_send_all, by_queue, settings.worker_batch_size)
                    ok = True
                except Exception:
                    log.exception("could not enqueue %d scans; they stay queued for the "
                                  "reconciler", sum(len(ids) for ids in by_queue.values()))
                    ok = False
                for _, _, future in group:
                    future.set_result(ok)
        return done.result()


def _send_all(by_queue: dict[str, list[str]], batch_size: int) -> None:
    for queue, ids in by_queue.items():
        enqueue_scans(producer(), ids, batch_size, queue)


# asyncio locks belong to the loop that made them: one sender per event loop.
_senders: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sender] = \
    weakref.WeakKeyDictionary()


async def enqueue(scan_ids: list[str], settings: Settings, *, bulk: bool | None = None) -> bool:
    """Send the tasks (after commit) to the bulk queue (`bulk`; None: more than one scan) or
    the interactive one. A failure is logged, not raised: the scans are stored."""
    if bulk is None:
        bulk = len(scan_ids) > 1
    sender = _senders.setdefault(asyncio.get_running_loop(), _Sender())
    return await sender.send(scan_ids, settings.queue_bulk if bulk else settings.queue_interactive,
                             settings)
