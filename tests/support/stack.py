"""A live NeuroScan stack for integration tests: uvicorn + a real Celery worker process.

Backends:
- "embedded": SQLite database and kombu's SQLAlchemy broker on SQLite in a temporary folder,
  local storage (the `make run` default, with other paths);
- "pg": a fresh PostgreSQL database, the Redis broker, Cloudinary through the real SDK against
  the in-process stand-in (`tests/support/cloudinary_standin.py`).

Every stack gets its own Celery queue, so stacks can share one Redis database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.cloudinary_standin import CloudinaryStandIn

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
_START_TIMEOUT_S = 120.0
_API_APP = "api.main:app"
_WORKER_MARK = "worker"  # the Celery sub-command: how the worker process is found again
# Settings that must come from the stack, never from the developer's shell.
_OWN_VARS = ("DATABASE_URL", "BROKER_URL", "CLOUDINARY_URL", "CLOUDINARY_CLOUD_NAME",
             "CLOUDINARY_API_KEY", "CLOUDINARY_API_SECRET", "CLOUDINARY_UPLOAD_PREFIX",
             "MEDIA_DIR", "MODEL_DIR", "MODEL_NAME", "QUEUE_NAME", "SECRET_KEY", "PORT",
             "PUBLIC_BASE_URL", "VAR_DIR")


# --- PostgreSQL databases ----------------------------------------------------------------

def create_pg_database(prefix: str = "nstest") -> str:
    """A new, empty database; returns its plain `postgresql://` URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the stack ---------------------------------------------------------------------------

