"""Quick perf check of block maps (a script, not a test): python benchmarks/perf_block_map.py

Prints: set() of 32-entry batches into a 1M-entry layer (ops/s); chain_lookup
of 64 consecutive blocks through depth-64 vs depth-1 chains; changed_blocks
between two 1M-block chains differing in 100 vs 100,000 blocks; RAM and disk
bytes per mapped block.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

from nxstore.store.block_map import MapLayer, chain_lookup, changed_blocks
from nxstore.store.map_store import MapStore

U64 = np.uint64
N = 1_000_000


def timed(fn, repeat: int = 7) -> float:
    """Median seconds per call."""
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def full_layer(rng, n=N) -> MapLayer:
    return MapLayer(np.arange(n, dtype=U64), rng.integers(1, 2**40, n, dtype=U64))


def bench_set(rng) -> None:
    layer = full_layer(rng)
    batches = [
        (rng.integers(0, 2 * N, 32, dtype=U64), rng.integers(1, 2**40, 32, dtype=U64))
        for _ in range(20_000)
    ]
    t = time.perf_counter()
    for b, v in batches:
        layer.set(b, v)
    dt = time.perf_counter() - t
    print(
        f"set, 32-entry batches into a 1M layer: {len(batches) / dt:,.0f} ops/s "
        f"({dt / len(batches) * 1e6:.1f} us/op, {32 * len(batches) / dt:,.0f} entries/s)"
    )
    q = rng.integers(0, 2 * N, 64, dtype=U64)
    print(
        f"lookup of 64 random blocks in that (mutable) layer: {timed(lambda: layer.lookup(q)) * 1e6:.1f} us"
    )


def bench_chain(rng) -> None:
    base = full_layer(rng)
    base.freeze()
    deep = [base]
    for _ in range(63):  # 63 snapshots with 2,000 random writes each
        layer = MapLayer()
        layer.set(rng.integers(0, N, 2000, dtype=U64), rng.integers(1, 2**40, 2000, dtype=U64))
        layer.freeze()
        deep.insert(0, layer)
    q = np.arange(500_000, 500_064, dtype=U64)
    d64 = timed(lambda: chain_lookup(deep, q), 51)
    d1 = timed(lambda: chain_lookup([base], q), 51)
    print(
        f"chain_lookup of 64 consecutive blocks: depth 64 {d64 * 1e6:.0f} us, "
        f"depth 1 {d1 * 1e6:.0f} us (ratio {d64 / d1:.1f})"
    )


def bench_changed(rng) -> None:
    base = full_layer(rng)
    base.freeze()
    for changes in (100, 100_000):
        tops = []
        for _ in range(2):
            top = MapLayer()
            blocks = rng.choice(N, changes // 2, replace=False).astype(U64)
            top.set(blocks, rng.integers(1, 2**40, len(blocks), dtype=U64))
            top.freeze()
            tops.append(top)
        a, b = [tops[0], base], [tops[1], base]
        got = changed_blocks(a, b, 1)
        exact = timed(lambda a=a, b=b: changed_blocks(a, b, 1), 21)
        since = timed(lambda a=a, b=b: changed_blocks(a, b, 1, exact=False), 21)
        print(
            f"changed_blocks, two 1M-block chains differing in {changes:,} blocks "
            f"({len(got):,} returned): exact {exact * 1e3:.2f} ms, written-since {since * 1e3:.2f} ms"
        )


def bench_bytes(rng) -> None:
    layer = full_layer(rng)
    with tempfile.TemporaryDirectory() as d:
        store = MapStore(d)
        t = time.perf_counter()
        store.write_base(1, layer, 1)
        w = time.perf_counter() - t
        t = time.perf_counter()
        store.load(1)
        r = time.perf_counter() - t
        base = store.disk_bytes(1)
        for i in range(100):
            store.append(1, rng.integers(0, N, 32, dtype=U64), rng.integers(1, 9, 32, dtype=U64), i)
        delta = store.disk_bytes(1) - base
        print(
            f"RAM {layer.nbytes() / len(layer):.1f} B/block; base file {base / len(layer):.2f} "
            f"B/block; delta {delta / 3200:.1f} B/entry in 32-entry records; "
            f"write_base 1M {w * 1e3:.0f} ms, load 1M {r * 1e3:.0f} ms"
        )
        t = time.perf_counter()
        for i in range(200):
            store.append(1, rng.integers(0, N, 32, dtype=U64), rng.integers(1, 9, 32, dtype=U64), i)
        print(
            f"append (32 entries + fdatasync): {200 / (time.perf_counter() - t):,.0f}/s "
            f"on {os.path.realpath(d)}"
        )


if __name__ == "__main__":
    rng = np.random.default_rng(42)
    bench_set(rng)
    bench_chain(rng)
    bench_changed(rng)
    bench_bytes(rng)
