"""The production Celery app with two faults a test can switch on through the environment:

- FAULT_POISON_SHAPE="HxW": decoding an image of exactly that size kills the worker process
  (SIGKILL, as a decoder that segfaults or the OOM killer would); the API accepts the file.
- FAULT_BATCH_DELAY_S: each batch waits this long before its model pass, so a test can
  reliably stop a worker in the middle of a batch.

Run it as `celery -A tests.support.fault_app:app worker ...`; everything else is production code.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from worker import pipeline
from worker.celery_app import app
from worker.tasks import process_scans  # noqa: F401 - registers the tasks

_POISON = tuple(int(n) for n in os.environ.get("FAULT_POISON_SHAPE", "0x0").split("x"))
_DELAY_S = float(os.environ.get("FAULT_BATCH_DELAY_S", "0"))
_decode_image, _analyse_and_store = pipeline.decode_image, pipeline.analyse_and_store


def _crashing_decode(data: bytes, *args: Any, **kwargs: Any) -> Any:
    image = _decode_image(data, *args, **kwargs)
    if image.pixels.shape[:2] == _POISON:
        os.kill(os.getpid(), signal.SIGKILL)
    return image


def _slow_analyse_and_store(*args: Any, **kwargs: Any) -> Any:
    time.sleep(_DELAY_S)
    return _analyse_and_store(*args, **kwargs)


pipeline.decode_image = _crashing_decode  # type: ignore[assignment]
pipeline.analyse_and_store = _slow_analyse_and_store  # type: ignore[assignment]

__all__ = ["app"]
