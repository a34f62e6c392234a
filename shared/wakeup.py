"""Wake-ups for event streams: "scan or batch X has a new event", never the event itself.

The `scan_events` table stays the only source of events (SSE replays and resumes from it);
this only tells a waiting stream to look now rather than at its next poll. Where the broker
is Redis, the worker PUBLISHes the scan and batch IDs on one channel per queue after each
commit, and every API process holds one SUBSCRIBE connection that sets the asyncio events
of the streams waiting on those IDs. Anywhere else (the embedded SQLite stack), or while
Redis is unreachable, streams poll as before: a lost wake-up costs at most one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import weakref
from collections.abc import Iterable

from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

_publisher: object | None = None
_publisher_lock = threading.Lock()


def redis_url(settings: Settings) -> str | None:
    """The Redis that carries wake-ups: the broker's, when the broker is Redis."""
    scheme = settings.broker_url.split(":", 1)[0]
    return settings.broker_url if scheme in ("redis", "rediss") else None


def channel(settings: Settings) -> str:
    return f"neuroscan:{settings.queue_name}:events"


def publish(ids: Iterable[str | None], settings: Settings | None = None) -> None:
    """After a commit: wake the streams following these scan and batch IDs. Best effort."""
    global _publisher
    settings = settings or get_settings()
    url, keys = redis_url(settings), sorted({i for i in ids if i})
    if url is None or not keys:
        return
    try:
        with _publisher_lock:
            if _publisher is None:
                import redis

                _publisher = redis.Redis.from_url(url, socket_timeout=1.0,
                                                  socket_connect_timeout=1.0)
        _publisher.publish(channel(settings), json.dumps(keys))  # type: ignore[attr-defined]
    except Exception:  # Redis down: the streams' polling finds the events anyway
        log.debug("wake-up not published", exc_info=True)


class Listener:
    """One SUBSCRIBE connection per API process (per event loop); streams wait on IDs."""

    def __init__(self, url: str, name: str) -> None:
        self._url, self._channel = url, name
        # Weak: a stream that ends simply drops its event, nothing to unregister.
        self._waiting: dict[str, weakref.WeakSet[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    def event_for(self, key: str) -> asyncio.Event:
        """An event set whenever `key` is published; clear it before each look."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(self._waiting) > 10_000:  # keys whose streams ended and were never woken
            for stale in [k for k, v in self._waiting.items() if not v]:
                del self._waiting[stale]
        event = asyncio.Event()
        self._waiting.setdefault(key, weakref.WeakSet()).add(event)
        return event

    async def _run(self) -> None:
        import redis.asyncio as aioredis

        while True:
            client = aioredis.Redis.from_url(self._url, socket_connect_timeout=1.0)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    self.connected = True
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        for key in json.loads(message["data"]):
                            waiters = self._waiting.get(key)
                            if waiters is not None and not waiters:
                                del self._waiting[key]
                            for event in list(waiters or ()):
                                event.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.debug("wake-up listener lost Redis; streams poll meanwhile", exc_info=True)
            finally:
                self.connected = False
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(1.0)


_listeners: dict[int, Listener] = {}


def wake_event(key: str, settings: Settings | None = None) -> asyncio.Event:
    """An event set when `key` (a scan or batch ID) has news; never set where there are no
    wake-ups (no Redis), so waiting on it with a timeout is the plain poll."""
    found = listener(settings)
    return found.event_for(key) if found is not None else asyncio.Event()


def listener(settings: Settings | None = None) -> Listener | None:
    """This event loop's listener, or None where wake-ups are not available (poll)."""
    settings = settings or get_settings()
    url = redis_url(settings)
    if url is None:
        return None
    loop_id = id(asyncio.get_running_loop())
    if loop_id not in _listeners:
        _listeners[loop_id] = Listener(url, channel(settings))
    return _listeners[loop_id]
