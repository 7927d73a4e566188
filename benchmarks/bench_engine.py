"""Core-engine benchmarks of issue 2 (run: pytest benchmarks/bench_engine.py --benchmark-only).

Measurements, not pass/fail tests: each reports MB/s or IOPS and the ceiling it
is compared with, measured in the same run (conftest.report). Sizes scale with
NXSTORE_BENCH_SCALE (default 1).

1. sequential ingest of unique incompressible data, 1 MiB writes + flush, vs
   "os.write + fdatasync of the same bytes, plus xxhash.xxh3_128 over them in
   1 MiB calls" (target >= 50% of that ceiling);
2. random 4 KiB writes with a flush every 32 (IOPS) at block sizes 4 and 16 KiB,
   vs "32 raw 4 KiB pwrites + one fdatasync" (target >= 50% and >= 20,000 IOPS);
3. sequential read of ingested data, warm, vs os.readv of a file of the same
   bytes (target >= 25%);
4. dedup ingest: the same 256 MiB into 8 vDisks: MB/s, stored bytes, duplicate
   vs unique ingest speed (targets: stored <= 1.05 x 256 MiB, dup >= unique);
6. metadata bytes of RAM and of disk per stored block: fingerprint index + block
   maps (target <= 64 B each), with the extent table reported separately.
(5, the native dedup pipeline, is in bench_native.py.)
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator

import numpy as np
import pytest
from _util import (
    Fresh,
    KiB,
    MiB,
    file_readinto,
    file_write_fdatasync,
    read_all,
    scaled,
    scratch_dir,
    timed,
    tree_size,
    unique_blocks,
    write_all,
    xxh3_chunks,
)
from conftest import measure, report

import nxstore

SEQ_BYTES = scaled(256 * MiB)      # sequential ingest / read data set
DEDUP_BYTES = scaled(256 * MiB)    # written into each of the 8 vDisks
DEDUP_VDISKS = 8
RAND_REGION = scaled(64 * MiB)     # random writes land in this pre-written region
RAND_WRITES = 32 * 128             # random writes per round (flush every 32)
RAND_IO = 4 * KiB
FLUSH_EVERY = 32


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    with scratch_dir("engine") as path:
        yield path


@pytest.fixture(scope="module")
def seq_data() -> np.ndarray:
    """SEQ_BYTES of unique, incompressible bytes (every 16 KiB and 4 KiB block distinct)."""
    return unique_blocks(SEQ_BYTES, 4 * KiB, seed=11)


class Interleaved:
    """Ceiling rounds run in the untimed pedantic setup, right before each engine
    round, so both see the same machine load (other processes share the 2 cores
    and the disk): `add(name, fn)` times one call of `fn` under `name`."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def add(self, name: str, fn) -> None:  # noqa: ANN001
        self.times.setdefault(name, []).append(timed(fn))

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def spread(self, name: str) -> float:
        """(max - min) / median of the rounds: the noise of this ceiling."""
        t = self.times[name]
        return (max(t) - min(t)) / statistics.median(t)


def _spread(benchmark) -> float:  # noqa: ANN001
    st = benchmark.stats.stats if benchmark.stats else None
    return (st.max - st.min) / st.median if st else 0.0


# -- 1. sequential ingest ---------------------------------------------------------------
def test_1_sequential_ingest(benchmark, root: str, seq_data: np.ndarray) -> None:
    fresh = Fresh(root, block_size=16 * KiB)
    vdisks: list[nxstore.VDisk] = []
    ceil = Interleaved()
    raw = os.path.join(root, "ceiling.raw")

    def setup() -> None:
        # ceiling round: os.write + fdatasync to a new file, and xxh3 over the same bytes
        if os.path.exists(raw):
            os.unlink(raw)
        ceil.add("write", lambda: file_write_fdatasync(raw, seq_data))
        ceil.add("hash", lambda: xxh3_chunks(seq_data))
        os.unlink(raw)
        c = fresh.new()
        vdisks[:] = [c.create_vdisk("seq", SEQ_BYTES)]

    def run() -> None:
        vd = vdisks[0]
        write_all(vd, seq_data, MiB)
        vd.flush()

    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    vd = vdisks[0]
    assert vd.read(SEQ_BYTES - MiB, MiB) == seq_data[-MiB:].tobytes()
    stats = fresh.cluster.stats()  # type: ignore[union-attr]
    fresh.discard()
    write_s, hash_s = ceil.median("write"), ceil.median("hash")
    report(benchmark, "1 seq ingest 1 MiB writes + flush (16 KiB blocks)", SEQ_BYTES, "MB/s",
           SEQ_BYTES / (write_s + hash_s) / 1e6, "os.write+fdatasync + xxh3 1 MiB calls",
           target_ratio=0.5, write_only_MBps=SEQ_BYTES / write_s / 1e6,
           xxh3_only_MBps=SEQ_BYTES / hash_s / 1e6, stored_bytes=int(stats["stored_bytes"]),
           spread=_spread(benchmark), ceiling_spread=ceil.spread("write"))  # fmt: skip


