"""A full disk (issue 11, item 8): every write path raises NoSpace (an NxError and an
OSError), every acknowledged byte survives, and a failed close() still releases the
cluster lock so the process can reopen it once space is freed.

For real on a small tmpfs (we are root in CI), and by injecting OSError(ENOSPC) into
the writes of one cluster directory where mounting is not possible."""

from __future__ import annotations

import errno
import os
import random
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import numpy as np
import pytest
from model import pattern

import nxstore
from nxstore import errors
from nxstore.constants import OPLOG_BYPASS_BYTES

BS = 4096
CHUNK = 32 * 1024  # bytes per small write
DISK = 256 << 20  # far larger than the file system: writes run it full


# -- a real full file system ---------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path) -> Iterator[Callable[[int], str]]:
    """mount(size_bytes) -> a fresh tmpfs of that size; grow it with mount again. Unmounted
    at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the injected-ENOSPC tests below still run)")
    where = str(tmp_path / "fs")
    os.mkdir(where)
    mounted = False

    def mount(size: int) -> str:
        nonlocal mounted
        opts = f"size={size}" if not mounted else f"remount,size={size}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", where], check=True,
                       capture_output=True, timeout=60)
        mounted = True
        return where

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", where], check=True, capture_output=True, timeout=60)


def _chunk_ok(image: bytes, off: int, data: bytes) -> bool:
    """An unacknowledged write reads as all of it or none of it."""
    got = image[off:off + len(data)]
    return got in (data, bytes(len(data)))


@pytest.mark.parametrize(("bypass_every", "drain_every", "runs_out"), [
    (0, 0, "OpLog"),  # small writes only, never drained
    (0, 3, ""),  # drained often: the extent store, a map file or the OpLog
    (5, 6, ""),  # with large aligned writes straight to the extent store
], ids=["oplog", "drained", "bypass"])
def test_a_real_full_disk(small_fs, bypass_every: int, drain_every: int, runs_out: str) -> None:
    root = small_fs(3 << 20)
    path = os.path.join(root, "c")
    c = nxstore.Cluster.create(path, block_size=BS, background=False)
    vd = c.create_vdisk("v", DISK)
    rng = random.Random(5)
    writes: list[tuple[int, bytes]] = []  # every write that returned, in order
    acked = 0  # writes[:acked] were acknowledged by a returned flush()
    off = 0
    with pytest.raises(errors.NoSpace) as caught:
        for i in range(10_000):  # bounded: 3 MiB fills long before
            bypass = bypass_every and i % bypass_every == bypass_every - 1
            size = OPLOG_BYPASS_BYTES if bypass else CHUNK
            data = rng.randbytes(size)
            vd.write(off, data)
            writes.append((off, data))
            off += size
            if i % 2:
                vd.flush()
                acked = len(writes)
            if drain_every and i % drain_every == drain_every - 1:
                c.drain()
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert "No space left" in str(caught.value) and runs_out in str(caught.value)
    for attempt in (lambda: vd.write(off, b"x" * CHUNK), vd.flush, c.drain,
                    lambda: vd.snapshot("s"), lambda: c.create_vdisk("w", DISK), c.gc):
        with suppress(errors.NoSpace):  # anything else (a raw OSError, sqlite3...) fails
            attempt()
    with suppress(errors.NoSpace):
        c.close()
    # The lock is released even if close failed: this process can open the cluster again
    # (which may itself need space to recover: NoSpace, never Locked).
    with suppress(errors.NoSpace):
        nxstore.Cluster.open(path, background=False).close()
    small_fs(64 << 20)  # free space
    with nxstore.Cluster.open(path, background=False) as c2:
        vd2 = c2.vdisk("v")
        image = vd2.read(0, off)
        for i, (o, data) in enumerate(writes):
            if i < acked:
                assert image[o:o + len(data)] == data, f"acknowledged write {i} at {o} lost"
            else:
                assert _chunk_ok(image, o, data), f"unacknowledged write {i} at {o} is torn"
        vd2.write(off, b"after")  # usable again
        vd2.flush()
        assert c2.scrub() == []
    assert acked > 2  # the disk held something before it was full


# -- injected ENOSPC -----------------------------------------------------------------------------


class FullDisk:
    """Makes os.write/pwrite/fsync/fdatasync fail with ENOSPC, for files under one
    directory only, while `full` is true."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, directory: str) -> None:
        self.directory = os.path.realpath(directory) + os.sep
        self.full = False
        for name in ("write", "pwrite", "fsync", "fdatasync"):
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))

    def _wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(fd: int, *args: Any) -> Any:
            if self.full:
                try:
                    target = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    target = ""
                if (target + os.sep).startswith(self.directory):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, *args)
        return call


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch, make_cluster):
    c = make_cluster(block_size=BS)
    return c, FullDisk(monkeypatch, c.path)


