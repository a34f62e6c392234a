"""The webhook outbox (worker/webhook_tasks.py, worker/reconciler.py): a webhook is planned in
the transaction that makes its result final, and a lost trigger (the broker down between
"result written" and "task sent") loses no webhook and duplicates none.

The first tests drive the plain functions against a fresh PostgreSQL database and a real HTTP
receiver (seconds); the last runs the full stack (uvicorn, a real Celery worker, Redis behind
a TCP proxy the test cuts while the results are written) and checks that every webhook then
arrives exactly once (about a minute).
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from shared.db.models import Batch, Scan, Tenant, utcnow
from shared.db.session import sync_session
from shared.db.webhook_models import WebhookDelivery
from shared.events import transition
from shared.settings import Settings, get_settings
from shared.states import JobState
from shared.webhooks import DELIVERY_ID_HEADER, delivery_id
from tests.support.images import brain_png
from tests.support.inprocess import migrated_database
from tests.support.stack import LiveStack, start_stack
from tests.support.tcp_proxy import TcpProxy
from tests.support.webhook_receiver import Receiver


@pytest.fixture()
def pg(tmp_path: Path) -> Iterator[Settings]:
    with migrated_database("pg", tmp_path, webhook_max_attempts="3", webhook_resend_age_s="5",
                           webhook_timeout_s="2"):
        yield get_settings()


def _tenant() -> str:
    with sync_session() as session:
        tenant = Tenant(name=f"outbox-{uuid.uuid4().hex[:6]}")
        session.add(tenant)
        session.flush()
        return tenant.id


def _queued(tenant_id: str, callback: str | None, batch_id: str | None = None) -> str:
    with sync_session() as session:
        scan = Scan(tenant_id=tenant_id, batch_id=batch_id, state="queued", format="png",
                          size_bytes=10, sha256="0" * 64, callback_url=callback)
        session.add(scan)
        session.flush()
        return scan.id


def _finish(scan_id: str, *, commit: bool = True) -> None:
    with sync_session() as session:
        scan = session.get(Scan, scan_id)
        scan.error_code, scan.error_message = "poison_input", "test"
        transition(session, scan, JobState.FAILED)
        session.flush()
        if not commit:
            session.rollback()


def _rows(**where: str) -> list[WebhookDelivery]:
    (column, value), = where.items()
    with sync_session() as session:
        return list(session.scalars(select(WebhookDelivery).where(
            getattr(WebhookDelivery, column) == value).order_by(WebhookDelivery.attempt)))


class _Sent:
    def __init__(self) -> None:
        self.webhooks: list[tuple[str, str]] = []

    def scans(self, ids: list[str], size: int) -> None:
        pass

    def webhook(self, target_id: str, kind: str) -> None:
        self.webhooks.append((target_id, kind))


def test_a_webhook_is_planned_with_the_result_and_only_then(pg: Settings) -> None:
    tenant = _tenant()
    scan_id = _queued(tenant, "http://127.0.0.1:9/hook")
    _finish(scan_id, commit=False)  # rolled back: no result, no webhook
    assert _rows(scan_id=scan_id) == []
    _finish(scan_id)
    (row,) = _rows(scan_id=scan_id)
    assert (row.state, row.attempt, row.url) == ("pending", 1, "http://127.0.0.1:9/hook")
    plain = _queued(tenant, None)  # no callback: no row
    _finish(plain)
    assert _rows(scan_id=plain) == []


def test_duplicate_triggers_send_once_with_the_idempotency_id(pg: Settings) -> None:
    from worker.webhook_tasks import deliver

    receiver = Receiver().start()
    try:
        scan_id = _queued(_tenant(), receiver.url)
        _finish(scan_id)
        assert deliver(scan_id, "scan") == 200
        assert deliver(scan_id, "scan") is None  # the reconciler's or a redelivered message
    finally:
        receiver.stop()
    (got,) = receiver.received
    assert got.headers[DELIVERY_ID_HEADER] == delivery_id("scan", scan_id)
    assert json.loads(got.body)["scan"]["id"] == scan_id
    (row,) = _rows(scan_id=scan_id)
    assert (row.state, row.status_code) == ("done", 200)


def test_reconciler_resends_overdue_and_interrupted_tries_within_the_attempt_limit(
        pg: Settings) -> None:
    from worker.reconciler import INTERRUPTED, reconcile_once
    from worker.webhook_tasks import DeliveryFailed, deliver

    tenant = _tenant()
    lost, stuck, spent = (_queued(tenant, "http://127.0.0.1:9/hook") for _ in range(3))
    for scan_id in (lost, stuck, spent):
        _finish(scan_id)
    with sync_session() as session:  # `stuck` was claimed by a worker that died; `spent` too,
        session.execute(update(WebhookDelivery).where(  # on its last allowed try
            WebhookDelivery.scan_id.in_([stuck, spent])).values(
            state="sending", claimed_at=utcnow() - timedelta(seconds=30)))
        session.execute(update(WebhookDelivery).where(WebhookDelivery.scan_id == spent)
                        .values(attempt=pg.webhook_max_attempts))
    sent = _Sent()
    assert reconcile_once(sent.scans, pg, send_webhook=sent.webhook).webhooks == [stuck]
    later = utcnow() + timedelta(seconds=pg.webhook_resend_age_s + 1)
    report = reconcile_once(sent.scans, pg, now=later, send_webhook=sent.webhook)
    assert set(report.webhooks) == {lost, stuck}  # pending past the age: sent again
    assert reconcile_once(sent.scans, pg, now=later, send_webhook=sent.webhook).webhooks == []
    assert [(r.attempt, r.state, r.error) for r in _rows(scan_id=stuck)] == [
        (1, "done", INTERRUPTED), (2, "pending", None)]
    assert [(r.attempt, r.state) for r in _rows(scan_id=spent)] == [(3, "done")]
    # Nothing listens on port 9: the try fails and plans the next, within the limit.
    with pytest.raises(DeliveryFailed):
        deliver(lost, "scan")
    assert [(r.attempt, r.state) for r in _rows(scan_id=lost)] == [(1, "done"), (2, "pending")]


def test_reconciler_decides_a_batch_whose_worker_died_before_it_did(pg: Settings) -> None:
    from worker.reconciler import reconcile_once

    tenant = _tenant()
    with sync_session() as session:
        batch = Batch(tenant_id=tenant, callback_url="http://127.0.0.1:9/batch", total=2)
        session.add(batch)
        session.flush()
        batch_id = batch.id
    scans = [_queued(tenant, None, batch_id) for _ in range(2)]
    for scan_id in scans:
        _finish(scan_id)  # results written; the batch decision never made
    sent = _Sent()
    assert reconcile_once(sent.scans, pg, send_webhook=sent.webhook).webhooks == []  # too young
    later = utcnow() + timedelta(seconds=pg.webhook_resend_age_s + 1)
    assert reconcile_once(sent.scans, pg, now=later, send_webhook=sent.webhook).webhooks == [
        batch_id]
    assert [(r.attempt, r.state) for r in _rows(batch_id=batch_id)] == [(1, "pending")]
    with sync_session() as session:
        assert session.get(Batch, batch_id).finished_at is not None
    # Planned once: the next pass only re-sends its trigger once that is overdue again.
    assert reconcile_once(sent.scans, pg, now=later, send_webhook=sent.webhook).webhooks == []


# --- the full stack: Redis unreachable while the results are written ----------------------

OUTBOX_ENV = {
    "SCAN_LEASE_S": "8",
    "RECONCILE_INTERVAL_S": "1",
    "RECONCILE_AGE_S": "12",
    "WEBHOOK_RESEND_AGE_S": "3",
    "FAULT_BATCH_DELAY_S": "3",  # time to cut Redis once the batch is claimed
}


@pytest.fixture(scope="module")
def outbox_stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
                 redis_url: str) -> Iterator[tuple[LiveStack, TcpProxy]]:
    host, port = redis_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    proxy = TcpProxy(host, int(port)).start()
    db = redis_url.rsplit("/", 1)[1]
    live = start_stack(tmp_path_factory.mktemp("outbox"), tiny_model_dir, backend="pg",
                       port_range=(19500, 19599),
                       env={**OUTBOX_ENV,
                            "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
                       redis_url=f"redis://127.0.0.1:{proxy.port}/{db}",
                       worker_app="tests.support.fault_app:app")
    try:
        yield live, proxy
    finally:
        if not proxy.listening:
            proxy.restore()
        live.stop()
        proxy.cut()


def _states(client: httpx.Client, scan_ids: list[str]) -> list[str]:
    return [client.get(f"/v1/scans/{i}").json()["state"] for i in scan_ids]


def test_redis_down_while_results_are_written_loses_no_webhook(
        outbox_stack: tuple[LiveStack, TcpProxy]) -> None:
    stack, proxy = outbox_stack
    receiver = Receiver().start()
    singles, batch_size = 12, 8
    try:
        # Everything queued first, so that the worker's first model pass gathers many scans:
        # their results are then written while Redis is cut.
        stack.kill_worker(signal.SIGTERM)
        with stack.client(timeout=60.0) as client:
            scan_ids = [client.post("/v1/scans", files={"file": (f"s{i}.png", brain_png(40 + i))},
                                    data={"callback_url": receiver.url}).json()["id"]
                        for i in range(singles)]
            r = client.post("/v1/batches", data={"callback_url": receiver.url},
                            files=[("files", (f"b{i}.png", brain_png(60 + i), "image/png"))
                                   for i in range(batch_size)])
            assert r.status_code == 202, r.text
            batch_id, batch_scans = r.json()["id"], r.json()["scan_ids"]
            everything = [*scan_ids, *batch_scans]
            stack.start_worker(wait=False)
            deadline = time.monotonic() + 120
            while "processing" not in _states(client, everything):
                assert time.monotonic() < deadline, stack.logs()
                time.sleep(0.1)
            proxy.cut()
            try:
                deadline = time.monotonic() + 60
                while "processing" in (states := _states(client, everything)):
                    assert time.monotonic() < deadline, (states, stack.logs())
                    time.sleep(0.25)
                written_while_down = states.count("succeeded")
                time.sleep(3)  # their triggers fail while Redis is away
                during = len(receiver.received)
            finally:
                proxy.restore()
            t_back = time.monotonic()
            expected = singles + 1
            deadline = time.monotonic() + 120
            while len(receiver.received) < expected:
                assert time.monotonic() < deadline, (len(receiver.received), stack.logs())
                time.sleep(0.25)
            arrived_s = time.monotonic() - t_back
            assert set(_states(client, everything)) == {"succeeded"}
            time.sleep(8)  # several reconciler passes: nothing arrives twice
    finally:
        receiver.stop()
    ids = [json.loads(got.body).get("scan", json.loads(got.body).get("batch"))["id"]
           for got in receiver.received]
    assert sorted(ids) == sorted([*scan_ids, batch_id]), ids  # each exactly once
    assert len({got.headers[DELIVERY_ID_HEADER] for got in receiver.received}) == expected
    engine = create_engine(stack.sync_database_url)
    try:
        with Session(engine) as session:
            rows = session.scalars(select(WebhookDelivery)).all()
    finally:
        engine.dispose()
    assert sorted((r.scan_id or r.batch_id, r.state, r.status_code) for r in rows) == sorted(
        (i, "done", 200) for i in [*scan_ids, batch_id])
    figures = {"webhooks": expected, "results_written_while_redis_down": written_while_down,
               "sent_while_down": during, "all_arrived_after_redis_back_s": round(arrived_s, 1),
               "duplicates": len(ids) - len(set(ids))}
    print(f"\nFAULT webhooks_redis_down_at_results: {json.dumps(figures)}")
    assert during == 0 and written_while_down > 0
