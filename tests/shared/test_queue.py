"""What goes on the broker: task messages carry scan IDs and nothing else, on the queue of
their kind. Read back raw from a real Redis."""

from __future__ import annotations

import base64
import json
import uuid

import redis

from shared.queue import BULK, INTERACTIVE, PROCESS_SCANS, enqueue_scans, make_producer, queue_names
from shared.settings import Settings

REDIS_DB = 9


def _drain(client: redis.Redis, queue: str) -> list[dict]:
    messages = []
    while (raw := client.rpop(queue)) is not None:
        messages.append(json.loads(raw))
    return messages


def test_task_messages_carry_scan_ids_only() -> None:
    prefix = f"msgtest-{uuid.uuid4().hex[:8]}"
    settings = Settings(_env_file=None, broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
                        queue_name=prefix)
    names = queue_names(settings)
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    producer = make_producer(settings)
    try:
        assert enqueue_scans(producer, ids, batch_size=2, queue=names[BULK]) == 3
        assert enqueue_scans(producer, ids[:1], batch_size=16, queue=names[INTERACTIVE]) == 1
        bulk, interactive = _drain(client, names[BULK]), _drain(client, names[INTERACTIVE])
    finally:
        client.delete(*names.values())
        producer.close()
    assert len(bulk) == 3 and len(interactive) == 1
    sent: list[str] = []
    for message in bulk + interactive:
        assert message["headers"]["task"] == PROCESS_SCANS
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert kwargs == {} and len(args) == 1
        assert all(isinstance(i, str) and str(uuid.UUID(i)) == i for i in args[0])
        sent += args[0]
    assert sorted(sent[:5]) == sorted(ids) and sent[5:] == ids[:1]
