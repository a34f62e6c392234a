"""A worker's Prometheus metrics, served on WORKER_METRICS_HOST:WORKER_METRICS_PORT.

A worker is one process (the solo or threads pool; prefork is refused, see
`worker/celery_app.py`), so every observation lands in this process's default registry and
no multiprocess mode is needed; run several workers on one host with a port each.
docs/operations.md ("Monitoring") lists every metric and a scrape configuration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.queue import queue_names
from shared.settings import Settings

if TYPE_CHECKING:
    from worker.model import LoadedModel

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "model", "overlay", "upload", "database")

SCANS = Counter(
    "neuroscan_worker_scans", "Scans this worker finished, by outcome and error code "
    "(error_code is empty for succeeded scans), and the model that served them.",
    ["outcome", "error_code", "model_name", "model_version"])
STAGE_SECONDS = Histogram(
    "neuroscan_worker_stage_seconds", "Wall time of one pipeline stage for one model pass "
    "(all its scans together); database: each transaction of a pass (claim, results).",
    ["stage"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
BATCH_SIZE = Histogram(
    "neuroscan_worker_batch_size", "Scans in one model pass (a task's own plus gathered ones).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
GATE_REJECTIONS = Counter(
    "neuroscan_worker_gate_rejections", "Images the input gate refused, by reason code.",
    ["code"])
MODEL = Info("neuroscan_worker_model", "The model this worker serves (labels: name, version, "
             "sha256 of the weights).")

_model_labels: dict[str, str] = {"model_name": "", "model_version": ""}


@dataclass
class StageTimer:
    seconds: float = 0.0

    @property
    def ms(self) -> float:
        return round(self.seconds * 1000, 2)


@contextmanager
def stage(name: str) -> Iterator[StageTimer]:
    """Time a pipeline stage: observed in `neuroscan_worker_stage_seconds{stage=name}` and
    readable afterwards as `timer.seconds` / `timer.ms`."""
    timer = StageTimer()
    start = time.perf_counter()
    try:
        yield timer
    finally:
        timer.seconds = time.perf_counter() - start
        STAGE_SECONDS.labels(name).observe(timer.seconds)


def model_loaded(model: LoadedModel) -> None:
    _model_labels.update(model_name=model.name, model_version=model.version)
    MODEL.info({"name": model.name, "version": model.version, "sha256": model.sha256})
    SCANS.labels("succeeded", "", model.name, model.version)  # a zero before the first scan


def scans_finished(outcomes: Iterable[tuple[str, str | None]]) -> None:
    """Count finished scans: (final state, error code or None) each."""
    for outcome, error_code in outcomes:
        SCANS.labels(outcome=outcome, error_code=error_code or "", **_model_labels).inc()


def gate_rejected(codes: Sequence[str | None]) -> None:
    for code in codes:
        GATE_REJECTIONS.labels(code or "unknown").inc()


class QueueDepth(Collector):
    """`neuroscan_queue_depth{queue, kind}`: messages waiting in each of this deployment's
    Celery queues, read from the broker at scrape time (with Redis: the lengths of the queue's
    lists, priorities included), so it is never stale. Every worker reports the same numbers:
    aggregate with max(), not sum()."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self._app = app
        self._queues = queue_names(settings)

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]  # registration must not connect to the broker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from kombu.exceptions import ChannelError

        family = self._family()
        try:
            with self._app.connection_for_read() as conn:
                conn.connect()  # one attempt: a scrape must not wait on a broker that is down
                channel = conn.channel()
                try:
                    for kind, name in self._queues.items():
                        try:
                            depth = channel.queue_declare(queue=name, passive=True).message_count
                        except ChannelError:  # Redis keeps no empty list: an empty queue
                            depth = 0
                        family.add_metric([name, kind], depth)
                finally:
                    channel.close()
        except Exception:
            log.warning("could not read the queue depths from the broker", exc_info=True)
            return  # no sample rather than a wrong one; the scrape itself still answers
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("neuroscan_queue_depth",
                                 "Messages waiting in each Celery queue of this deployment.",
                                 labels=["queue", "kind"])


_serving = False


def serve(app: Any, settings: Settings) -> None:
    """Start the /metrics HTTP server (a daemon thread) once, if WORKER_METRICS_PORT is set; a
    port already taken is logged and the worker goes on working without metrics."""
    global _serving
    if _serving or not settings.worker_metrics_port:
        return
    _serving = True
    REGISTRY.register(QueueDepth(app, settings))
    try:
        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
    except OSError as exc:
        log.error("worker metrics not served: %s:%d: %s (give each worker on a host its own "
                  "WORKER_METRICS_PORT)", settings.worker_metrics_host,
                  settings.worker_metrics_port, exc)
        return
    log.info("worker metrics on http://%s:%d/metrics", settings.worker_metrics_host,
             settings.worker_metrics_port)
