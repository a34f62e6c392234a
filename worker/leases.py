"""Leases on claimed scans: a heartbeat renews them while a task works, `release` gives them up.

A `processing` scan names the task holding it (`lease_owner`) and until when
(`lease_expires_at`). While the task runs, a heartbeat thread pushes the expiry forward every
third of SCAN_LEASE_S, so a live worker keeps its scans however long its batch takes (up to
TASK_TIME_LIMIT_S), and a dead one's lease runs out within SCAN_LEASE_S; the reconciler then
takes its scans back (`worker/reconciler.py`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from types import TracebackType

from sqlalchemy import update

from shared.db.models import Scan, utcnow
from shared.db.session import sync_session
from shared.states import JobState

log = logging.getLogger(__name__)

# Owners whose task is running in this process, within its time limit: the reconciler in this
# process never takes their scans back, even if a busy CPU made a heartbeat late.
_alive: set[str] = set()
_alive_lock = threading.Lock()


def alive_owners() -> frozenset[str]:
    with _alive_lock:
        return frozenset(_alive)


def _held(scan_ids: Sequence[str], owner: str) -> object:
    return ((Scan.id.in_(list(scan_ids))) & (Scan.lease_owner == owner)
            & (Scan.state == JobState.PROCESSING.value))


def renew(scan_ids: Sequence[str], owner: str, lease_s: float) -> int:
    """Push the lease forward on the scans `owner` still holds; returns how many."""
    with sync_session() as session:
        result = session.execute(update(Scan).where(_held(scan_ids, owner)).values(
            lease_expires_at=utcnow() + timedelta(seconds=lease_s)))
        return int(result.rowcount)  # type: ignore[attr-defined]


def release(scan_ids: Sequence[str], owner: str) -> None:
    """Give the scans up (the task failed; a retry or the reconciler takes them). Best effort:
    when the database is what failed, the lease runs out by itself."""
    try:
        with sync_session() as session:
            session.execute(update(Scan).where(_held(scan_ids, owner)).values(
                lease_owner=None, lease_expires_at=None))
    except Exception:
        log.warning("could not release %d scans; their lease will run out", len(scan_ids),
                    exc_info=True)


class Heartbeat:
    """Renews `owner`'s lease on `scan_ids` every `lease_s / 3` until the block ends, for at
    most `limit_s` (a hung task must lose its scans too)."""

    def __init__(self, scan_ids: Sequence[str], owner: str, lease_s: float,
                 limit_s: float) -> None:
        self._ids, self._owner, self._lease_s = list(scan_ids), owner, lease_s
        self._until = time.monotonic() + limit_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        with _alive_lock:
            _alive.add(self._owner)
        self._thread.start()
        return self

    def _forget(self) -> None:
        with _alive_lock:
            _alive.discard(self._owner)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._forget()
        self._stop.set()
        self._thread.join(timeout=self._lease_s)

    def _run(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            if time.monotonic() > self._until:
                log.error("task over its time limit: no longer renewing %d scans", len(self._ids))
                self._forget()
                return
            try:
                if renew(self._ids, self._owner, self._lease_s) < len(self._ids):
                    log.info("lease heartbeat: some of %d scans are final or taken back",
                             len(self._ids))
            except Exception:  # the database may be down for a moment; try again next beat
                log.warning("lease heartbeat failed", exc_info=True)