# -- 2. random 4 KiB writes, flush every 32 --------------------------------------------------
def _raw_writes(path: str, offsets: np.ndarray, pool: memoryview) -> None:
    """The ceiling: the same 4 KiB pwrites to a raw file, one fdatasync per 32."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i, off in enumerate(offsets.tolist()):
            os.pwrite(fd, pool[i * RAND_IO : (i + 1) * RAND_IO], off)
            if i % FLUSH_EVERY == FLUSH_EVERY - 1:
                os.fdatasync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("block_kib", [4, 16])
def test_2_random_4k_writes(benchmark, root: str, block_kib: int) -> None:
    rng = np.random.default_rng(block_kib)
    base = unique_blocks(RAND_REGION, 4 * KiB, seed=20 + block_kib)
    pool = memoryview(unique_blocks(RAND_WRITES * RAND_IO, 4 * KiB, seed=40 + block_kib))
    rounds: list[np.ndarray] = []

    def offsets() -> np.ndarray:
        return rng.integers(0, RAND_REGION // RAND_IO, RAND_WRITES) * RAND_IO

    # Ceilings, interleaved with the engine rounds. (a) log-style: the 4 KiB pwrites
    # append to a new file (what an OpLog must at least do; the DESIGN figure
    # "64 x 4 KiB + one fdatasync"). (b) in place: the same random offsets as the
    # engine round, in a pre-written raw image file.
    raw = os.path.join(root, f"rand{block_kib}.raw")
    log = os.path.join(root, f"rand{block_kib}.log")
    append = np.arange(RAND_WRITES, dtype=np.int64) * RAND_IO
    file_write_fdatasync(raw, base)
    ceil = Interleaved()

    fresh = Fresh(root, block_size=block_kib * KiB)
    c = fresh.new()
    vd = c.create_vdisk("rand", RAND_REGION)
    write_all(vd, base, MiB)  # pre-written: partial-block writes merge with real data
    vd.flush()
    c.drain()
    used: list[np.ndarray] = []

    def setup() -> None:
        rounds.append(offsets())
        if os.path.exists(log):
            os.unlink(log)
        ceil.add("append", lambda: _raw_writes(log, append, pool))
        ceil.add("inplace", lambda: _raw_writes(raw, rounds[-1], pool))

    def run() -> None:
        offs = rounds[-1]
        used.append(offs)
        for i, off in enumerate(offs.tolist()):
            vd.write(off, pool[i * RAND_IO : (i + 1) * RAND_IO])
            if i % FLUSH_EVERY == FLUSH_EVERY - 1:
                vd.flush()
        vd.flush()

    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    # Correctness against a bytearray model, before and after the drain.
    model = bytearray(base.tobytes())
    for offs in used:
        for i, off in enumerate(offs.tolist()):
            model[off : off + RAND_IO] = pool[i * RAND_IO : (i + 1) * RAND_IO]
    assert vd.read(0, RAND_REGION) == bytes(model)
    drain_s = timed(c.drain)
    assert vd.read(0, RAND_REGION) == bytes(model)
    fresh.discard()
    for path in (raw, log):
        os.unlink(path)
    report(benchmark, f"2 random 4 KiB writes, flush/32 ({block_kib} KiB blocks)", RAND_WRITES,
           "IOPS", RAND_WRITES / ceil.median("append"), "32 appending 4 KiB pwrites + fdatasync",
           target_ratio=0.5, target_iops=20000,
           inplace_random_pwrites_iops=RAND_WRITES / ceil.median("inplace"),
           drain_MBps=RAND_WRITES * RAND_IO * len(used) / drain_s / 1e6,
           spread=_spread(benchmark), ceiling_spread=ceil.spread("append"))  # fmt: skip


# -- 3. sequential read, warm ----------------------------------------------------------------
def test_3_sequential_read_warm(benchmark, root: str, seq_data: np.ndarray) -> None:
    raw = os.path.join(root, "read.raw")
    file_write_fdatasync(raw, seq_data)
    file_readinto(raw, SEQ_BYTES)  # warm the page cache
    ceil = Interleaved()

    fresh = Fresh(root, block_size=16 * KiB)
    c = fresh.new()
    vd = c.create_vdisk("seq", SEQ_BYTES)
    write_all(vd, seq_data, MiB)
    vd.flush()
    c.drain()
    # Warm-up pass that also checks every byte.
    view = memoryview(seq_data)
    for off in range(0, SEQ_BYTES, MiB):
        assert vd.read(off, MiB) == view[off : off + MiB]

    def setup() -> None:
        ceil.add("read", lambda: file_readinto(raw, SEQ_BYTES))

    benchmark.pedantic(read_all, (vd, SEQ_BYTES, MiB), setup=setup, rounds=5, iterations=1)
    big_s = measure(lambda: read_all(vd, SEQ_BYTES, 8 * MiB), rounds=3)
    fresh.discard()
    os.unlink(raw)
    report(benchmark, "3 seq read warm, 1 MiB reads (16 KiB blocks)", SEQ_BYTES, "MB/s",
           SEQ_BYTES / ceil.median("read") / 1e6, "os.readv 1 MiB of a warm file",
           target_ratio=0.25, read_8MiB_calls_MBps=SEQ_BYTES / big_s / 1e6,
           spread=_spread(benchmark), ceiling_spread=ceil.spread("read"))  # fmt: skip


# -- 4. dedup ingest: the same data into 8 vDisks ---------------------------------------------
def test_4_dedup_ingest(benchmark, root: str) -> None:
    data = unique_blocks(DEDUP_BYTES, 4 * KiB, seed=4)
    fresh = Fresh(root, block_size=16 * KiB)
    vdisks: list[nxstore.VDisk] = []
    per_vdisk: list[list[float]] = []

    def setup() -> None:
        c = fresh.new()
        vdisks[:] = [c.create_vdisk(f"d{i}", DEDUP_BYTES) for i in range(DEDUP_VDISKS)]

    def run() -> None:
        times = []
        for vd in vdisks:
            times.append(timed(lambda vd=vd: (write_all(vd, data, MiB), vd.flush())))
        per_vdisk.append(times)

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    c = fresh.cluster
    assert c is not None
    c.drain()
    stats = c.stats()
    for vd in (vdisks[0], vdisks[-1]):
        assert vd.read(DEDUP_BYTES // 2, MiB) == data[DEDUP_BYTES // 2 :][:MiB].tobytes()
    fresh.discard()
    unique_s = statistics.median(t[0] for t in per_vdisk)
    dup_s = statistics.median(x for t in per_vdisk for x in t[1:])
    unique_mbs = DEDUP_BYTES / unique_s / 1e6
    dup_mbs = DEDUP_BYTES / dup_s / 1e6
    stored = int(stats["stored_bytes"])
    report(benchmark, f"4 dedup ingest {DEDUP_VDISKS} x {DEDUP_BYTES >> 20} MiB, all vDisks",
           DEDUP_BYTES * DEDUP_VDISKS, "MB/s", unique_mbs, "unique ingest (vDisk 1)",
           duplicate_MBps=dup_mbs, unique_MBps=unique_mbs, dup_vs_unique=dup_mbs / unique_mbs,
           stored_bytes=stored, stored_vs_data=stored / DEDUP_BYTES, target_stored_vs_data=1.05,
           dedup_ratio=float(stats["dedup_ratio"]))  # fmt: skip


# -- 6. metadata bytes per stored block ------------------------------------------------------
def _file_size(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


@pytest.mark.parametrize("block_kib", [4, 16])
def test_6_metadata_per_block(benchmark, root: str, seq_data: np.ndarray, block_kib: int) -> None:
    """One vDisk of unique data: every mapped block is a stored block."""
    fresh = Fresh(root, block_size=block_kib * KiB)
    c = fresh.new()
    vd = c.create_vdisk("meta", SEQ_BYTES)
    write_all(vd, seq_data, MiB)
    vd.flush()
    c.drain()
    blocks = SEQ_BYTES // (block_kib * KiB)
    stats = c.stats()
    store = c._ctx.store.stats()  # internal: extent-table RAM is not in Cluster.stats()
    assert int(stats["extents"]) == blocks
    path = c.path
    c.close()
    ext = os.path.join(path, "extents")
    index_disk = _file_size(os.path.join(ext, "fpindex.bin"))
    table_disk = _file_size(os.path.join(ext, "extent_table.bin"))
    map_disk = tree_size(os.path.join(path, "maps"))

    # Timed: reopening the cluster (loads the index, the extent table and the maps).
    reopened: list[nxstore.Cluster] = []

    def reopen() -> None:
        reopened.append(nxstore.Cluster.open(path))

    def close_previous() -> None:
        if reopened:
            reopened[-1].close()

    benchmark.pedantic(reopen, setup=close_previous, rounds=3, iterations=1)
    c2 = reopened[-1]
    after = c2.stats()
    assert c2.vdisk("meta").read(0, MiB) == seq_data[:MiB].tobytes()
    fresh.cluster = c2
    fresh.discard()

    ram = (int(stats["index_memory_bytes"]) + int(stats["map_ram_bytes"])) / blocks
    disk = (index_disk + map_disk) / blocks
    report(benchmark, f"6 metadata RAM/block index+maps (disk in extras) ({block_kib} KiB blocks)", ram,
           "B/block", 64.0, "target 64 B", seconds=1.0,
           index_ram=int(stats["index_memory_bytes"]) / blocks,
           map_ram=int(stats["map_ram_bytes"]) / blocks,
           map_ram_after_reopen=int(after["map_ram_bytes"]) / blocks,
           extent_table_ram=int(store["table_memory_bytes"]) / blocks,
           disk_per_block=disk, index_disk=index_disk / blocks, map_disk=map_disk / blocks,
           extent_table_disk=table_disk / blocks,
           reopen_s=benchmark.stats.stats.median if benchmark.stats else 0.0)  # fmt: skip
