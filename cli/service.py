"""Service commands: serve (embedded API + worker), api, worker, migrate, keys.

Heavy imports (uvicorn, Celery, SQLAlchemy models) happen inside the functions so that
`neuroscan --help` stays fast.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

LOCAL_TENANT = "local"
# SSE streams end only when their scan does, so uvicorn would wait for them forever on
# shutdown; clients resume with Last-Event-ID, so cutting them after a few seconds loses nothing.
GRACEFUL_SHUTDOWN_S = 5
# How long `serve` waits for its workers' warm shutdown (a batch in flight) before SIGKILL.
WORKER_STOP_S = 30.0
_KEY_FILE = "local-api-key"


def migrate() -> None:
    """Bring the database schema up to date (alembic upgrade head)."""
    from shared.db.migrate import upgrade_to_head

    upgrade_to_head()
    typer.echo("database is up to date")


def local_api_key(var_dir: Path) -> str:
    """The local tenant's key for the embedded default: issued on first start, then read back.

    The key is kept in `var/local-api-key` (mode 0600) so that every `make run` can print it
    again; only its hash is in the database. A key file whose key no longer matches (a new
    database) is replaced."""
    from sqlalchemy import select

    from shared.db.models import User
    from shared.db.session import sync_session
    from shared.db.tenants import hash_api_key, issue_key, key_state

    path = var_dir / _KEY_FILE
    with sync_session() as session:
        if path.is_file():
            key = path.read_text().strip()
            user = session.scalar(select(User).where(User.api_key_hash == hash_api_key(key)))
            if user is not None and key_state(user) in ("active", "revoking"):
                return key
        key = issue_key(session, LOCAL_TENANT, "local-admin").key
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


MODEL_QUEUES = "interactive,bulk"
WEBHOOK_QUEUES = "webhooks"
# The embedded webhook sender: network waits only, so threads, and a few at once.
WEBHOOK_THREADS = 4


def _worker_argv(pool: str, concurrency: int | None, name: str = "neuroscan@%h",
                 queues: str = MODEL_QUEUES) -> list[str]:
    from shared.queue import worker_queues
    from shared.settings import get_settings

    settings = get_settings()
    kinds = [kind.strip() for kind in queues.split(",") if kind.strip()]
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker",
            "--pool", pool, "--concurrency", str(concurrency or settings.worker_concurrency),
            # Most urgent first: the order a Redis worker checks them in (shared/queue.py).
            "--queues", ",".join(worker_queues(settings, kinds)), "--events",
            "--loglevel", settings.log_level,
            # %h: the host name, unique per container, so health checks can ping this node.
            "--hostname", name]


def worker(
    pool: Annotated[str, typer.Option(help="solo (default) or threads; never prefork with TensorFlow.")] = "solo",
    concurrency: Annotated[int | None, typer.Option(help="Threads for the threads pool (default: settings).")] = None,
    name: Annotated[str, typer.Option(
        help="Celery node name (%h: host name); set one per worker where containers share a host name.")] = "neuroscan@%h",
    queues: Annotated[str, typer.Option(
        help="Queue kinds to consume: interactive,bulk (a model worker) or webhooks (a light "
             "worker that never loads the model). Names come from QUEUE_* settings.")] = MODEL_QUEUES,
) -> None:
    """Run a Celery worker (task events on, for Flower)."""
    from shared.queue import KINDS

    if pool not in ("solo", "threads"):
        raise typer.BadParameter("use solo or threads: prefork forks after TensorFlow starts threads")
    kinds = {kind.strip() for kind in queues.split(",") if kind.strip()}
    if not kinds or kinds - set(KINDS):
        raise typer.BadParameter(f"queue kinds are {', '.join(KINDS)} (comma-separated)")
    argv = _worker_argv(pool, 1 if pool == "solo" else concurrency, name, ",".join(kinds))
    os.execv(argv[0], argv)


def proxy_options(trusted: list[str]) -> dict[str, object]:
    """uvicorn's forwarded-header handling: X-Forwarded-For/-Proto believed only from
    TRUSTED_PROXIES; none by default (uvicorn's own default trusts 127.0.0.1, so that any local
    process could claim another address)."""
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": list(trusted) or None}


def api(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: PORT).")] = None,
) -> None:
    """Run the HTTP API (no TensorFlow in this process)."""
    import uvicorn

    from shared.settings import get_settings

    settings = get_settings()
    uvicorn.run("api.main:app", host=host or settings.host, port=port or settings.port,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                timeout_keep_alive=settings.http_keep_alive_s,
                **proxy_options(settings.trusted_proxies))


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: PORT).")] = None,
) -> None:
    """Embedded deployment: migrate, ensure a local key, start a worker and the API."""
    import uvicorn

    from shared.settings import get_settings

    settings = get_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrate()
    key = local_api_key(settings.var_dir)
    card = settings.model_dir / f"{settings.model_name}.card.json"
    if not card.is_file():
        typer.secho(f"warning: no model card {card}; the worker exits at start (and is started "
                    "again) until a model is there (see README: neuroscan train)", fg="yellow", err=True)
    bind_host, bind_port = host or settings.host, port or settings.port
    config = uvicorn.Config("api.main:app", host=bind_host, port=bind_port,
                            log_level=settings.log_level.lower(),
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            timeout_keep_alive=settings.http_keep_alive_s,
                            **proxy_options(settings.trusted_proxies))
    server = uvicorn.Server(config)
    # A stop request is a flag, never an exception: Python may run a signal handler inside a
    # garbage-collection callback, where a raised SystemExit is printed and dropped, and the
    # stop was lost (serve then ran on after SIGTERM). While uvicorn serves, its own handlers
    # set the same flag; on return it re-raises the signal into this handler.
    stopping = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stopping.set()
        server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    # The model worker (interactive before bulk) and, apart from it, the webhook sender
    # without the model: a slow receiver never holds up a scan.
    # WORKER_METRICS_PORT is the model worker's; the webhook sender shares its host and
    # serves none (the queue depths it would report are the model worker's too).
    workers = [_SupervisedWorker(_worker_argv("solo", 1, "neuroscan@%h", MODEL_QUEUES)),
               _SupervisedWorker(_worker_argv("threads", WEBHOOK_THREADS, "webhooks@%h",
                                              WEBHOOK_QUEUES),
                                 env={**os.environ, "WORKER_METRICS_PORT": "0"})]
    try:
        for worker in workers:
            if not stopping.is_set():
                worker.start()
        url = f"http://{'127.0.0.1' if bind_host in ('0.0.0.0', '::') else bind_host}:{bind_port}"
        typer.secho(f"\nNeuroScan is running at {url}  (web page: {url}/app, API docs: {url}/docs)",
                    fg="green", bold=True)
        typer.echo(f"API key (tenant '{LOCAL_TENANT}'): {key}\n")
        if not stopping.is_set():
            server.run()  # returns at once when a stop came before it started serving
    finally:
        # Both get SIGTERM at once, then are waited for against one deadline: shutdown takes
        # the slower's time, never the sum.
        for worker in workers:
            worker.terminate()
        deadline = time.monotonic() + WORKER_STOP_S
        for worker in workers:
            worker.stop(max(0.0, deadline - time.monotonic()))


class _SupervisedWorker:
    """The embedded worker, started again when it dies (an input that crashes a decoder, the
    OOM killer), as compose's `restart:` does; the reconciler then takes back its scans."""

    RESTART_DELAY_S = 2.0

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self._argv, self._env = argv, env
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        self._proc = subprocess.Popen(self._argv, env=self._env)
        threading.Thread(target=self._watch, name="worker-supervisor", daemon=True).start()

    def _watch(self) -> None:
        while True:
            with self._lock:
                proc = self._proc
            assert proc is not None
            code = proc.wait()
            if self._stopping.wait(self.RESTART_DELAY_S):
                return
            typer.secho(f"worker exited with {code}; starting it again", fg="yellow", err=True)
            with self._lock:
                if self._stopping.is_set():
                    return
                self._proc = subprocess.Popen(self._argv, env=self._env)

    def terminate(self) -> None:
        """SIGTERM (Celery's warm shutdown), and no restart from now on."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = WORKER_STOP_S) -> None:
        """Wait up to TIMEOUT seconds for a warm shutdown, then SIGKILL."""
        self.terminate()
        with self._lock:
            proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def requeue(
    older_than_s: Annotated[float, typer.Option(help="Last sent at least this long ago.")] = 60.0,
) -> None:
    """One reconciler pass now (every worker runs one on its own, every RECONCILE_INTERVAL_S):
    re-send unclaimed scans last sent OLDER_THAN_S ago, take back expired leases."""
    from shared.queue import make_producer, send_scans
    from shared.settings import get_settings
    from worker.reconciler import reconcile_once

    settings = get_settings()
    producer = make_producer(settings)
    report = reconcile_once(lambda ids, size: send_scans(producer, ids, size, settings), settings,
                            age_s=older_than_s)
    typer.echo(f"re-enqueued {len(report.resent) + len(report.retried_alone)} scans"
               + (f"; {len(report.poisoned)} failed as poison_input" if report.poisoned else ""))
