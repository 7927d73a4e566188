"""Benchmarks of nxstore.native (run: pytest benchmarks/bench_native.py --benchmark-only).

(a) XXH3-128 over 256 MiB not in cache: native batch vs python-xxhash 1 MiB calls.
(b) dedup pipeline (fingerprint + zero detection + lookup_or_insert) vs a Python
    loop over xxhash.xxh3_128 and a dict, 4 KiB and 16 KiB blocks
    (targets: >= 3x at 4 KiB, >= 1.5x at 16 KiB).
(c) batch index lookups per second (target >= 10 million/s).
(d) bytes of RAM per index entry.
(e) the extent store's lz4 codec on 64 MiB of 16 KiB blocks (mixed: text-like, half-zero and
    random blocks; and all random): native batch compress (probe on) and decompress on one
    core vs a python-lz4 loop of one call per block, and the speedup of splitting the batch
    over the cores (nxstore.store.parallel.split_rows, forced on even when the host is busy;
    the 1-minute load average is reported with it).
"""

from __future__ import annotations

import os
import tracemalloc

import lz4.block
import numpy as np
import pytest
import xxhash
from conftest import measure, report

from nxstore.constants import COMPRESS_MIN_SAVING
from nxstore.store import native, parallel
from nxstore.store.extent_group import HEADER_BYTES
from nxstore.store.parallel import UNLZ4_PART_BYTES, WORKERS, split_rows

MiB = 1 << 20
HASH_BYTES = 256 * MiB
PIPE_BYTES = 64 * MiB


@pytest.fixture(scope="module")
def big() -> np.ndarray:
    """256 MiB of random bytes: far larger than any cache."""
    return np.frombuffer(np.random.default_rng(1).bytes(HASH_BYTES), np.uint8)


@pytest.fixture(scope="module")
def python_xxh3_rate(big: np.ndarray) -> float:
    """Ceiling: python-xxhash over the same data in 1 MiB calls, MB/s."""
    view = memoryview(big)

    def run() -> None:
        for off in range(0, HASH_BYTES, MiB):
            xxhash.xxh3_128_digest(view[off : off + MiB])

    return HASH_BYTES / measure(run, rounds=5) / 1e6


def test_a_xxh3_python_1mib_calls(benchmark, big: np.ndarray, python_xxh3_rate: float) -> None:
    view = memoryview(big)

    def run() -> None:
        for off in range(0, HASH_BYTES, MiB):
            xxhash.xxh3_128_digest(view[off : off + MiB])

    benchmark.pedantic(run, rounds=5, iterations=1)
    report(benchmark, "xxh3-128 python-xxhash 1 MiB calls", HASH_BYTES, "MB/s",
           python_xxh3_rate, "python-xxhash (fixture)")  # fmt: skip


@pytest.mark.parametrize("block_kib", [4, 16, 64])
def test_a_xxh3_native_batch(
    benchmark, big: np.ndarray, python_xxh3_rate: float, block_kib: int
) -> None:
    benchmark.pedantic(native.fingerprint_blocks, (big, block_kib * 1024), rounds=5, iterations=1)
    report(benchmark, f"xxh3-128 native batch, {block_kib} KiB blocks", HASH_BYTES, "MB/s",
           python_xxh3_rate, "python-xxhash 1 MiB calls")  # fmt: skip


def _dedup_data(block_size: int) -> np.ndarray:
    """PIPE_BYTES of blocks: ~70% unique, ~25% repeats of earlier blocks, ~5% zero."""
    n = PIPE_BYTES // block_size
    rng = np.random.default_rng(block_size)
    blocks = np.frombuffer(rng.bytes(PIPE_BYTES), np.uint8).reshape(n, block_size).copy()
    kind = rng.random(n)
    dup = np.nonzero(kind < 0.25)[0]
    dup = dup[dup > 0]
    blocks[dup] = blocks[rng.integers(0, dup)]
    blocks[kind > 0.95] = 0
    return blocks.reshape(-1)


def _python_pipeline(buf: np.ndarray, block_size: int) -> int:
    view = memoryview(buf)
    zero = bytes(block_size)
    index: dict[bytes, int] = {}
    next_id = 1
    for off in range(0, len(view), block_size):
        block = view[off : off + block_size]
        if block == zero:
            continue
        fp = xxhash.xxh3_128(block).digest()
        if fp not in index:
            index[fp] = next_id
            next_id += 1
    return next_id - 1


