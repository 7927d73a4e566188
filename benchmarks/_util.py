"""Shared code of bench_engine.py and bench_snapshots.py (not a pytest plugin).

Sizes scale with NXSTORE_BENCH_SCALE (a float, default 1): the documented
figures in docs/performance.md were measured at 1. Temporary clusters live
under NXSTORE_BENCH_TMP (default: the system temp dir, which on the reference
machine is the same filesystem as /work) and are removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import numpy as np
import xxhash

import nxstore

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
SCALE = float(os.environ.get("NXSTORE_BENCH_SCALE", "1"))


def scaled(nbytes: int, align: int = MiB) -> int:
    """`nbytes` times SCALE, rounded down to a multiple of `align` (at least `align`)."""
    return max(align, int(nbytes * SCALE) // align * align)


def bench_root() -> str:
    return os.environ.get("NXSTORE_BENCH_TMP") or tempfile.gettempdir()


@contextmanager
def scratch_dir(prefix: str) -> Iterator[str]:
    """A temporary directory under bench_root(), removed on exit."""
    path = tempfile.mkdtemp(prefix=f"nxbench-{prefix}-", dir=bench_root())
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Fresh:
    """One fresh cluster at a time under `root` (for pedantic setups: the previous
    round's cluster is closed and deleted, untimed, before the next is created)."""

    def __init__(self, root: str, block_size: int = 16 * KiB, **kwargs: object) -> None:
        self.root, self.block_size, self.kwargs = root, block_size, kwargs
        self.cluster: nxstore.Cluster | None = None
        self.n = 0

    def new(self) -> nxstore.Cluster:
        self.discard()
        self.n += 1
        path = os.path.join(self.root, f"c{self.n}")
        self.cluster = nxstore.Cluster.create(path, block_size=self.block_size, **self.kwargs)
        return self.cluster

    def discard(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            shutil.rmtree(self.cluster.path, ignore_errors=True)
            self.cluster = None


def random_bytes(nbytes: int, seed: int) -> np.ndarray:
    """`nbytes` of incompressible random bytes (uint8 array)."""
    return np.frombuffer(np.random.default_rng(seed).bytes(nbytes), np.uint8)


def unique_blocks(nbytes: int, block_size: int, seed: int, pool: int = 64 * MiB) -> np.ndarray:
    """`nbytes` of incompressible data whose every block is distinct.

    Cheap for large sizes: a random `pool` repeated, with a 16-byte (seed,
    block number) stamp at the start of every block so no two blocks are equal
    and none compresses (lz4 finds no repeats within a block).
    """
    out = np.empty(nbytes, np.uint8)
    src = random_bytes(min(pool, nbytes), seed)
    for off in range(0, nbytes, len(src)):
        n = min(len(src), nbytes - off)
        out[off : off + n] = src[:n]
    rows = out.reshape(-1, block_size)
    stamp = np.empty((len(rows), 2), np.uint64)
    stamp[:, 0] = np.uint64(seed + 1) << np.uint64(32)
    stamp[:, 1] = np.arange(len(rows), dtype=np.uint64) + np.uint64(1)
    rows[:, :16] = stamp.view(np.uint8).reshape(-1, 16)
    return out


def write_all(vd: nxstore.VDisk, data: np.ndarray, chunk: int = MiB, offset: int = 0) -> None:
    """Sequential writes of `data` in `chunk`-byte calls starting at `offset`."""
    view = memoryview(data)
    for off in range(0, len(view), chunk):
        vd.write(offset + off, view[off : off + chunk])


def read_all(vd: object, nbytes: int, chunk: int = MiB) -> int:
    """Sequential reads of [0, nbytes) in `chunk`-byte calls; returns bytes read."""
    got = 0
    for off in range(0, nbytes, chunk):
        got += len(vd.read(off, min(chunk, nbytes - off)))  # type: ignore[attr-defined]
    return got


def file_write_fdatasync(path: str, data: np.ndarray, chunk: int = MiB,
                         sync_each: bool = False) -> None:  # fmt: skip
    """Ceiling: os.write of `data` in `chunk` calls to a new file, then fdatasync
    (with `sync_each`, an fdatasync after every call)."""
    view = memoryview(data)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(view), chunk):
            os.write(fd, view[off : off + chunk])
            if sync_each:
                os.fdatasync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def xxh3_chunks(data: np.ndarray, chunk: int = MiB) -> None:
    """Ceiling: python-xxhash XXH3-128 over `data` in `chunk` calls."""
    view = memoryview(data)
    for off in range(0, len(view), chunk):
        xxhash.xxh3_128_digest(view[off : off + chunk])


def file_readinto(path: str, nbytes: int, chunk: int = MiB) -> int:
    """Ceiling: read [0, nbytes) of `path` with os.readv into one reused buffer."""
    buf = bytearray(chunk)
    got = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while got < nbytes:
            n = os.readv(fd, [buf])
            if not n:
                break
            got += n
    finally:
        os.close(fd)
    return got


def tree_bytes(path: str) -> int:
    """Allocated bytes (st_blocks) of every file under `path`."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def tree_size(path: str) -> int:
    """Apparent size (st_size) of every file under `path`."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def timed(fn, *args: object) -> float:  # noqa: ANN001
    """Wall seconds of one call."""
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0