def test_oplog_write_and_sync(full_disk, make_cluster) -> None:
    c, disk = full_disk
    vd = c.create_vdisk("v", 1 << 20)
    vd.write(0, pattern(1, 3 * BS))
    vd.flush()
    disk.full = True
    vd.write(5 * BS, pattern(2, 100))  # buffered: the disk is touched at flush
    with pytest.raises(errors.NoSpace, match="OpLog"):
        vd.flush()
    with pytest.raises(errors.NoSpace, match="reopened"):  # the OpLog refuses further writes
        vd.write(0, b"x")
    with pytest.raises(errors.NoSpace):
        c.close()
    disk.full = False
    c2 = make_cluster.open(c.path)  # the lock was released
    image = c2.vdisk("v").read(0, 6 * BS)
    assert image[:3 * BS] == pattern(1, 3 * BS)
    assert _chunk_ok(image, 5 * BS, pattern(2, 100))


def test_extent_store_put_leaves_the_store_unchanged(full_disk, make_cluster) -> None:
    c, disk = full_disk
    vd = c.create_vdisk("v", 4 << 20)
    kept = ("extents", "stored_bytes", "group_bytes", "index_entries", "next_extent_id")
    before = {k: c._ctx.store.stats()[k] for k in kept}
    disk.full = True
    with pytest.raises(errors.NoSpace, match="extent store"):
        vd.write(0, pattern(1, OPLOG_BYPASS_BYTES))  # aligned and large: straight to the store
    assert {k: c._ctx.store.stats()[k] for k in kept} == before
    disk.full = False
    vd.write(0, pattern(1, OPLOG_BYPASS_BYTES))
    vd.flush()
    c2 = make_cluster.reopen(c)
    assert c2.vdisk("v").read(0, OPLOG_BYPASS_BYTES) == pattern(1, OPLOG_BYPASS_BYTES)


def test_drain_and_map_files(full_disk, make_cluster) -> None:
    c, disk = full_disk
    vd = c.create_vdisk("v", 1 << 20)
    vd.write(100, pattern(1, 5 * BS))
    vd.flush()
    disk.full = True
    with pytest.raises(errors.NoSpace):
        c.drain()  # extent store sync, or the map's delta log
    assert vd.read(100, 5 * BS) == pattern(1, 5 * BS)  # RAM still holds it
    disk.full = False
    c.drain()
    assert vd.read(100, 5 * BS) == pattern(1, 5 * BS)
    disk.full = True
    entry = np.zeros(1, np.uint64)
    with pytest.raises(errors.NoSpace, match=r"\.delta"):
        c._ctx.tree.store.append(vd.head_layer, entry, entry, 1)
    disk.full = False
    c2 = make_cluster.reopen(c)
    assert c2.vdisk("v").read(100, 5 * BS) == pattern(1, 5 * BS)
    assert c2.scrub() == []


def test_close_releases_the_lock_when_persisting_fails(full_disk, make_cluster) -> None:
    c, disk = full_disk
    vd = c.create_vdisk("v", 1 << 20)
    vd.write(0, pattern(3, 4 * BS))
    vd.flush()
    c.drain()
    vd.write(BS, pattern(4, BS))  # acknowledged, still only in the OpLog
    vd.flush()
    disk.full = True
    with pytest.raises(errors.NoSpace):
        c.close()
    c.close()  # closed after all: idempotent
    with pytest.raises(errors.ClosedError):
        c.create_vdisk("w", BS)
    disk.full = False
    c2 = make_cluster.open(c.path)
    expected = bytearray(pattern(3, 4 * BS))
    expected[BS:2 * BS] = pattern(4, BS)
    assert c2.vdisk("v").read(0, 4 * BS) == expected


class _FullCatalogue:
    """Stands in for the catalogue's sqlite3 connection: COMMIT fails as on a full disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            exc = sqlite3.OperationalError("database or disk is full")
            exc.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            raise exc
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@contextmanager
def _catalogue_full(c: nxstore.Cluster) -> Iterator[None]:
    cat = c._ctx.catalog
    real = cat._db
    cat._db = _FullCatalogue(real)  # type: ignore[assignment]
    try:
        yield
    finally:
        cat._db = real


def test_catalogue_commit(make_cluster) -> None:
    c = make_cluster(block_size=BS)
    vd = c.create_vdisk("v", 1 << 20)
    snap = vd.snapshot("s")
    with _catalogue_full(c):
        with pytest.raises(errors.NoSpace, match="catalogue"):
            vd.resize(2 << 20)
        assert vd.size == 1 << 20  # RAM says what the catalogue says
        with pytest.raises(errors.NoSpace):
            c.create_vdisk("w", 1 << 20)
        with pytest.raises(errors.NoSpace):
            snap.delete()
    assert not c._ctx.catalog._db.in_transaction
    assert [v.name for v in c.vdisks()] == ["v"]
    vd.resize(2 << 20)  # the catalogue works again
    c.create_vdisk("w", 1 << 20)
    c2 = make_cluster.reopen(c)
    assert c2.vdisk("v").size == 2 << 20
    assert [s.name for s in c2.vdisk("v").snapshots()] == ["s"]