def _native_pipeline(buf: np.ndarray, block_size: int) -> int:
    fps, zero = native.fingerprint_blocks(buf, block_size)
    index = native.FingerprintIndex()  # no size hint: growth is part of the cost
    _ids, _new, n_new = index.lookup_or_insert(fps[~zero], 1)
    return n_new


@pytest.mark.parametrize(("block_kib", "target"), [(4, 3.0), (16, 1.5)])
def test_b_dedup_pipeline(
    benchmark, python_xxh3_rate: float, block_kib: int, target: float
) -> None:
    bs = block_kib * 1024
    buf = _dedup_data(bs)
    assert _native_pipeline(buf, bs) == _python_pipeline(buf, bs)
    python_s = measure(lambda: _python_pipeline(buf, bs), rounds=3)
    benchmark.pedantic(_native_pipeline, (buf, bs), rounds=7, iterations=1)
    native_s = benchmark.stats.stats.median if benchmark.stats else python_s
    report(benchmark, f"dedup pipeline native, {block_kib} KiB blocks", PIPE_BYTES, "MB/s",
           python_xxh3_rate, "python-xxhash hash-only ceiling",
           python_loop_mbs=PIPE_BYTES / python_s / 1e6, speedup=python_s / native_s,
           target_speedup=target)  # fmt: skip


def _random_fps(n: int, seed: int) -> np.ndarray:
    return np.frombuffer(np.random.default_rng(seed).bytes(n * 16), np.uint8).reshape(n, 16)


