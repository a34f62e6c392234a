"""Per-key rate limits and the cap on open event streams, checked at the door (api/guard.py).

Requests are counted per API key id (`users.id`), never per address: behind a hospital's
NAT or our own proxy every client shares one address, and a key is what we hand out and can
take back. Uploads (POST, PUT, PATCH, DELETE) and reads (GET, HEAD) have separate budgets per
minute, in a moving window (the `limits` library); beyond either the answer is 429 with
`Retry-After` (when the oldest counted request leaves the window).

Counters live in Redis when the deployment has one (RATE_LIMIT_STORAGE_URL, or the broker's
Redis), shared by every API process; in the embedded default, in the one API process's memory.

Open SSE streams per key are capped (SSE_STREAMS_PER_KEY): each open stream holds a slot in a
Redis sorted set, scored with a lease it renews while it runs, so a crashed API process's
slots free themselves within a lease (`limits` counts requests, not concurrency; this is the
one thing it does not do). In memory: a counter.

If Redis cannot be reached the door stays open (logged, and not retried for a few seconds):
a rate limit must never be what takes the service down; the database stays the authority on
what was accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from shared.settings import Settings

log = logging.getLogger(__name__)

UPLOADS = "uploads"
READS = "reads"
_READ_METHODS = ("GET", "HEAD")
STREAM_LEASE_S = 60.0
# How long to wait before telling a client whose streams are all taken to try again.
STREAM_RETRY_AFTER_S = 10
_REDIS_TIMEOUT_S = 0.5
_REDIS_BACKOFF_S = 5.0
_PREFIX = "neuroscan:ratelimit"

# KEYS[1]: the key's stream set. ARGV: now, lease end, slot id, cap. 1: slot taken, 0: full.
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(ARGV[2] - ARGV[1]) + 1)
return 1
"""


def budget(method: str) -> str:
    return READS if method.upper() in _READ_METHODS else UPLOADS


def storage_url(settings: Settings) -> str:
    """RATE_LIMIT_STORAGE_URL; else the broker's Redis; else memory (the embedded default)."""
    if settings.rate_limit_storage_url:
        return settings.rate_limit_storage_url
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return settings.broker_url
    return "memory://"


@dataclass(frozen=True)
class Refusal:
    """A 429: which limit, and when to come back."""

    code: str
    message: str
    retry_after_s: int
    limit: int


class KeyLimiter:
    """The limits of one API process (one per event loop and settings)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        url = storage_url(settings)
        self._items: dict[str, RateLimitItem | None] = {
            UPLOADS: _per_minute(settings.rate_limit_uploads_per_min),
            READS: _per_minute(settings.rate_limit_reads_per_min),
        }
        self._redis: Any = None
        if url.startswith("memory"):
            self._storage: MemoryStorage | RedisStorage = MemoryStorage()
            self._open: dict[str, int] = {}
        else:
            options: dict[str, Any] = {"socket_timeout": _REDIS_TIMEOUT_S,
                                       "socket_connect_timeout": _REDIS_TIMEOUT_S}
            self._storage = RedisStorage(f"async+{url}", implementation="redispy",
                                         key_prefix=_PREFIX, **options)
            import redis.asyncio

            self._redis = redis.asyncio.Redis.from_url(url, **options)
            self._take_slot = self._redis.register_script(_TAKE_SLOT)
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._skip_until = 0.0

    @property
    def backend(self) -> str:
        return "memory" if self._redis is None else "redis"

    async def hit(self, key_id: str, method: str) -> Refusal | None:
        """Count one request of this key; a Refusal when its budget for the minute is spent."""
        kind = budget(method)
        item = self._items[kind]
        if item is None or self._skipping():
            return None
        try:
            if await self._limiter.hit(item, kind, key_id):
                return None
            reset_at, _remaining = await self._limiter.get_window_stats(item, kind, key_id)
        except Exception as exc:  # Redis down or slow: stay open, say so, try again later
            self._storage_failed(exc)
            return None
        retry = max(1, math.ceil(reset_at - time.time()))
        return Refusal("rate_limited",
                       f"This API key made more than {item.amount} {kind} requests in a "
                       f"minute; try again in {retry} s.", retry, item.amount)

    @contextlib.asynccontextmanager
    async def stream_slot(self, key_id: str) -> AsyncIterator[Refusal | None]:
        """Hold one of the key's stream slots while the block runs; yields a Refusal (and holds
        nothing) when they are all taken."""
        cap = self.settings.sse_streams_per_key
        if cap <= 0 or self._skipping():
            yield None
            return
        if self._redis is None:
            if self._open.get(key_id, 0) >= cap:
                yield _streams_refusal(cap)
                return
            self._open[key_id] = self._open.get(key_id, 0) + 1
            try:
                yield None
            finally:
                self._open[key_id] -= 1
            return
        name, slot = f"{_PREFIX}:streams:{key_id}", uuid.uuid4().hex
        try:
            now = time.time()
            taken = await self._take_slot(keys=[name], args=[now, now + STREAM_LEASE_S, slot, cap])
        except Exception as exc:
            self._storage_failed(exc)
            yield None
            return
        if not taken:
            yield _streams_refusal(cap)
            return
        renewer = asyncio.create_task(self._renew(name, slot))
        try:
            yield None
        finally:
            renewer.cancel()
            with contextlib.suppress(Exception):
                await self._redis.zrem(name, slot)

    async def _renew(self, name: str, slot: str) -> None:
        while True:
            await asyncio.sleep(STREAM_LEASE_S / 3)
            with contextlib.suppress(Exception):
                await self._redis.zadd(name, {slot: time.time() + STREAM_LEASE_S}, xx=True)

    def _skipping(self) -> bool:
        return time.monotonic() < self._skip_until

    def _storage_failed(self, exc: BaseException) -> None:
        log.warning("rate limit storage unavailable (%s: %s): limits off for %.0f s",
                    type(exc).__name__, exc, _REDIS_BACKOFF_S)
        self._skip_until = time.monotonic() + _REDIS_BACKOFF_S


def _per_minute(amount: int) -> RateLimitItem | None:
    return RateLimitItemPerMinute(amount) if amount > 0 else None


def _streams_refusal(cap: int) -> Refusal:
    return Refusal("too_many_streams",
                   f"This API key already has {cap} event streams open; close one, or follow "
                   "a batch's stream (/v1/batches/{id}/events) instead of each scan's.",
                   STREAM_RETRY_AFTER_S, cap)


# One limiter per event loop (Redis connections belong to the loop that made them), for the
# settings object it was made from (tests switch settings in one process).
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, KeyLimiter] = \
    weakref.WeakKeyDictionary()


def key_limiter(settings: Settings) -> KeyLimiter:
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None or limiter.settings is not settings:
        limiter = _limiters[loop] = KeyLimiter(settings)
    return limiter
