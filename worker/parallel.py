"""The worker's small thread pool for per-image work around the model pass.

Decoding, the gate's rules, preprocessing, rendering and uploads are per image and spend
their time in OpenCV, Pillow, NumPy's large kernels and sockets, which release the GIL; a
pool of WORKER_THREADS spreads a batch's images over the cores (each kernel single-threaded,
see `worker.inference.configure_threads`) and overlaps uploads with one another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from shared.settings import get_settings

_T = TypeVar("_T")
_R = TypeVar("_R")
_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def parallel_map(fn: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    """`[fn(x) for x in items]` on the pool, results in order; the first exception raises."""
    global _pool
    items = list(items)
    threads = get_settings().worker_threads
    if threads <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(threads, thread_name_prefix="neuroscan-io")
    return list(_pool.map(fn, items))
