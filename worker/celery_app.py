"""The Celery application: configuration from settings, task modules by name.

Run it with a TensorFlow-safe pool: `celery -A worker.celery_app:app worker -P solo -E`
(or `-P threads`); prefork would fork after TensorFlow's threads exist. Scale with more
worker processes and hosts, not with prefork children.
"""

from __future__ import annotations

from celery import Celery

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
