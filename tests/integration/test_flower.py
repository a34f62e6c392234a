"""Flower against the test Redis: health without auth, basic auth elsewhere, worker events."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.images import brain_png
from tests.support.stack import free_port, wait_for_scan

pytestmark = pytest.mark.slow
USER, PASSWORD = "ops", "flower-test-password"


@pytest.fixture(scope="module")
def flower(live_stack, tmp_path_factory: pytest.TempPathFactory):
    stack = live_stack("pg")
    port = free_port(18900, 18999)
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", f"--broker={stack.env['BROKER_URL']}", "flower",
             f"--port={port}", "--address=127.0.0.1", f"--basic-auth={USER}:{PASSWORD}"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc, log)
        yield stack, base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(log.read_text())


def test_flower_needs_auth_except_for_health(flower) -> None:
    _stack, base = flower
    assert httpx.get(f"{base}/healthcheck").text == "OK"
    assert httpx.get(f"{base}/").status_code == 401
    assert httpx.get(f"{base}/", auth=(USER, "wrong")).status_code == 401
    assert httpx.get(f"{base}/", auth=(USER, PASSWORD), follow_redirects=True).status_code == 200


def test_flower_sees_the_workers_task_events(flower) -> None:
    stack, base = flower
    with stack.client() as client:
        scan_id = client.post("/v1/scans", files={"file": ("f.png", brain_png(81), "image/png")}
                              ).json()["id"]
        assert wait_for_scan(client, scan_id)["state"] == "succeeded"
    deadline = time.monotonic() + 30
    seen: dict = {}
    while time.monotonic() < deadline:
        seen = httpx.get(f"{base}/api/tasks", auth=(USER, PASSWORD)).json()
        if any(t.get("name") == "neuroscan.process_scans" and scan_id in str(t.get("args"))
               and t.get("state") == "SUCCESS" for t in seen.values()):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"Flower saw no event for the task: {seen}")
    workers = httpx.get(f"{base}/api/workers", auth=(USER, PASSWORD),
                        params={"refresh": "true"}).json()
    assert any(stack.env["QUEUE_NAME"] in name for name in workers)
