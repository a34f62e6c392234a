"""Logs an operator can follow, through the real processes: a request id sent with an upload
comes back as X-Request-ID, travels in the Celery message and is on the worker's JSON lines
for that scan, with its scan and batch ids; signed media links and API keys never reach a log.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from shared.logs import ContextFilter, JsonFormatter, log_context, redact, valid_request_id
from tests.support.images import brain_png
from tests.support.stack import (
    LiveStack,
    free_port,
    wait_for_batch,
    wait_for_scan,
)


@pytest.fixture(scope="module")
def stack(live_stack: Any) -> LiveStack:
    return live_stack("embedded", port_range=(20400, 20499), env={"LOG_FORMAT": "json"})


@pytest.fixture(scope="module")
def api(stack: LiveStack) -> Iterator[tuple[str, Path]]:
    """A second API process on the stack, started as production starts it (uvicorn at INFO,
    so its access log is on); yields its URL and log file."""
    port = free_port(20300, 20399)
    log = stack.root / "api-access.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "info"],
            stdout=out, stderr=subprocess.STDOUT, env=stack.env, cwd=stack.root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url, log
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a process (Celery's start-up banner and TensorFlow's native
    messages are written before or outside Python's logging, and are skipped)."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))  # a line that starts as JSON must be JSON
    return lines


def _wait_for_line(path: Path, match: Any, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = [line for line in _json_lines(path) if match(line)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.slow
def test_request_id_follows_a_scan_into_the_worker(stack: LiveStack,
                                                   api: tuple[str, Path]) -> None:
    url, _ = api
    request_id = f"req-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        r = client.post("/v1/scans", files={"file": ("a.png", brain_png(7), "image/png")},
                        headers={"X-Request-ID": request_id})
        assert r.status_code == 202, r.text
        assert r.headers["X-Request-ID"] == request_id
        scan_id = r.json()["id"]
        assert wait_for_scan(client, scan_id)["state"] == "succeeded"

        batch_request = f"req-{uuid.uuid4().hex}"
        r = client.post("/v1/batches", headers={"X-Request-ID": batch_request},
                        files=[("files", (f"b{i}.png", brain_png(50 + i), "image/png"))
                               for i in range(2)])
        assert r.status_code == 202, r.text
        batch_id, batch_scans = r.json()["id"], r.json()["scan_ids"]
        wait_for_batch(client, batch_id)

    worker_log = stack.root / "worker.log"
    finished = _wait_for_line(worker_log, lambda line: line.get("scan_id") == scan_id
                              and line.get("state") == "succeeded")
    assert len(finished) == 1, _json_lines(worker_log)[-20:]
    line = finished[0]
    assert line["request_id"] == request_id and line["batch_id"] is None
    assert line["task_id"] and line["level"] == "INFO" and line["logger"] == "worker.pipeline"
    # Every worker line of that request is about that scan.
    mine = [line for line in _json_lines(worker_log) if line.get("request_id") == request_id]
    assert any(scan_id in line.get("scan_ids", []) for line in mine)  # the model pass
    assert all(line.get("scan_id", scan_id) == scan_id for line in mine), mine

    for batch_scan in batch_scans:
        lines = _wait_for_line(worker_log, lambda line, s=batch_scan: line.get("scan_id") == s
                               and line.get("state") == "succeeded")
        assert [(x["request_id"], x["batch_id"]) for x in lines] == [(batch_request, batch_id)]


@pytest.mark.slow
def test_access_log_has_request_ids_and_no_signatures_or_keys(stack: LiveStack,
                                                              api: tuple[str, Path]) -> None:
    url, api_log = api
    request_id = f"req-{uuid.uuid4().hex}"
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {stack.api_key}"},
                      timeout=60) as client:
        r = client.post("/v1/scans", files={"file": ("a.png", brain_png(8), "image/png")})
        assert r.status_code == 202 and valid_request_id(r.headers["X-Request-ID"])
        body = wait_for_scan(client, r.json()["id"])
        media = body["image_url"]
        signature = parse_qs(urlparse(media).query)["sig"][0]
        got = client.get(media, headers={"X-Request-ID": request_id})
        assert got.status_code == 200 and got.headers["X-Request-ID"] == request_id
        # The guard's 401 carries it too (the middleware is outermost).
        anonymous = httpx.get(f"{url}/v1/me", headers={"X-Request-ID": "anon-1"})
        assert anonymous.status_code == 401 and anonymous.headers["X-Request-ID"] == "anon-1"
        # A request id that could forge a log line is replaced, not echoed.
        odd = client.get("/healthz", headers={"X-Request-ID": 'x" injected=1'})
        assert odd.headers["X-Request-ID"] != 'x" injected=1'
        assert valid_request_id(odd.headers["X-Request-ID"])

    access = _wait_for_line(api_log, lambda line: line.get("logger") == "uvicorn.access"
                            and line.get("request_id") == request_id)
    assert len(access) == 1, _json_lines(api_log)[-10:]
    assert access[0]["method"] == "GET" and access[0]["status"] == 200
    assert access[0]["path"].startswith(urlparse(media).path)
    assert "sig=[redacted]" in access[0]["path"]
    for log in (api_log, stack.root / "worker.log", stack.root / "api.log"):
        text = log.read_text(errors="replace")
        assert signature not in text, log.name
        assert stack.api_key not in text, log.name


@pytest.mark.parametrize(("line", "secret"), [
    ('GET /media/results/a.png?expires=1&sig=c2lnbmF0dXJl HTTP/1.1', "c2lnbmF0dXJl"),
    ("hook https://ris.example.org/cb?token=t0k3n&x=1", "t0k3n"),
    ("key nsk_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "AbCdEfGhIjKlMnOpQrSt"),
    ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
    ("Connected to redis://:hunter2@redis:6379/0", "hunter2"),
    ("https://res.cloudinary.com/c/image/upload/s--Ab1_-x--/v1/a.png", "Ab1_-x"),
    ("POST /dicomweb/studies/1.2.840.113619.2.55 HTTP/1.1", "1.2.840.113619"),
    ("GET /qido/studies?StudyInstanceUID=1.2.3.4", "1.2.3.4"),
])
def test_redact_masks_credentials_and_study_uids(line: str, secret: str) -> None:
    assert secret not in redact(line) and redact(line) != line


def test_plain_lines_and_ids_are_left_alone() -> None:
    line = "GET /v1/scans/0b6c8d9e-1234-4abc-8def-000000000000?state=failed&page=2 200"
    assert redact(line) == line
    assert valid_request_id("req-1.2:abc@host/x+y=") and valid_request_id("a" * 64)
    assert not any(valid_request_id(v) for v in ("", "a" * 65, "a b", 'x"y', "a\nb"))


def test_json_lines_carry_bound_and_extra_fields() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("tests.logs.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with log_context(scan_ids=["s1", "s2"]):
            logger.info("link %s", "/media/a.png?sig=zzz", extra={
                "scan_id": "s1", "data": {"traceback": 'GET "/m.png?sig=yyy" redis://:pw@r'}})
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "link /media/a.png?sig=[redacted]"
    # Fields passed with `extra` (Celery's task data, tracebacks) are masked too.
    assert first["data"]["traceback"] == 'GET "/m.png?sig=[redacted]" redis://:[redacted]@r'
    assert first["scan_id"] == "s1" and first["scan_ids"] == ["s1", "s2"]
    assert first["level"] == "INFO" and first["request_id"] is None
    assert first["logger"] == "tests.logs.json" and first["time"].endswith("+00:00")
    assert "scan_ids" not in second and second["message"] == "outside"
