"""A real worker's Prometheus /metrics, scraped over HTTP while it processes real scans: scans
by outcome and error code, per-stage latency, batch sizes, gate rejections, the model's name
and version; and the depth of each queue, read from a real Redis."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.queue import BULK, INTERACTIVE, PROCESS_SCANS, WEBHOOKS, make_producer, queue_names
from shared.settings import Settings
from tests.support.images import brain_png, colour_photo_png
from tests.support.stack import LiveStack, free_port, wait_for_batch, wait_for_scan
from worker.metrics import STAGES, QueueDepth

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: Samples, metric: str, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def _scrape(url: str, timeout_s: float = 30.0) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = httpx.get(url, timeout=5)
            r.raise_for_status()
            return _samples(r.text)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port(20200, 20299)


@pytest.fixture(scope="module")
def stack(live_stack: Any, metrics_port: int) -> LiveStack:
    return live_stack("pg", port_range=(20100, 20199),
                      env={"WORKER_METRICS_PORT": str(metrics_port)})


def test_worker_metrics_move_with_the_scans_it_processes(
        stack: LiveStack, metrics_port: int, stack_model_card: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    before = _scrape(url)
    name, version = stack_model_card["name"], stack_model_card["version"]
    assert _value(before, "neuroscan_worker_model_info", name=name, version=version,
                  sha256=stack_model_card["weights"]["sha256"]) == 1.0
    queues = queue_names(Settings(_env_file=None, queue_name=stack.env["QUEUE_NAME"]))
    for kind, queue in queues.items():
        assert ("neuroscan_queue_depth", frozenset({"queue": queue, "kind": kind}.items())) \
            in before, (kind, queue)

    with stack.client() as client:
        r = client.post("/v1/batches", files=[("files", (f"s{i}.png", brain_png(40 + i),
                                                          "image/png")) for i in range(3)])
        assert r.status_code == 202, r.text
        batch = wait_for_batch(client, r.json()["id"])
        r = client.post("/v1/scans", files={"file": ("holiday.png", colour_photo_png(),
                                                     "image/png")})
        assert r.status_code == 202, r.text
        photo = wait_for_scan(client, r.json()["id"])
    assert batch["counts"].get("succeeded") == 3, batch["counts"]
    assert photo["state"] == "failed" and photo["error"]["code"] == "not_brain_mri"

    after = _scrape(url)

    def delta(metric: str, **labels: str) -> float:
        return _value(after, metric, **labels) - _value(before, metric, **labels)

    model = {"model_name": name, "model_version": version}
    scans = {k: v for k, v in after.items() if k[0] == "neuroscan_worker_scans_total"}
    assert delta("neuroscan_worker_scans_total", outcome="succeeded", error_code="",
                 **model) == 3, scans
    assert delta("neuroscan_worker_scans_total", outcome="failed", error_code="not_brain_mri",
                 **model) == 1
    assert delta("neuroscan_worker_gate_rejections_total", code="not_brain_mri") == 1
    # Every scan was in exactly one model pass.
    assert delta("neuroscan_worker_batch_size_sum") == 4
    assert 1 <= delta("neuroscan_worker_batch_size_count") <= 4
    for stage in STAGES:
        assert delta("neuroscan_worker_stage_seconds_count", stage=stage) >= 1, stage
        assert delta("neuroscan_worker_stage_seconds_sum", stage=stage) > 0, stage
        assert delta("neuroscan_worker_stage_seconds_bucket", stage=stage, le="+Inf") >= 1
    # Nothing is left waiting once the scans are final.
    assert _value(after, "neuroscan_queue_depth", queue=queues[INTERACTIVE],
                  kind=INTERACTIVE) == 0

    # The API's own /metrics, scraped over HTTP from the same live stack.
    api = _samples(httpx.get(f"{stack.base_url}/metrics", timeout=10).text)
    assert _value(api, "http_requests_total", handler="/v1/batches", method="POST",
                  status="2xx") >= 1
    assert _value(api, "http_requests_total", handler="/v1/scans/{scan_id}", method="GET",
                  status="2xx") >= 1


def test_queue_depth_reads_each_queue_from_redis(redis_url: str) -> None:
    """Messages waiting in the interactive and bulk queues are counted per queue, from the
    broker itself; a broker that does not answer leaves the metric out, never a wrong 0."""
    settings = Settings(_env_file=None, broker_url=redis_url,
                        queue_name=f"nstest-depth-{uuid.uuid4().hex[:8]}")
    producer = make_producer(settings)
    queues = queue_names(settings)
    try:
        for _ in range(3):
            producer.send_task(PROCESS_SCANS, args=[[str(uuid.uuid4())]], queue=queues[INTERACTIVE])
        for _ in range(2):
            producer.send_task(PROCESS_SCANS, args=[[str(uuid.uuid4())]], queue=queues[BULK])
        depth = {tuple(sorted(s.labels.items())): s.value
                 for family in QueueDepth(producer, settings).collect() for s in family.samples}
        assert depth == {(("kind", INTERACTIVE), ("queue", queues[INTERACTIVE])): 3.0,
                         (("kind", BULK), ("queue", queues[BULK])): 2.0,
                         (("kind", WEBHOOKS), ("queue", queues[WEBHOOKS])): 0.0}
    finally:
        import redis

        client = redis.Redis.from_url(redis_url)
        for queue in queues.values():
            client.delete(queue, f"_kombu.binding.{queue}", *client.keys(f"{queue}\x06*"))
        client.close()
        producer.close()

    down = Settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", queue_name="nstest-down")
    assert list(QueueDepth(make_producer(down), down).collect()) == []
