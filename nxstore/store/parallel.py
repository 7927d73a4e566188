"""Split a batch call over the cores: one shared pool for the store's native batch calls.

The native calls (fingerprinting, lz4) release the GIL, so a batch cut into contiguous
parts runs on as many cores as there are parts. `split_rows` is the one helper: it cuts,
runs the parts (the first in the calling thread, the others on the pool) and returns the
results in row order, so callers join them and write them in the order they always did.
Small batches run in one call in the calling thread: a part must be worth a thread hop. So
does every batch while the host's run queue is longer than its cores (1-minute load average
above cores + 0.5, read at most once a second): a part would then wait for a core, and on a
shared 2-core host at load 2.5-3 split 1 MiB batches ingested 10-35% slower than one call.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = [
    "HASH_PART_BYTES", "LZ4_PART_BYTES", "UNLZ4_PART_BYTES", "WORKERS", "host_busy", "split_rows",
]

T = TypeVar("T")

_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
WORKERS = max(1, min(_CORES, 4))  # parts a batch is cut into at most
# The least bytes of blocks per part for a split to pay on idle cores (a thread hop costs some
# 30-50 us there): lz4 runs at ~0.5-1 GB/s a core (benchmarks/bench_native.py), so 256 KiB is
# ~0.3 ms of work; decompression runs ~2-3x faster and XXH3 at memory speed: larger parts.
LZ4_PART_BYTES = 256 << 10
UNLZ4_PART_BYTES = 1 << 20
HASH_PART_BYTES = 2 << 20
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0  # a forked child gets a pool of its own (the parent's threads are not in it)
_pool_lock = threading.Lock()
_load = (-1.0, False)  # (monotonic time read, host busy)


def host_busy() -> bool:
    """True while the 1-minute load average exceeds the usable cores + 0.5 (cached 1 s)."""
    global _load
    now = time.monotonic()
    if now - _load[0] > 1.0:
        try:
            busy = os.getloadavg()[0] > _CORES + 0.5
        except OSError:  # no load average on this platform: assume idle cores
            busy = False
        _load = (now, busy)
    return _load[1]


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(WORKERS - 1, thread_name_prefix="nxstore-batch")
            _pool_pid = os.getpid()
        return _pool


def split_rows(fn: Callable[[int, int], T], n: int, min_rows: int) -> list[T]:
    """[fn(lo, hi) for the contiguous parts lo..hi of range(n)], in order.

    The parts are about equal, at most WORKERS of them and each at least `min_rows`
    rows; one part (n < 2 * min_rows, one core, or host_busy()) is a plain call in
    this thread.
    fn must be safe to run concurrently on disjoint parts and must not itself call
    split_rows. The first exception of a part is re-raised after every part ended.
    """
    parts = min(WORKERS, n // max(min_rows, 1))
    if parts <= 1 or host_busy():
        return [fn(0, n)]
    edges = [n * i // parts for i in range(parts + 1)]
    pool = _executor()
    futures: list[Future[T]] = [
        pool.submit(fn, lo, hi) for lo, hi in zip(edges[1:-1], edges[2:], strict=True)
    ]
    try:
        first = fn(edges[0], edges[1])
    finally:
        rest_exc = [f.exception() for f in futures]  # waits: no part outlives the call
    for exc in rest_exc:
        if exc is not None:
            raise exc
    return [first, *(f.result() for f in futures)]