@pytest.mark.parametrize("entries", [1_000_000, 4_000_000])
def test_c_index_batch_lookups(benchmark, entries: int) -> None:
    stored = _random_fps(entries, 1)
    index = native.FingerprintIndex()
    index.lookup_or_insert(stored, 1)
    nq = 1_000_000
    queries = np.concatenate([stored[: nq // 2], _random_fps(nq - nq // 2, 2)])  # 50% hits
    queries = queries[np.random.default_rng(3).permutation(nq)]
    # Ceiling: random 24-byte gathers over an array as large as the table (numpy).
    table = np.ones((index.capacity(), 3), np.uint64)  # ones: pages really allocated
    where = np.random.default_rng(4).integers(0, index.capacity(), nq)
    gather_rate = nq / measure(lambda: table.take(where, axis=0), rounds=5)
    benchmark.pedantic(index.lookup, (queries,), rounds=7, iterations=1)
    report(benchmark, f"index batch lookup, {entries:,} entries", nq, "ops/s",
           gather_rate, "numpy random-gather ceiling", target_ops=10e6)  # fmt: skip


def _dict_bytes_per_entry(n: int) -> float:
    fps = _random_fps(n, 5)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    d = {fps[i].tobytes(): i + 2**40 for i in range(n)}
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(d) == n
    return used / n


@pytest.mark.parametrize("entries", [100_000, 1_000_000, 2_000_000])
def test_d_index_bytes_per_entry(benchmark, entries: int) -> None:
    index = native.FingerprintIndex()
    benchmark.pedantic(index.lookup_or_insert, (_random_fps(entries, 6), 1), rounds=1, iterations=1)
    per_entry = index.memory_bytes() / len(index)
    dict_per_entry = _dict_bytes_per_entry(min(entries, 200_000))
    # Not a rate: "throughput" is bytes per entry; the ceiling is the 24-byte slot.
    report(benchmark, f"index RAM, {entries:,} entries", per_entry, "bytes/entry", 24.0,
           "24-byte slot", seconds=1.0, load=len(index) / index.capacity(),
           python_dict_bytes_per_entry=dict_per_entry)  # fmt: skip


LZ4_BYTES = 64 * MiB
LZ4_BLOCK = 16 * 1024
LZ4_LIMIT = LZ4_BLOCK - LZ4_BLOCK // COMPRESS_MIN_SAVING


def _lz4_rows(kind: str) -> np.ndarray:
    """LZ4_BYTES as (n, 16 KiB) rows. mixed: per block at random, 50% text-like
    (lz4 ~2-3x), 25% half zero, 25% random; random: every block random."""
    n = LZ4_BYTES // LZ4_BLOCK
    rng = np.random.default_rng(9)
    rows = np.frombuffer(rng.bytes(LZ4_BYTES), np.uint8).reshape(n, LZ4_BLOCK).copy()
    if kind == "mixed":
        words = np.frombuffer(b"extent group record snapshot vdisk block map oplog ", np.uint8)
        kinds = rng.random(n)
        text = np.flatnonzero(kinds < 0.5)
        starts = rng.integers(0, len(words), (len(text), LZ4_BLOCK // 8))
        for r, st in zip(text.tolist(), starts, strict=True):  # 8-byte runs of words
            rows[r] = words[(st[:, None] + np.arange(8)) % len(words)].reshape(-1)
        rows[(kinds >= 0.5) & (kinds < 0.75), LZ4_BLOCK // 2 :] = 0
    return rows


def _python_compress(rows: np.ndarray) -> list[bytes | None]:
    """The old _store loop: one python-lz4 call per block, kept if it saves >= 1/8."""
    out: list[bytes | None] = []
    for row in rows:
        p = lz4.block.compress(row, store_size=False)
        out.append(p if len(p) <= LZ4_LIMIT else None)
    return out


def _one_compress(rows: np.ndarray) -> tuple:
    """What the extent store runs on one core: the probe, then compress what is worth it."""
    return native.lz4_compress_rows(rows, LZ4_LIMIT, HEADER_BYTES, native.lz4_probe_rows(rows))


def _split_compress(rows: np.ndarray) -> list:
    """The same split over the cores (the probe first, in one call, as encode_records does)."""
    worth = native.lz4_probe_rows(rows)
    return split_rows(
        lambda lo, hi: native.lz4_compress_rows(rows[lo:hi], LZ4_LIMIT, HEADER_BYTES, worth[lo:hi]),
        len(rows), 1,
    )  # fmt: skip


@pytest.fixture
def split_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Measure the split even on a busy host (split_rows would then make one call)."""
    monkeypatch.setattr(parallel, "host_busy", lambda: False)


@pytest.mark.usefixtures("split_always")
@pytest.mark.parametrize("kind", ["mixed", "random"])
def test_e_lz4_compress(benchmark, kind: str) -> None:
    rows = _lz4_rows(kind)
    python_s = measure(lambda: _python_compress(rows), rounds=3)
    one_s = measure(lambda: _one_compress(rows), rounds=3)
    benchmark.pedantic(_split_compress, (rows,), rounds=5, iterations=1)
    split_s = benchmark.stats.stats.median if benchmark.stats else one_s
    _, lens, comp = _one_compress(rows)
    report(benchmark, f"lz4 batch compress, {kind}, {WORKERS} parts", LZ4_BYTES, "MB/s",
           LZ4_BYTES / python_s / 1e6, "python-lz4 one call per block, 1 core",
           one_core_MBps=LZ4_BYTES / one_s / 1e6, one_core_vs_python=python_s / one_s,
           split_speedup=one_s / split_s, load=os.getloadavg()[0],
           compressed_fraction=float(comp.mean()),
           stored_per_raw=float(lens.sum()) / LZ4_BYTES)  # fmt: skip


@pytest.mark.usefixtures("split_always")
def test_e_lz4_decompress(benchmark) -> None:
    rows = _lz4_rows("mixed")
    payloads = [p for p in _python_compress(rows) if p is not None]
    k = len(payloads)
    src = np.frombuffer(b"".join(payloads), np.uint8)
    lengths = np.array([len(p) for p in payloads], np.int64)
    offsets = np.cumsum(lengths) - lengths
    out = np.empty((k, LZ4_BLOCK), np.uint8)

    def python_loop() -> None:
        for i, p in enumerate(payloads):
            out[i] = np.frombuffer(lz4.block.decompress(p, uncompressed_size=LZ4_BLOCK), np.uint8)

    def split() -> None:
        split_rows(lambda lo, hi: native.lz4_decompress_batch(
            src, offsets[lo:hi], lengths[lo:hi], LZ4_BLOCK, out[lo:hi]), k, UNLZ4_PART_BYTES // LZ4_BLOCK)

    python_s = measure(python_loop, rounds=3)
    one_s = measure(lambda: native.lz4_decompress_batch(src, offsets, lengths, LZ4_BLOCK, out),
                    rounds=3)  # fmt: skip
    benchmark.pedantic(split, rounds=5, iterations=1)
    split_s = benchmark.stats.stats.median if benchmark.stats else one_s
    assert native.lz4_decompress_batch(src, offsets, lengths, LZ4_BLOCK, out).all()
    report(benchmark, f"lz4 batch decompress, mixed, {WORKERS} parts", k * LZ4_BLOCK, "MB/s",
           k * LZ4_BLOCK / python_s / 1e6, "python-lz4 one call per block, 1 core",
           one_core_MBps=k * LZ4_BLOCK / one_s / 1e6, one_core_vs_python=python_s / one_s,
           split_speedup=one_s / split_s, load=os.getloadavg()[0])  # fmt: skip
