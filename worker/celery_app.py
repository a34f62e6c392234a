"""The Celery application: configuration from settings, task modules by name.

Run it with a TensorFlow-safe pool: `celery -A worker.celery_app:app worker -P solo -E`
(or `-P threads`); prefork would fork after TensorFlow's threads exist. Scale with more
worker processes and hosts, not with prefork children.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from shared.logs import configure_logging, propagate_request_ids
from shared.queue import celery_config
from shared.settings import get_settings

_settings = get_settings()
app = Celery("neuroscan", include=["worker.tasks", "worker.webhook_tasks", "worker.series_tasks"])
app.conf.update(celery_config(_settings))

if _settings.broker_url.startswith("sqla+"):
    # The embedded broker is polled: kombu's virtual transports sleep `polling_interval`
    # (1 s by default) whenever the queue is empty. Its usual transport option cannot carry
    # it here: kombu hands this transport's options to SQLAlchemy's create_engine().
    from kombu.transport.sqlalchemy import Transport as _SQLAlchemyTransport

    _SQLAlchemyTransport.polling_interval = _settings.broker_polling_interval_s

# Each task's log lines carry the id of the HTTP request that sent it (docs/operations.md, Logs).
propagate_request_ids()


@signals.setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_kwargs: Any) -> None:
    """Our format (LOG_FORMAT) for every logger, Celery's own included."""
    configure_logging(_settings, level=loglevel)


@signals.worker_init.connect
def _configure_logging_early(sender: Any = None, **_kwargs: Any) -> None:
    """Celery sets logging up after `worker_init`, whose handlers load the model: set it up
    first (this handler is connected before worker/tasks.py's), so that their lines show."""
    configure_logging(_settings, level=getattr(sender, "loglevel", None))


@signals.worker_ready.connect
def _serve_metrics(**_kwargs: Any) -> None:
    """Prometheus /metrics on WORKER_METRICS_PORT, once the worker consumes."""
    from worker import metrics

    metrics.serve(app, _settings)