def free_port(low: int, high: int) -> int:
    for port in range(low, high + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


@dataclass
class LiveStack:
    backend: str
    base_url: str
    api_key: str
    tenant: str
    env: dict[str, str]
    root: Path
    standin: CloudinaryStandIn | None = None
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    _cleanup: list[Any] = field(default_factory=list, repr=False)

    @property
    def database_url(self) -> str:
        return self.env["DATABASE_URL"]

    @property
    def sync_database_url(self) -> str:
        from shared.settings import _with_driver

        return _with_driver(self.database_url, asyncio=False)

    @property
    def media_dir(self) -> Path:
        return Path(self.env["MEDIA_DIR"])

    def client(self, api_key: str | None = None, **kwargs: Any) -> httpx.Client:
        """An HTTP client for this stack, authenticated with the stack's key (or `api_key`)."""
        headers = {"Authorization": f"Bearer {api_key or self.api_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers,
                            timeout=kwargs.pop("timeout", 60.0), **kwargs)

    def new_key(self, tenant: str, user: str = "test") -> str:
        """Another API key (creating `tenant` if needed) in this stack's database."""
        from sqlalchemy.orm import Session

        from shared.db.session import create_sync_db_engine
        from shared.db.tenants import issue_key

        engine = create_sync_db_engine(self.sync_database_url)
        try:
            with Session(engine) as session, session.begin():
                return issue_key(session, tenant, user).key
        finally:
            engine.dispose()

    def settings_env(self) -> dict[str, str]:
        """The environment the API and worker run with (for producers in tests)."""
        return {k: v for k, v in self.env.items() if k in _OWN_VARS or k.startswith("MAX_")}

    def logs(self, lines: int = 60) -> str:
        out = []
        for name in ("api.log", "worker.log"):
            path = self.root / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(out)

    def restart_api(self, *, while_down: Callable[[], None] | None = None,
                    grace_s: float = 10.0) -> None:
        """Restart the API process as a deployment does: SIGTERM (SIGKILL after `grace_s`, as
        `docker stop` does), then the same command on the same port with the same environment;
        returns once /readyz answers. `while_down` runs while the port refuses connections.
        The worker, database, broker and storage keep running throughout."""
        index = next(i for i, p in enumerate(self._procs) if _API_APP in p.args)
        old = self._procs[index]
        _terminate(old, grace_s)
        try:
            if while_down is not None:
                while_down()
        finally:
            # Started again even when `while_down` failed, so the stack stays usable.
            self._procs[index] = _spawn(list(old.args), self.root / "api.log", self.env, self.root)
        _wait_ready(self, worker=False)

    # --- the worker, for fault injection -------------------------------------------------

    def _worker_index(self) -> int:
        return next(i for i, p in enumerate(self._procs) if _WORKER_MARK in p.args)

    @property
    def worker_running(self) -> bool:
        return self._procs[self._worker_index()].poll() is None

    def kill_worker(self, sig: int = signal.SIGKILL, wait_s: float = 60.0) -> None:
        """Send `sig` to the worker's process group and wait (at most `wait_s`) until it exits;
        SIGTERM is Celery's warm shutdown (the current task finishes first)."""
        _terminate(self._procs[self._worker_index()], wait_s, sig)

    def start_worker(self, wait: bool = True) -> None:
        """Start the worker again (same command and environment) after it exited; with `wait`,
        return once it reports ready."""
        index = self._worker_index()
        old = self._procs[index]
        if old.poll() is None:
            raise RuntimeError("the worker is still running")
        log = self.root / "worker.log"
        seen = _ready_count(log)
        self._procs[index] = _spawn(list(old.args), log, self.env, self.root)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while wait and _ready_count(log) <= seen:
            if self._procs[index].poll() is not None:
                raise RuntimeError(f"worker exited with {self._procs[index].returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready after {_START_TIMEOUT_S:.0f}s")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._procs.clear()
        for step in reversed(self._cleanup):
            with contextlib.suppress(Exception):
                step()
        self._cleanup.clear()


def start_stack(root: Path, model_dir: Path, *, backend: str = "embedded",
                port_range: tuple[int, int] = (18000, 18999), redis_url: str | None = None,
                model_name: str = "neuroscan-tiny", tenant: str = "test-hospital",
                env: dict[str, str] | None = None,
                worker_app: str = "worker.celery_app:app",
                database_url_via: Callable[[str], str] | None = None) -> LiveStack:
    """Migrate, create a tenant and key, start uvicorn and a Celery worker; wait until ready.
    `worker_app` may name a test app that wraps production code with faults
    (`tests/support/fault_app.py`); `database_url_via` rewrites the new database's URL for
    the stack (a proxy in front of PostgreSQL), while it is created and dropped directly."""
    from shared.db.migrate import upgrade_to_head
    from shared.settings import Settings, _with_driver

    root.mkdir(parents=True, exist_ok=True)
    stack_env = {k: v for k, v in os.environ.items() if k not in _OWN_VARS}
    stack_env.update({
        "ENVIRONMENT": "test",
        "MEDIA_DIR": str(root / "media"),
        "VAR_DIR": str(root / "var"),
        "MODEL_DIR": str(model_dir),
        "MODEL_NAME": model_name,
        "QUEUE_NAME": f"nstest-{uuid.uuid4().hex[:8]}",
        "SECRET_KEY": uuid.uuid4().hex,
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    stack = LiveStack(backend=backend, base_url="", api_key="", tenant=tenant, env=stack_env,
                      root=root)
    try:
        if backend == "embedded":
            stack_env["DATABASE_URL"] = f"sqlite+aiosqlite:///{root / 'neuroscan.db'}"
            stack_env["BROKER_URL"] = f"sqla+sqlite:///{root / 'broker.db'}"
        elif backend == "pg":
            db_url = create_pg_database()
            stack._cleanup.append(lambda: drop_pg_database(db_url))
            stack_env["DATABASE_URL"] = database_url_via(db_url) if database_url_via else db_url
            stack_env["BROKER_URL"] = redis_url or f"{REDIS_BASE_URL}/1"
            stack._cleanup.append(lambda: _delete_queues(stack_env["BROKER_URL"],
                                                         _queues(stack_env["QUEUE_NAME"])))
            standin = CloudinaryStandIn().start()
            stack._cleanup.append(standin.stop)
            stack.standin = standin
            stack_env["CLOUDINARY_URL"] = standin.cloudinary_url
            stack_env["CLOUDINARY_UPLOAD_PREFIX"] = standin.url
        else:
            raise ValueError(f"unknown backend {backend!r}")
        stack_env.update(env or {})

        sync_url = _with_driver(stack_env["DATABASE_URL"], asyncio=False)
        upgrade_to_head(sync_url)
        stack.api_key = stack.new_key(tenant)

        port = free_port(*port_range)
        stack.base_url = f"http://127.0.0.1:{port}"
        stack._procs.append(_spawn(
            [sys.executable, "-m", "uvicorn", _API_APP, "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning",
             # as in production (cli/service.py, Dockerfile.api): open SSE streams are cut,
             # idle connections are kept longer than clients keep theirs
             "--timeout-graceful-shutdown", "5",
             "--timeout-keep-alive", str(Settings.model_fields["http_keep_alive_s"].default)],
            root / "api.log", stack_env, root))
        stack._procs.append(_spawn(
            [sys.executable, "-m", "celery", "-A", worker_app, _WORKER_MARK,
             # One worker for all three queues (interactive first), as a small deployment.
             "--pool", "solo", "--events", "--queues", ",".join(_queues(stack_env["QUEUE_NAME"])),
             "--hostname", f"{stack_env['QUEUE_NAME']}@%h", "--loglevel", "INFO",
             "--without-mingle", "--without-gossip"], root / "worker.log", stack_env, root))
        _wait_ready(stack)
    except BaseException:
        logs = stack.logs()
        stack.stop()
        if logs:
            print(logs, file=sys.stderr)
        raise
    return stack


def _queues(queue_name: str) -> list[str]:
    """The stack's interactive, bulk and webhooks queues (named after its QUEUE_NAME)."""
    from shared.queue import KINDS, worker_queues
    from shared.settings import Settings

    return worker_queues(Settings(queue_name=queue_name, queue_interactive="", queue_bulk="",
                                  queue_webhooks=""), KINDS)


def _delete_queues(broker_url: str, queues: list[str]) -> None:
    import redis

    client = redis.Redis.from_url(broker_url)
    for queue in queues:
        # The queue, its priority lists and kombu's binding records for it.
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}",
                      *client.keys(f"{queue}\x06*"))
    client.close()


def _spawn(argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        # Own process group: stopping the stack stops everything it started, nothing else.
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


def _terminate(proc: subprocess.Popen[bytes], grace_s: float,
               sig: int = signal.SIGTERM) -> None:
    """`sig` to the process group, SIGKILL if it is still there after `grace_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _ready_count(log: Path) -> int:
    return log.read_text(errors="replace").count(" ready.") if log.exists() else 0


def _wait_ready(stack: LiveStack, *, worker: bool = True) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    api_ready, worker_ready = False, not worker
    while time.monotonic() < deadline:
        for proc in stack._procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[2]} exited with {proc.returncode}")
        if not api_ready:
            with contextlib.suppress(httpx.HTTPError):
                api_ready = httpx.get(f"{stack.base_url}/readyz", timeout=5).status_code == 200
        if not worker_ready:
            log = stack.root / "worker.log"
            worker_ready = log.exists() and " ready." in log.read_text(errors="replace")
        if api_ready and worker_ready:
            return
        time.sleep(0.2)
    raise TimeoutError(f"stack not ready after {_START_TIMEOUT_S:.0f}s")


@contextlib.contextmanager
def running_stack(root: Path, model_dir: Path, **kwargs: Any) -> Iterator[LiveStack]:
    stack = start_stack(root, model_dir, **kwargs)
    try:
        yield stack
    finally:
        stack.stop()


# --- helpers for tests that drive a stack ------------------------------------------------

def wait_for_scan(client: httpx.Client, scan_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll until the scan is final; returns its JSON."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get(f"/v1/scans/{scan_id}").raise_for_status().json()
        if body["state"] in ("succeeded", "failed"):
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"scan {scan_id} still {body['state']} after {timeout_s}s")
        time.sleep(0.1)


def wait_for_batch(client: httpx.Client, batch_id: str, timeout_s: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get(f"/v1/batches/{batch_id}").raise_for_status().json()
        if body["done"]:
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} not done after {timeout_s}s: {body['counts']}")
        time.sleep(0.25)


def read_sse(response: httpx.Response, limit: int | None = None) -> Iterator[dict[str, str]]:
    """Parse a text/event-stream response into {id, event, data} dicts (comments skipped)."""
    current: dict[str, str] = {}
    count = 0
    for line in response.iter_lines():
        if not line:
            if "data" in current or "event" in current:
                yield current
                count += 1
                if limit is not None and count >= limit:
                    return
            current = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        current[name] = value[1:] if value.startswith(" ") else value


# One stack per kind shared by the modules that test DICOM intake end to end (de-identification,
# the reports API, the client library): `live_stack` reuses a stack for the same arguments.
DICOM_STACK_PORTS = {"pg": (17000, 17099), "embedded": (17100, 17199)}
DICOM_STACK_ENV = {"BROKER_URL": "redis://127.0.0.1:6379/3"}
