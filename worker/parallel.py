"""The worker's small thread pool for per-image work around the model pass.

Decoding, the gate's rules, preprocessing and rendering are per image and spend their time
in OpenCV, Pillow and NumPy's large kernels, which release the GIL: `parallel_map` spreads a
batch's images over WORKER_THREADS (each kernel single-threaded, see
`worker.inference.configure_threads`). Uploads wait on the network: `io_map` runs them on
WORKER_IO_THREADS, so a batch's (and a single scan's) assets are uploaded at once.
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
_io_pool: ThreadPoolExecutor | None = None
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
            _pool = ThreadPoolExecutor(threads, thread_name_prefix="neuroscan-cpu")
    return list(_pool.map(fn, items))


def io_map(fn: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    """As `parallel_map`, on WORKER_IO_THREADS threads: for work that waits (uploads), never
    for CPU work (it would oversubscribe the cores)."""
    global _io_pool
    items = list(items)
    threads = get_settings().worker_io_threads
    if threads <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with _lock:
        if _io_pool is None:
            _io_pool = ThreadPoolExecutor(threads, thread_name_prefix="neuroscan-upload")
    return list(_io_pool.map(fn, items))
