"""Wake-ups for event streams over a real Redis: published IDs set the waiting events."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from shared import wakeup
from shared.settings import Settings

REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379") + "/1"


def _settings(broker_url: str) -> Settings:
    return Settings(broker_url=broker_url, queue_name=f"wake-{uuid.uuid4().hex[:8]}")


def test_no_redis_no_wakeups() -> None:
    s = _settings("sqla+sqlite:///./var/broker.db")
    assert wakeup.redis_url(s) is None
    wakeup.publish(["a"], s)  # nothing to do, no error

    async def check() -> None:
        assert wakeup.listener(s) is None
        assert not wakeup.wake_event("a", s).is_set()

    asyncio.run(check())


def test_published_ids_wake_their_streams_only() -> None:
    s = _settings(REDIS)

    async def check() -> None:
        listener = wakeup.listener(s)
        assert listener is not None
        mine, other = listener.event_for("scan-1"), listener.event_for("scan-2")
        for _ in range(100):  # the SUBSCRIBE connection comes up in the background
            if listener.connected:
                break
            await asyncio.sleep(0.05)
        assert listener.connected
        await asyncio.to_thread(wakeup.publish, ["scan-1", None, "batch-9"], s)
        await asyncio.wait_for(mine.wait(), 5)
        await asyncio.sleep(0.1)
        assert not other.is_set()

    asyncio.run(check())


def test_publish_with_redis_down_is_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wakeup, "_publisher", None)
    wakeup.publish(["x"], _settings("redis://127.0.0.1:1/0"))  # refused: logged, not raised
    monkeypatch.setattr(wakeup, "_publisher", None)
