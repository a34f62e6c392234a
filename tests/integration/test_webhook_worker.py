"""Webhook sends have a queue and a worker of their own, which never loads the model.

A finished scan's webhook task goes to the webhooks queue (never a scan queue), and
`neuroscan worker --queues webhooks`, started with no model at all (a model worker exits
there), delivers it. The embedded broker (SQLite) lets the test read each queue's messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from shared.db.migrate import upgrade_to_head
from shared.db.session import sync_session
from shared.db.tenants import issue_key
from shared.queue import DELIVER_WEBHOOK, make_producer, queue_names
from shared.settings import get_settings
from tests.support.images import brain_png
from tests.support.inprocess import settings_env
from tests.support.webhook_receiver import Receiver

NEUROSCAN = str(Path(sys.executable).with_name("neuroscan"))


def _waiting(broker_url: str) -> dict[str, int]:
    """Messages waiting per queue in kombu's SQLAlchemy transport."""
    engine = create_engine(broker_url.removeprefix("sqla+"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT q.name, count(m.id) FROM kombu_queue q LEFT JOIN kombu_message m "
                "ON m.queue_id = q.id AND m.visible GROUP BY q.name")).all()
    finally:
        engine.dispose()
    return {name: n for name, n in rows}


def test_a_worker_without_the_model_sends_the_webhooks(tmp_path: Path) -> None:
    from api.intake import AcceptedUpload, add_scan
    from worker import pipeline

    receiver = Receiver().start()
    broker = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    env = {"database_url": f"sqlite:///{tmp_path / 'db.sqlite'}", "broker_url": broker,
           "media_dir": str(tmp_path / "media"), "model_dir": str(tmp_path / "no-model"),
           "queue_name": f"whtest-{uuid.uuid4().hex[:8]}", "webhook_allow_private": "true",
           "secret_key": "webhook-worker-test-" + "0123456789abcdef" * 2,
           "environment": "test"}
    worker: subprocess.Popen[bytes] | None = None
    try:
        with settings_env(**env):
            upgrade_to_head()
            s = get_settings()
            queues = queue_names(s)
            with sync_session() as session:
                tenant_id = issue_key(session, "webhook-worker").tenant.id
                scan_id = add_scan(session, tenant_id,
                                   AcceptedUpload(brain_png(1), "png", "w.png", None),
                                   callback_url=receiver.url).id
            producer = make_producer(s)
            # The scan ends (failed, as a worker that gives up would leave it); its webhook
            # task is sent by name, as the pipeline sends it.
            pipeline.fail_unfinished([scan_id], "processing_error", "gave up",
                                     notify=lambda target, kind: producer.send_task(
                                         DELIVER_WEBHOOK, args=[target, kind]))
            waiting = _waiting(broker)
            assert waiting.get(queues["webhooks"]) == 1, waiting
            assert not waiting.get(queues["interactive"]) and not waiting.get(queues["bulk"])

            log = tmp_path / "webhooks-worker.log"
            with open(log, "wb") as out:
                worker = subprocess.Popen(
                    [NEUROSCAN, "worker", "--queues", "webhooks", "--pool", "threads",
                     "--concurrency", "2", "--name", f"{env['queue_name']}@%h"],
                    env=dict(os.environ), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True)
            deadline = time.monotonic() + 90
            while not receiver.received:
                assert worker.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.1)
        assert receiver.received[0].headers.get("X-NeuroScan-Event") == "scan.finished"
        assert scan_id.encode() in receiver.received[0].body
        assert "the model is not loaded" in log.read_text()
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        receiver.stop()
