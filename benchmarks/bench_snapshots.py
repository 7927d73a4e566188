"""Snapshot and clone benchmarks of issue 3 (run: pytest benchmarks/bench_snapshots.py --benchmark-only).

Measurements, not pass/fail tests; every figure comes with a peer or ceiling
measured in the same run (conftest.report). All on a cluster with 4 KiB blocks.

1. snapshot creation at 1,000 and at 1,000,000 mapped blocks (target: ratio
   <= 1.5, median < 5 ms), side by side with `qemu-img snapshot -c` on a qcow2
   image holding the same amount of data (qemu-img is required: the benchmark
   fails if it is missing);
2. read throughput at chain depth 1 and at depth 64 (64 snapshots, 1% of the
   blocks rewritten before each) after c.drain() (automatic collapse);
   target slowdown <= 1.3x;
3. changed_blocks between two snapshots of a 1,000,000-block vDisk differing in
   100 and in 100,000 blocks (target: scales with the change, 100 blocks < 2 ms);
4. clone creation time and stored bytes added by 10 clones of a 1 GiB vDisk
   (target: < 5 ms, ~0 bytes), with `qemu-img create -b` (a qcow2 overlay) as peer.

Mapped blocks are written with large aligned writes (they bypass the OpLog) of a
repeating 8 MiB pattern of 2,048 distinct blocks, so filling 1,000,000 blocks
(4 GiB logical) stores only 8 MiB: the maps are full size, the data is deduped.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest
from _util import (
    GiB,
    KiB,
    MiB,
    file_readinto,
    file_write_fdatasync,
    random_bytes,
    read_all,
    scaled,
    scratch_dir,
    timed,
    tree_bytes,
    unique_blocks,
    write_all,
)
from conftest import measure, report

import nxstore

BS = 4 * KiB
MILLION = 1_000_000
VDISK_SIZE = 4 * GiB                   # every snapshot-test vDisk: 1,048,576 blocks of 4 KiB
PATTERN = 8 * MiB                      # the dedup'd fill pattern (2,048 distinct blocks)
CHAIN_BYTES = scaled(128 * MiB)        # the chain-depth vDisks (32,768 blocks at scale 1)
CHAIN_DEPTH = 64
CLONE_BYTES = scaled(1 * GiB)          # the clone source vDisk
CLONES = 10
_RESULTS: dict[str, float] = {}        # medians shared between parametrized cases


@pytest.fixture(scope="module")
def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        pytest.fail("qemu-img not found: install qemu-utils (apt-get install qemu-utils); "
                    "the snapshot benchmark compares against it")  # fmt: skip
    return path


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    with scratch_dir("snap") as path:
        yield path


@pytest.fixture(scope="module")
def cluster(root: str) -> Iterator[nxstore.Cluster]:
    c = nxstore.Cluster.create(os.path.join(root, "c"), block_size=BS)
    yield c
    c.close()


@pytest.fixture(scope="module")
def pattern() -> np.ndarray:
    return unique_blocks(PATTERN, BS, seed=7)


def fill(vd: nxstore.VDisk, nblocks: int, pattern: np.ndarray) -> None:
    """Map blocks [0, nblocks) with the repeating pattern (large aligned writes)."""
    nbytes = nblocks * BS
    view = memoryview(pattern)
    for off in range(0, nbytes, len(view)):
        vd.write(off, view[: min(len(view), nbytes - off)])
    vd.flush()


def qemu(qemu_img: str, *args: str) -> None:
    subprocess.run([qemu_img, *args], check=True, capture_output=True)


def qcow2_image(qemu_img: str, path: str, nblocks: int) -> None:
    """A 4 GiB qcow2 image holding nblocks * 4 KiB of data (default 64 KiB clusters).

    Small amounts are written for real (qemu-io); large ones are allocated with
    preallocation=falloc (every cluster allocated and refcounted as if written: what
    `snapshot -c` walks), then the image is grown to 4 GiB, because writing 4 GB
    through qemu-io takes ~17 s here."""
    nbytes = nblocks * BS
    if nbytes > 64 * MiB:
        qemu(qemu_img, "create", "-q", "-f", "qcow2", "-o", "preallocation=falloc", path,
             str(nbytes))  # fmt: skip
        qemu(qemu_img, "resize", "-q", path, str(VDISK_SIZE))
        return
    qemu(qemu_img, "create", "-q", "-f", "qcow2", path, str(VDISK_SIZE))
    qemu_io = shutil.which("qemu-io")
    if qemu_io is None:
        pytest.fail("qemu-io not found: install qemu-utils")
    subprocess.run([qemu_io, "-c", f"write -P 0x5a 0 {nbytes}", path], check=True,
                   capture_output=True)  # fmt: skip


# -- 1. snapshot creation: 1,000 vs 1,000,000 mapped blocks -------------------------------------
@pytest.mark.parametrize("nblocks", [1_000, MILLION])
def test_1_snapshot_create(
    benchmark, cluster: nxstore.Cluster, pattern: np.ndarray, root: str, qemu_img: str,
    nblocks: int,
) -> None:  # fmt: skip
    # Peer, same run: qemu-img snapshot -c (a process per call; its startup is reported too).
    image = os.path.join(root, f"img{nblocks}.qcow2")
    qcow2_image(qemu_img, image, nblocks)
    names = iter(range(1000))
    qemu_s = measure(lambda: qemu(qemu_img, "snapshot", "-c", f"s{next(names)}", image), rounds=5)
    startup_s = measure(lambda: qemu(qemu_img, "--version"), rounds=5)
    os.unlink(image)

    # Each round: a new vDisk with nblocks mapped, drained (maps persisted), then
    # one timed snapshot: the head layer frozen holds all nblocks entries.
    current: list[nxstore.VDisk] = []

    def setup() -> None:
        vd = cluster.create_vdisk(f"snap{nblocks}-{len(current)}", VDISK_SIZE)
        fill(vd, nblocks, pattern)
        cluster.drain()
        current.append(vd)

    benchmark.pedantic(lambda: current[-1].snapshot("s"), setup=setup, rounds=5, iterations=1)
    vd = current[-1]
    snap = vd.snapshots()[0]
    assert snap.read((nblocks - 1) * BS, BS) == pattern[((nblocks - 1) * BS) % PATTERN:][:BS].tobytes()
    # A later snapshot of the same vDisk (one block written in between, untimed).
    later = []
    for i in range(5):
        vd.write(i * BS, pattern[:BS])
        later.append(timed(vd.snapshot, f"later{i}"))
    for v in current:
        cluster.delete_vdisk(v.name, with_snapshots=True)
    median = benchmark.stats.stats.median if benchmark.stats else 0.0
    _RESULTS[f"snap{nblocks}"] = median
    extra = {}
    if nblocks == MILLION and "snap1000" in _RESULTS:
        extra["ratio_vs_1000"] = median / _RESULTS["snap1000"]
        extra["qemu_ratio_vs_1000"] = qemu_s / _RESULTS["qemu1000"]
    _RESULTS[f"qemu{nblocks}"] = qemu_s
    report(benchmark, f"s1 snapshot create, {nblocks:,} mapped blocks", 1, "ops/s",
           1 / qemu_s, "qemu-img snapshot -c, same data", median_ms=median * 1e3,
           qemu_ms=qemu_s * 1e3, qemu_startup_ms=startup_s * 1e3,
           later_snapshot_ms=statistics.median(later) * 1e3, target_ms=5.0, **extra)  # fmt: skip


# -- 2. read throughput: chain depth 1 vs 64, after c.drain() -----------------------------------
@pytest.fixture(scope="module")
def chains(cluster: nxstore.Cluster) -> dict[str, object]:
    """Three vDisks with the same CHAIN_BYTES of data, checked against a bytearray model:
    "depth1": 1% of the blocks rewritten (4 KiB writes), then one snapshot;
    "depth64": 64 times (1% of the blocks rewritten, then a snapshot);
    "flat64": the same rewrites as depth64 but one snapshot at the end, so it has
    depth64's fragmentation (about 47% of blocks rewritten, scattered in the extent
    groups) without its chain: reading it separates chain cost from fragmentation."""
    nblocks = CHAIN_BYTES // BS
    data = unique_blocks(CHAIN_BYTES, BS, seed=64)
    per_snap = nblocks // 100
    fresh = random_bytes(per_snap * CHAIN_DEPTH * BS, seed=65)
    out: dict[str, object] = {}
    for name, levels, snap_every in (("depth1", 1, 1), ("depth64", CHAIN_DEPTH, 1),
                                     ("flat64", CHAIN_DEPTH, CHAIN_DEPTH)):  # fmt: skip
        rng = np.random.default_rng(64)
        vd = cluster.create_vdisk(name, CHAIN_BYTES)
        write_all(vd, data, 8 * MiB)
        model = bytearray(data.tobytes())
        k = 0
        for level in range(levels):
            for b in rng.choice(nblocks, per_snap, replace=False).tolist():
                piece = fresh[k * BS : (k + 1) * BS]
                vd.write(b * BS, piece)
                model[b * BS : (b + 1) * BS] = piece.tobytes()
                k += 1
            vd.flush()
            if level % snap_every == snap_every - 1:
                vd.snapshot(f"s{level}")
        out[name] = vd
        out[name + "_model"] = bytes(model)
    # Before the drain: no collapse yet (reads fall through up to 64 layers).
    read_all(out["depth64"], CHAIN_BYTES)
    out["before_drain_s"] = measure(lambda: read_all(out["depth64"], CHAIN_BYTES), rounds=3)
    out["drain_s"] = timed(cluster.drain)
    for name in ("depth1", "depth64", "flat64"):
        got = out[name].read(0, CHAIN_BYTES)  # type: ignore[attr-defined]
        assert got == out[name + "_model"], f"{name} reads wrong data"
    return out


def test_2_read_chain_depth1(benchmark, chains: dict[str, object], root: str) -> None:
    vd = chains["depth1"]
    raw = os.path.join(root, "chain.raw")
    file_write_fdatasync(raw, np.frombuffer(chains["depth1_model"], np.uint8))  # type: ignore[arg-type]
    file_readinto(raw, CHAIN_BYTES)
    ceil: list[float] = []

    def setup() -> None:
        ceil.append(timed(file_readinto, raw, CHAIN_BYTES))

    benchmark.pedantic(read_all, (vd, CHAIN_BYTES, MiB), setup=setup, rounds=5, iterations=1)
    os.unlink(raw)
    _RESULTS["depth1"] = benchmark.stats.stats.median if benchmark.stats else 0.0
    report(benchmark, "s2 read 1 MiB calls, chain depth 1 (4 KiB blocks)", CHAIN_BYTES, "MB/s",
           CHAIN_BYTES / statistics.median(ceil) / 1e6, "os.readv 1 MiB of a warm file")  # fmt: skip


def test_2_read_chain_depth64(benchmark, chains: dict[str, object]) -> None:
    depth1, depth64, flat64 = chains["depth1"], chains["depth64"], chains["flat64"]
    ceil: list[float] = []
    flat: list[float] = []

    def setup() -> None:  # the peers, interleaved with the timed rounds
        ceil.append(timed(read_all, depth1, CHAIN_BYTES))
        flat.append(timed(read_all, flat64, CHAIN_BYTES))

    benchmark.pedantic(read_all, (depth64, CHAIN_BYTES, MiB), setup=setup, rounds=5, iterations=1)
    median = benchmark.stats.stats.median if benchmark.stats else 0.0
    depth1_s = statistics.median(ceil)
    report(benchmark, f"s2 read 1 MiB calls, chain depth {CHAIN_DEPTH} after drain", CHAIN_BYTES,
           "MB/s", CHAIN_BYTES / depth1_s / 1e6, "depth 1, same run",
           slowdown=median / depth1_s, target_slowdown=1.3,
           slowdown_vs_same_writes_depth1=median / statistics.median(flat),
           before_drain_MBps=CHAIN_BYTES / chains["before_drain_s"] / 1e6,
           before_drain_slowdown=chains["before_drain_s"] / depth1_s,
           drain_s=chains["drain_s"])  # fmt: skip


# -- 3. changed_blocks: 100 vs 100,000 changed of 1,000,000 -------------------------------------
@pytest.fixture(scope="module")
def diff_disk(cluster: nxstore.Cluster, pattern: np.ndarray) -> dict[str, object]:
    """A 1,000,000-block vDisk; snapshot "base", then 100 random blocks rewritten ->
    snapshot "c100", then 99,900 other random blocks rewritten -> snapshot "c100000".
    Rewrites are single 4 KiB writes of unique data (OpLog path)."""
    vd = cluster.create_vdisk("diff", MILLION * BS)
    fill(vd, MILLION, pattern)
    base = vd.snapshot("base")
    rng = np.random.default_rng(3)
    picks = rng.choice(MILLION, 100_000, replace=False)
    data = random_bytes(100_000 * BS, seed=33)
    view = memoryview(data)
    snaps = {"base": base}
    t = 1.0
    for lo, hi, name in ((0, 100, "c100"), (100, 100_000, "c100000")):
        def rewrite(lo: int = lo, hi: int = hi) -> None:
            for i in range(lo, hi):
                vd.write(int(picks[i]) * BS, view[i * BS : (i + 1) * BS])
            vd.flush()

        t = timed(rewrite)
        snaps[name] = vd.snapshot(name)
    cluster.drain()
    return {"vd": vd, "snaps": snaps, "picks": np.sort(picks), "rewrite_iops": 99_900 / t}


@pytest.mark.parametrize("changed", [100, 100_000])
def test_3_changed_blocks(benchmark, diff_disk: dict[str, object], changed: int) -> None:
    vd = diff_disk["vd"]
    snaps = diff_disk["snaps"]
    base, target = snaps["base"], snaps[f"c{changed}"]  # type: ignore[index]
    ranges = vd.changed_blocks(base, target)  # type: ignore[attr-defined]
    blocks = np.concatenate([np.arange(o // BS, (o + n) // BS) for o, n in ranges])
    expect = diff_disk["picks"] if changed == 100_000 else None
    assert blocks.size == changed
    if expect is not None:
        assert np.array_equal(blocks, expect)
    rounds = 21 if changed == 100 else 7
    benchmark.pedantic(vd.changed_blocks, (base, target), rounds=rounds, iterations=1)  # type: ignore[attr-defined]
    median = benchmark.stats.stats.median if benchmark.stats else 0.0
    _RESULTS[f"diff{changed}"] = median
    extra = {}
    if changed == 100_000 and "diff100" in _RESULTS:
        extra["time_ratio_vs_100"] = median / _RESULTS["diff100"]
    else:
        extra["target_ms"] = 2.0
    # Peer: the O(disk size) way, one numpy compare of two full 1M-entry block maps.
    map_a = np.arange(1, MILLION + 1, dtype=np.uint64)
    map_b = map_a.copy()
    map_b[np.random.default_rng(5).choice(MILLION, changed, replace=False)] += np.uint64(MILLION)
    scan_s = measure(lambda: np.flatnonzero(map_a != map_b), rounds=7)
    report(benchmark, f"s3 changed_blocks 1M-block vDisk, {changed:,} changed", 1, "ops/s",
           1 / scan_s, "full-map numpy compare (O(size))", scan_ms=scan_s * 1e3,
           median_ms=median * 1e3, ranges=len(ranges),
           rewrite_4k_iops=diff_disk["rewrite_iops"], **extra)  # fmt: skip


# -- 4. clones of a 1 GiB vDisk ------------------------------------------------------------------
def test_4_clone(benchmark, cluster: nxstore.Cluster, root: str, qemu_img: str) -> None:
    data = unique_blocks(CLONE_BYTES, BS, seed=44)
    vd = cluster.create_vdisk("golden", CLONE_BYTES)
    write_all(vd, data, 8 * MiB)
    vd.flush()
    snap = vd.snapshot("golden")
    cluster.drain()
    before = cluster.stats()
    disk_before = tree_bytes(cluster.path)
    clones: list[nxstore.VDisk] = []

    def make() -> None:
        clones.append(cluster.clone(snap, f"clone{len(clones)}"))

    benchmark.pedantic(make, rounds=CLONES, iterations=1)
    cluster.drain()
    after = cluster.stats()
    disk_after = tree_bytes(cluster.path)
    off = CLONE_BYTES // 3 // BS * BS
    for cl in (clones[0], clones[-1]):
        assert cl.read(off, MiB) == data[off : off + MiB].tobytes()

    # Peer: qemu-img create -b (a qcow2 overlay on a backing image), 10 times.
    backing = os.path.join(root, "golden.qcow2")
    qemu(qemu_img, "create", "-q", "-f", "qcow2", "-o", "preallocation=falloc", backing,
         str(CLONE_BYTES))  # fmt: skip
    names = iter(range(1000))
    qemu_s = measure(lambda: qemu(qemu_img, "create", "-q", "-f", "qcow2", "-b", backing,
                                  "-F", "qcow2", os.path.join(root, f"ov{next(names)}.qcow2")),
                     rounds=CLONES)  # fmt: skip
    for name in os.listdir(root):
        if name.endswith(".qcow2"):
            os.unlink(os.path.join(root, name))
    median = benchmark.stats.stats.median if benchmark.stats else 0.0
    report(benchmark, f"s4 clone of a {CLONE_BYTES >> 20} MiB vDisk", 1, "ops/s", 1 / qemu_s,
           "qemu-img create -b overlay", median_ms=median * 1e3, qemu_ms=qemu_s * 1e3,
           target_ms=5.0,
           stored_bytes_added=int(after["stored_bytes"]) - int(before["stored_bytes"]),
           map_disk_bytes_added=int(after["map_disk_bytes"]) - int(before["map_disk_bytes"]),
           dir_bytes_added=disk_after - disk_before,
           logical_bytes_added=int(after["logical_bytes"]) - int(before["logical_bytes"]))  # fmt: skip
