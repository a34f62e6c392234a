"""Server-Sent Events: one event per state change of a scan, or of every scan in a batch.

The `scan_events` table is the source: each event's SSE `id` is its row id, so a client
that reconnects with `Last-Event-ID` gets exactly what it missed. The stream first replays
what is already recorded, then polls for new rows every 200 ms, backing off to 1 s while
nothing changes (the same code on SQLite and PostgreSQL; a row is visible as soon as the
worker's transaction commits), and ends once the scan, or every scan of the batch, is final.
Where the broker is Redis, the worker also publishes each commit's scan and batch IDs and a
waiting stream looks at once (`shared.wakeup`); the polling stays as the fallback.
FastAPI sends keep-alive comments meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import select

from api.deps import BatchDep, ScanDep, SessionDep
from shared.db.models import Scan, ScanEvent
from shared.db.session import async_session_factory, release
from shared.events import event_payload
from shared.states import FINAL_STATES
from shared.wakeup import wake_event

router = APIRouter(prefix="/v1", tags=["events"])

POLL_INTERVAL_S = 0.2
# While nothing changes the interval grows to this (each poll takes a pooled connection for one
# query: 64 idle streams at 5 polls/s would be most of a small pool's work).
MAX_POLL_INTERVAL_S = 1.0
RETRY_MS = 1000
_DOC = {200: {"description": "`text/event-stream`: `id` = event id, `event` = state, "
                             "`data` = JSON with scan_id, batch_id, state, at (and the "
                             "prediction or error once final)"}}


def _resume_point(header: str | None, query: int | None) -> int:
    for value in (header, query):
        try:
            if value is not None and int(value) >= 0:
                return int(value)
        except ValueError:
            continue
    return 0


async def _follow(tenant_id: str, *, scan_id: str | None = None, batch_id: str | None = None,
                  expected: int, after: int) -> AsyncIterator[ServerSentEvent]:
    """Events for one scan or one batch after `after`, until `expected` scans are final."""
    final: set[str] = set()
    last = after
    first = True
    factory = async_session_factory()
    interval = POLL_INTERVAL_S
    if after:
        # Scans that became final before the resume point still count toward the end.
        async with factory() as session:
            query = select(ScanEvent.scan_id).where(
                ScanEvent.tenant_id == tenant_id, ScanEvent.id <= after,
                ScanEvent.state.in_(FINAL_STATES))
            query = query.where(ScanEvent.scan_id == scan_id) if scan_id else \
                query.where(ScanEvent.batch_id == batch_id)
            final.update(await session.scalars(query))
    # Set when the worker publishes news of this scan or batch (Redis); the poll below is the
    # fallback, and the only way on the embedded stack (shared/wakeup.py).
    woken = wake_event(scan_id or batch_id or "")
    while len(final) < expected:
        woken.clear()  # before the query: news arriving during it is not lost
        async with factory() as session:  # short sessions: no transaction held while waiting
            query = (select(ScanEvent, Scan)
                     .join(Scan, Scan.id == ScanEvent.scan_id)
                     .where(ScanEvent.tenant_id == tenant_id, ScanEvent.id > last)
                     .order_by(ScanEvent.id).limit(500))
            query = query.where(ScanEvent.scan_id == scan_id) if scan_id else \
                query.where(ScanEvent.batch_id == batch_id)
            rows = (await session.execute(query)).all()
        for event, scan in rows:
            last = event.id
            if event.state in FINAL_STATES:
                final.add(event.scan_id)
            yield ServerSentEvent(id=str(event.id), event=event.state,
                                  data=event_payload(event, scan),
                                  retry=RETRY_MS if first else None)
            first = False
        if rows:
            interval = POLL_INTERVAL_S
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), interval)
            interval = min(interval * 1.5, MAX_POLL_INTERVAL_S)


@router.get("/scans/{scan_id}/events", response_class=EventSourceResponse, responses=_DOC,
            summary="Follow one scan")
async def scan_events(
    scan: ScanDep,
    session: SessionDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="Resume after this event id")] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Every state change of the scan (replayed from the start, or after `Last-Event-ID`),
    then live ones; the stream ends when the scan is final."""
    await release(session)  # found and authorised: no connection is held while streaming
    async for event in _follow(scan.tenant_id, scan_id=scan.id, expected=1,
                               after=_resume_point(last_event_id, after)):
        yield event


@router.get("/batches/{batch_id}/events", response_class=EventSourceResponse, responses=_DOC,
            summary="Follow a batch")
async def batch_events(
    batch: BatchDep,
    session: SessionDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="Resume after this event id")] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Every state change of every scan in the batch; ends when all of them are final."""
    await release(session)  # found and authorised: no connection is held while streaming
    async for event in _follow(batch.tenant_id, batch_id=batch.id, expected=batch.total,
                               after=_resume_point(last_event_id, after)):
        yield event
