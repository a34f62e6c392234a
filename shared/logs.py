"""Logs an operator can follow: one JSON object per line (plain text in development), each
with the request id that started the work and the scans and batch it is about.

- The API takes the request id from the `X-Request-ID` header, or makes one (asgi-correlation-id's
  middleware, `api/main.py`), and answers with it.
- `propagate_request_ids()` carries it into every Celery message sent while the request (or a
  task) runs, as a message header, and sets it again in the worker for that task.
- `log_context(scan_id=..., batch_id=...)` adds fields to every line logged inside it;
  `extra={...}` adds them to one line.
- Credentials never reach a log line: values of query parameters named like a signature or a
  token (`sig=` of media links), API keys, bearer tokens and passwords in URLs are masked in
  every message, the access log's request line included; so are DICOM UIDs in paths and
  queries (they name the original study).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from asgi_correlation_id import correlation_id

from shared.settings import Settings, get_settings

REQUEST_ID_HEADER = "X-Request-ID"
# The Celery message header that carries it (a task reads it back as `request.request_id`).
TASK_HEADER = "request_id"
_MAX_REQUEST_ID = 64  # the audit log's column (shared/db/lifecycle_models.py)
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{_MAX_REQUEST_ID}}}")

_fields: ContextVar[dict[str, Any] | None] = ContextVar("neuroscan_log_fields", default=None)

_SECRETS = [
    # ?sig=..., &token=...: signed links and tokens in query strings.
    (re.compile(r"([?&;](?:sig|signature|token|access_token|api_key|apikey|key|secret|password"
                r"|x-amz-signature|x-amz-credential)=)[^&\s\"'#\\]+", re.IGNORECASE), r"\1[redacted]"),
    (re.compile(r"\bnsk_[A-Za-z0-9_-]{8,}"), "nsk_[redacted]"),  # our API keys
    (re.compile(r"\b(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE), r"\1[redacted]"),
    (re.compile(r"(://[^:/\s@\"\\]*:)[^@\s/\"\\]+@"), r"\1[redacted]@"),  # scheme://user:password@
    (re.compile(r"/s--[A-Za-z0-9_-]+--/"), "/s--[redacted]--/"),  # Cloudinary signed delivery
    # DICOM UIDs name the original study (STOW-RS /dicomweb/studies/{uid}, QIDO queries).
    (re.compile(r"(/(?:studies|series|instances)/)[0-9]+(?:\.[0-9]+)+"), r"\1[uid]"),
    (re.compile(r"([?&;](?:StudyInstanceUID|SeriesInstanceUID|SOPInstanceUID|PatientID"
                r"|PatientName)=)[^&\s\"'#\\]+", re.IGNORECASE), r"\1[redacted]"),
]
# Attributes every LogRecord has: everything else on a record is a field passed with `extra`.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime",
                                                              "color_message", "taskName"}


def redact(text: str) -> str:
    """`text` with signatures, tokens, API keys and URL passwords masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def valid_request_id(value: str) -> bool:
    """A caller's request id is used as sent when it is short and plain (no spaces, quotes or
    control characters that could forge a log line); otherwise the API makes a new one."""
    return _REQUEST_ID.fullmatch(value) is not None


def request_id() -> str | None:
    """The id of the request (or of the task's originating request) being handled, if any."""
    return correlation_id.get()


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every line logged inside the block (in this thread or task) carries these fields."""
    token = _fields.set({**(_fields.get() or {}), **fields})
    try:
        yield
    finally:
        _fields.reset(token)


class ContextFilter(logging.Filter):
    """Adds the request id and the bound fields to each record and masks credentials in its
    message. Installed on handlers, so it sees records from every logger, Celery's and
    uvicorn's included."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = correlation_id.get()
        for name, value in (_fields.get() or {}).items():
            if not hasattr(record, name):  # a field given with `extra` wins
                setattr(record, name, value)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            # Redacted in place, so that formatters reading the arguments (uvicorn's access
            # log reads its path from them) keep working.
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


_FILTER = ContextFilter()
_OURS = "_neuroscan_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, then every field
    bound with `log_context` or passed with `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) \
                and len(record.args) == 5:
            client, method, path, http_version, status = record.args
            line.update(client=client, method=method, path=path, status=status)
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRS and name not in line and not name.startswith("_"):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        # Masked as a whole: fields passed with `extra` (Celery's task data, tracebacks) too.
        return redact(json.dumps(line, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """Plain lines for a terminal, with the request id and bound fields at the end."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = {name: value for name, value in vars(record).items()
                  if name not in _RECORD_ATTRS and not name.startswith("_") and value is not None}
        if extras:
            text += " " + " ".join(f"{name}={value}" for name, value in extras.items())
        return redact(text)


def configure_logging(settings: Settings | None = None, level: str | int | None = None) -> None:
    """Send this process's logs to stderr in LOG_FORMAT at LOG_LEVEL (or `level`).

    Safe to call again: the handler it installed before is replaced, other handlers (a test
    runner's) are left alone. uvicorn's loggers keep their levels; in JSON their lines go
    through this handler too (one stream, one format), in text uvicorn's own handlers stay
    and only get the masking."""
    settings = settings or get_settings()
    formatter: logging.Formatter = JsonFormatter() if settings.log_json else TextFormatter()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _OURS, True)
    handler.setFormatter(formatter)
    handler.addFilter(_FILTER)
    root.addHandler(handler)
    root.setLevel(level or settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if settings.log_json:
            logger.handlers.clear()
            logger.propagate = True
        for uvicorn_handler in logger.handlers:
            uvicorn_handler.addFilter(_FILTER)


# --- the request id in Celery messages ---------------------------------------------------

_propagating = False


def propagate_request_ids() -> None:
    """Carry the current request id in every Celery message this process sends, and in a
    worker, make a task's request id current while it runs. Connected once per process."""
    global _propagating
    if _propagating:
        return
    from celery import signals

    signals.before_task_publish.connect(_add_request_id_header, weak=False)
    signals.task_prerun.connect(_set_task_request_id, weak=False)
    signals.task_postrun.connect(_clear_task_request_id, weak=False)
    _propagating = True


def _add_request_id_header(headers: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    current = correlation_id.get()
    if current and headers is not None and not headers.get(TASK_HEADER):
        headers[TASK_HEADER] = current


def _set_task_request_id(task_id: str | None = None, task: Any = None, **_kwargs: Any) -> None:
    """A message without a request id (the reconciler re-sent it) runs with none: its lines
    still carry the task id and the scans."""
    value = getattr(getattr(task, "request", None), TASK_HEADER, None)
    correlation_id.set(value if isinstance(value, str) and valid_request_id(value) else None)
    _fields.set({"task_id": task_id})


def _clear_task_request_id(**_kwargs: Any) -> None:
    correlation_id.set(None)
    _fields.set(None)
