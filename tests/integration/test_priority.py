"""Urgent work first: one scan uploaded behind a 1,000-scan batch is final in seconds.

Through the real API and a real Celery worker (on Redis and PostgreSQL, and on the embedded
SQLite broker and database): a 1,000-file batch goes to the bulk queue, then one scan to the
interactive queue. The worker (prefetch 1, queues checked interactive first, shared/queue.py)
takes the single scan as soon as the model pass it has in hand is done, while most of the
1,000 are still queued. The figures are printed as a `PRIORITY ...` line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest

from tests.support.images import brain_png
from tests.support.stack import LiveStack

BULK = 1000
INTERACTIVE_GOAL_S = 10.0  # "finished in seconds", with margin for two busy shared cores


@pytest.fixture(scope="module", params=["pg", "embedded"])
def stack(request: pytest.FixtureRequest, live_stack: Callable[..., LiveStack]) -> LiveStack:
    """Redis and PostgreSQL (compose), and the SQLite broker and database (`make run`)."""
    return live_stack(request.param, port_range=(19650, 19699), tenant="priority-hospital")


def _counts(client: httpx.Client, batch_id: str) -> dict[str, int]:
    return client.get(f"/v1/batches/{batch_id}").raise_for_status().json()["counts"]


def test_single_scan_overtakes_a_thousand_scan_batch(stack: LiveStack) -> None:
    images = [brain_png(seed, size=64) for seed in range(20)]  # small, valid; repeated
    files = [("files", (f"bulk-{i:04d}.png", images[i % len(images)], "image/png"))
             for i in range(BULK)]
    with stack.client(timeout=120.0) as client:
        t0 = time.monotonic()
        batch = client.post("/v1/batches", files=files)
        assert batch.status_code == 202, batch.text
        batch_id = batch.json()["id"]
        assert len(batch.json()["scan_ids"]) == BULK
        upload_s = time.monotonic() - t0

        while not (before := _counts(client, batch_id)).get("succeeded"):  # a warm worker,
            assert time.monotonic() - t0 < 120, before  # well into the batch
            time.sleep(0.1)
        t1 = time.monotonic()
        single = client.post("/v1/scans", files={"file": ("urgent.png", brain_png(99),
                                                          "image/png")})
        assert single.status_code == 202, single.text
        scan_id = single.json()["id"]
        while True:
            body = client.get(f"/v1/scans/{scan_id}").raise_for_status().json()
            if body["state"] in ("succeeded", "failed"):
                break
            assert time.monotonic() - t1 < 60, f"single scan still {body['state']} after 60 s"
            time.sleep(0.05)
        latency_s = time.monotonic() - t1
        after = _counts(client, batch_id)
        print("PRIORITY " + json.dumps({
            "stack": stack.backend, "bulk_scans": BULK, "bulk_upload_s": round(upload_s, 2),
            "bulk_counts_when_single_sent": before, "single_final_s": round(latency_s, 2),
            "single_state": body["state"], "single_queue_s": body.get("timings", {}).get("queue_s"),
            "bulk_counts_when_single_final": after}))

        assert body["state"] == "succeeded", body.get("error")
        assert latency_s < INTERACTIVE_GOAL_S
        # It overtook the batch: most of the 1,000 were still waiting when it was done.
        assert after.get("queued", 0) > BULK // 2, after
    # The leftovers go with the stack: its worker stops after the batch in hand, and its
    # database and queues are dropped.
