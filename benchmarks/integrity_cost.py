"""What issue 11's integrity machinery costs: the current engine against the one before it.

    python benchmarks/integrity_cost.py --old-tree PATH [--rounds 5] [--json FILE]
    python benchmarks/integrity_cost.py --old-commit 1f92998 [--rounds 5] [--json FILE]

PATH is a source tree of the old engine with its native extension built in place
(`python native/build_native.py` there); `--old-commit` makes one from this repository
with `git archive` in a scratch directory and builds it. Each round runs, for every
case, one child process per engine back to back (`--child N`, with PYTHONPATH at that
engine's tree), the order flipped from pair to pair so both see the same drift in
machine load. A child measures one of the cases below with whatever `nxstore` it
imports, with its same-run ceiling, and prints one JSON object; the parent reports
per-engine medians over the rounds, the new/old ratio of those and the median of the
per-pair ratios. bench_integrity_cost.py drives the same cases under pytest-benchmark
and runs this comparison as its last test.

A child also counts the engine's fsync/fdatasync and write/pwrite calls per operation
(SyncCounter): load-independent, where the timings are not. The cases (a Case: untimed
`setup` that also times one round of each ceiling, timed `run`, then `figures` from
the run times, as in the other benchmark files):

a. WriteFlushQD1: 4 KiB write + flush at queue depth 1 (the OpLog group-commit path),
   latency p50/p99 and IOPS; ceilings: appending 4 KiB pwrite + fdatasync, and the same
   with a header pwrite after each fdatasync (what a synced watermark adds, raw).
b. SnapshotCreate: snapshot of a vDisk with 1,000 / 100,000 mapped 4 KiB blocks (S1
   style); ceilings: a SQLite commit (WAL, synchronous=FULL, the catalogue's setting),
   and the same followed by a 32-byte pwrite + fdatasync of a side file (the catalogue
   generation file, raw).
c. CloneCreate: clone of that snapshot (100,000 blocks); same ceilings.
d. SeqWriteFlush: 1 MiB writes, a flush after each; ceiling: os.write 1 MiB + fdatasync.
e. CloseOpen: close + open of a cluster with 10 vDisks, each written since the last
   drain; no ceiling.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _util import KiB, MiB, file_write_fdatasync, scaled, scratch_dir, unique_blocks, write_all

import nxstore

OLD_COMMIT = "1f92998"                 # the engine before issue 11's integrity work
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
IO = 4 * KiB
SNAP_BS = 4 * KiB                      # S1's block size
SNAP_VDISK = 4 << 30                   # S1's vDisk size (1,048,576 blocks of 4 KiB)
CLONE_BLOCKS = 100_000
SEQ_BYTES = scaled(64 * MiB)
CLOSE_OPEN_VDISKS = 10
_MARK = bytes(48)                      # an OpLog segment watermark is 48 bytes at offset 32


def _pctl(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class SyncCounter:
    """Counts the engine's os.fsync/os.fdatasync calls (`syncs`) and os.write/os.pwrite
    calls (`writes`) while `active` (around the timed runs only, so the ceilings in
    setup are not counted; a background drain running meanwhile is). SQLite's own
    fsyncs happen in C and are not seen: add one per catalogue commit."""

    def __init__(self) -> None:
        self.active = False
        self.syncs = self.writes = 0
        self._saved: dict[str, Any] = {}

    def install(self) -> None:
        for name, counter in (("fsync", "syncs"), ("fdatasync", "syncs"), ("write", "writes"),
                              ("pwrite", "writes")):  # fmt: skip
            real = self._saved[name] = getattr(os, name)
            setattr(os, name, self._wrap(real, counter))

    def _wrap(self, real: Any, counter: str) -> Any:
        def call(*args: Any) -> Any:
            if self.active:
                setattr(self, counter, getattr(self, counter) + 1)
            return real(*args)

        return call

    def uninstall(self) -> None:
        for name, real in self._saved.items():
            setattr(os, name, real)
        self._saved.clear()

    def timed(self, fn: Any) -> Any:
        """`fn` wrapped to count only while it runs."""

        def run() -> None:
            self.active = True
            try:
                fn()
            finally:
                self.active = False

        return run

    def figures(self, key: str, ops: int) -> dict[str, float]:
        return {f"{key}_syncs_per_op": self.syncs / ops, f"{key}_writes_per_op": self.writes / ops}


# -- raw ceilings --------------------------------------------------------------------------
def raw_append_qd1(path: str, pool: memoryview, ops: int, mark: bool) -> list[float]:
    """Seconds of each of `ops` appends of 4 KiB to a new file at `path`, each followed by
    fdatasync (and, with `mark`, by a 48-byte pwrite at offset 32 that the next fdatasync
    carries, as the OpLog's synced watermark is)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    out = []
    try:
        for i in range(ops):
            t0 = time.perf_counter()
            os.write(fd, pool[i * IO : (i + 1) * IO])
            os.fdatasync(fd)
            if mark:
                os.pwrite(fd, _MARK, 32)
            out.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return out


class SqliteCommit:
    """A database in `directory` set up like the catalogue (WAL, synchronous=FULL) and a
    32-byte side file like catalog.gen. `commit(gen)` times one one-row transaction,
    with `gen` followed by a pwrite + fdatasync of the side file."""

    def __init__(self, directory: str) -> None:
        self._db = sqlite3.connect(os.path.join(directory, "ceiling.db"), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        self._fd = os.open(os.path.join(directory, "ceiling.gen"), os.O_RDWR | os.O_CREAT, 0o600)
        self._n = 0

    def commit(self, gen: bool) -> float:
        self._n += 1
        t0 = time.perf_counter()
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("INSERT INTO t (v) VALUES (?)", ("x" * 64,))
        self._db.execute("COMMIT")
        if gen:
            os.pwrite(self._fd, self._n.to_bytes(32, "little"), self._n % 2 * 32)
            os.fdatasync(self._fd)
        return time.perf_counter() - t0

    def round(self, samples: dict[str, list[float]], commits: int = 5) -> None:
        """`commits` of each kind, alternating, into samples["sqlite"] / ["sqlite_gen"]."""
        for _ in range(commits):
            samples.setdefault("sqlite", []).append(self.commit(False))
            samples.setdefault("sqlite_gen", []).append(self.commit(True))

    def close(self) -> None:
        self._db.close()
        os.close(self._fd)


# -- the cases -------------------------------------------------------------------------------
class Case:
    """One measured operation: `setup()` untimed before each round (it also times one round
    of each same-run ceiling), `run()` timed, `figures(run_seconds)` after the last round
    (checks what was written, returns named figures), `close()` removes nothing on disk
    (the caller's scratch directory does)."""

    rounds = 5
    key = ""           # prefix of its figures
    ops_per_run = 1    # operations in one run(), for the per-operation syscall counts

    def setup(self) -> None:
        pass

    def run(self) -> None:
        raise NotImplementedError

    def figures(self, times: list[float]) -> dict[str, float]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class WriteFlushQD1(Case):
    """(a) `ops` random 4 KiB writes into a pre-written 16 MiB region, each followed by
    flush (one fdatasync of the active OpLog segment), default 16 KiB blocks."""

    REGION = 16 * MiB
    key = "wf"

    def __init__(self, root: str, ops: int = 400) -> None:
        self.root, self.ops, self.ops_per_run = root, ops, ops
        self.cluster = nxstore.Cluster.create(os.path.join(root, "wf"))
        self.vd = self.cluster.create_vdisk("wf", self.REGION)
        write_all(self.vd, unique_blocks(self.REGION, IO, seed=1), MiB)
        self.vd.flush()
        self.cluster.drain()
        self.pool = memoryview(unique_blocks(ops * IO, IO, seed=2))
        self.rng = np.random.default_rng(3)
        self.latency: list[float] = []
        self.raw: dict[str, list[list[float]]] = {"append": [], "append_mark": []}
        self.offsets: list[int] = []

    def setup(self) -> None:
        self.offsets = (self.rng.integers(0, self.REGION // IO, self.ops) * IO).tolist()
        log = os.path.join(self.root, "ceiling.log")
        self.raw["append"].append(raw_append_qd1(log, self.pool, self.ops, mark=False))
        self.raw["append_mark"].append(raw_append_qd1(log, self.pool, self.ops, mark=True))

    def run(self) -> None:
        vd, pool, lat, clock = self.vd, self.pool, self.latency, time.perf_counter
        for i, off in enumerate(self.offsets):
            t0 = clock()
            vd.write(off, pool[i * IO : (i + 1) * IO])
            vd.flush()
            lat.append(clock() - t0)

    def figures(self, times: list[float]) -> dict[str, float]:
        last = self.ops - 1
        want = bytes(self.pool[last * IO : (last + 1) * IO])
        assert self.vd.read(self.offsets[last], IO) == want, "a flushed write reads back wrong"
        out = {"wf_p50_us": _pctl(self.latency, 50) * 1e6,
               "wf_p99_us": _pctl(self.latency, 99) * 1e6,
               "wf_iops": self.ops / statistics.median(times)}
        for name, rounds in self.raw.items():
            flat = [x for r in rounds for x in r]
            out[f"ceil_{name}_p50_us"] = _pctl(flat, 50) * 1e6
            out[f"ceil_{name}_p99_us"] = _pctl(flat, 99) * 1e6
            out[f"ceil_{name}_iops"] = self.ops / statistics.median(sum(r) for r in rounds)
        return out

    def close(self) -> None:
        self.cluster.close()


def fill(vd: Any, nblocks: int, pattern: np.ndarray) -> None:
    """Map blocks [0, nblocks) with a repeating pattern (large aligned writes, S1 style)."""
    view, nbytes = memoryview(pattern), nblocks * SNAP_BS
    for off in range(0, nbytes, len(view)):
        vd.write(off, view[: min(len(view), nbytes - off)])
    vd.flush()


class SnapshotCreate(Case):
    """(b) One snapshot of a fresh vDisk with `nblocks` mapped 4 KiB blocks, drained
    (maps persisted) before the timed call, as S1 in bench_snapshots.py."""

    def __init__(self, root: str, nblocks: int) -> None:
        self.nblocks, self.key = nblocks, f"snap{nblocks}"
        self.cluster = nxstore.Cluster.create(os.path.join(root, f"snap{nblocks}"),
                                              block_size=SNAP_BS)  # fmt: skip
        self.pattern = unique_blocks(8 * MiB, SNAP_BS, seed=7)
        self.sql = SqliteCommit(root)
        self.ceil: dict[str, list[float]] = {}
        self.vdisks: list[Any] = []

    def setup(self) -> None:
        self.sql.round(self.ceil)
        vd = self.cluster.create_vdisk(f"v{len(self.vdisks)}", SNAP_VDISK)
        fill(vd, self.nblocks, self.pattern)
        self.cluster.drain()
        self.vdisks.append(vd)

    def run(self) -> None:
        self.vdisks[-1].snapshot("s")

    def figures(self, times: list[float]) -> dict[str, float]:
        snap = self.vdisks[-1].snapshots()[0]
        off = (self.nblocks - 1) * SNAP_BS
        assert snap.read(off, SNAP_BS) == self.pattern[off % len(self.pattern) :][:SNAP_BS].tobytes()
        for vd in self.vdisks:
            self.cluster.delete_vdisk(vd.name, with_snapshots=True)
        return {f"snap{self.nblocks}_ms": statistics.median(times) * 1e3,
                **sqlite_figures(self.ceil)}  # fmt: skip

    def close(self) -> None:
        self.sql.close()
        self.cluster.close()


def sqlite_figures(samples: dict[str, list[float]]) -> dict[str, float]:
    return {"ceil_sqlite_ms": statistics.median(samples["sqlite"]) * 1e3,
            "ceil_sqlite_gen_ms": statistics.median(samples["sqlite_gen"]) * 1e3}  # fmt: skip


class CloneCreate(Case):
    """(c) A clone of a snapshot of a vDisk with CLONE_BLOCKS mapped 4 KiB blocks."""

    rounds = 10
    key = "clone"

    def __init__(self, root: str) -> None:
        self.cluster = nxstore.Cluster.create(os.path.join(root, "clone"), block_size=SNAP_BS)
        self.pattern = unique_blocks(8 * MiB, SNAP_BS, seed=8)
        vd = self.cluster.create_vdisk("golden", SNAP_VDISK)
        fill(vd, CLONE_BLOCKS, self.pattern)
        self.snap = vd.snapshot("golden")
        self.cluster.drain()
        self.sql = SqliteCommit(root)
        self.ceil: dict[str, list[float]] = {}
        self.clones: list[Any] = []

    def setup(self) -> None:
        self.sql.round(self.ceil, commits=3)

    def run(self) -> None:
        self.clones.append(self.cluster.clone(self.snap, f"clone{len(self.clones)}"))

    def figures(self, times: list[float]) -> dict[str, float]:
        off = (CLONE_BLOCKS // 3) * SNAP_BS
        want = self.pattern[off % len(self.pattern) :][:SNAP_BS].tobytes()
        assert self.clones[-1].read(off, SNAP_BS) == want, "a clone reads wrong data"
        return {"clone_ms": statistics.median(times) * 1e3,
                **{f"{k}_clone": v for k, v in sqlite_figures(self.ceil).items()}}  # fmt: skip

    def close(self) -> None:
        self.sql.close()
        self.cluster.close()


class SeqWriteFlush(Case):
    """(d) SEQ_BYTES of unique data into a new vDisk in 1 MiB writes, each followed by
    flush (default 16 KiB blocks: the writes bypass the OpLog, a flush fdatasyncs the
    extent group and then the OpLog). Ceilings: os.write 1 MiB + fdatasync each, and
    the same bytes written with one fdatasync at the end."""

    key = "seq"
    ops_per_run = SEQ_BYTES // MiB

    def __init__(self, root: str) -> None:
        self.root = root
        self.cluster = nxstore.Cluster.create(os.path.join(root, "seq"))
        self.ceil: dict[str, list[float]] = {"each": [], "once": []}
        self.data = np.empty(0, np.uint8)
        self.vd: Any = None
        self.n = 0

    def setup(self) -> None:
        self.n += 1
        self.data = unique_blocks(SEQ_BYTES, IO, seed=100 + self.n)
        raw = os.path.join(self.root, "ceiling.raw")
        for name, each in (("each", True), ("once", False)):
            t0 = time.perf_counter()
            file_write_fdatasync(raw, self.data, sync_each=each)
            self.ceil[name].append(time.perf_counter() - t0)
            os.unlink(raw)
        if self.vd is not None:
            self.cluster.delete_vdisk(self.vd.name)
        self.vd = self.cluster.create_vdisk(f"seq{self.n}", SEQ_BYTES)

    def run(self) -> None:
        vd, view = self.vd, memoryview(self.data)
        for off in range(0, SEQ_BYTES, MiB):
            vd.write(off, view[off : off + MiB])
            vd.flush()

    def figures(self, times: list[float]) -> dict[str, float]:
        assert self.vd.read(SEQ_BYTES - MiB, MiB) == self.data[-MiB:].tobytes()
        mbps = SEQ_BYTES / 1e6
        return {"seq_MBps": mbps / statistics.median(times),
                "ceil_seq_each_MBps": mbps / statistics.median(self.ceil["each"]),
                "ceil_seq_once_MBps": mbps / statistics.median(self.ceil["once"])}  # fmt: skip

    def close(self) -> None:
        self.cluster.close()


class CloseOpen(Case):
    """(e) close() then Cluster.open() of a cluster with CLOSE_OPEN_VDISKS vDisks, drained
    and then each given 32 random 4 KiB writes and a flush (default 16 KiB blocks): the
    writes stay in the OpLog across close, and open replays those 320 records."""

    SIZE = 64 * MiB
    key = "close_open"

    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, "reopen")
        self.cluster = nxstore.Cluster.create(self.path)
        for i in range(CLOSE_OPEN_VDISKS):
            vd = self.cluster.create_vdisk(f"v{i}", self.SIZE)
            write_all(vd, unique_blocks(4 * MiB, IO, seed=200 + i), MiB)
            vd.flush()
        self.pool = memoryview(unique_blocks(32 * IO * CLOSE_OPEN_VDISKS, IO, seed=300))
        self.rng = np.random.default_rng(4)
        self.parts: dict[str, list[float]] = {"close": [], "open": []}
        self.last: tuple[str, int, bytes] = ("", 0, b"")

    def setup(self) -> None:
        self.cluster.drain()
        for i, vd in enumerate(self.cluster.vdisks()):
            for j, blk in enumerate(self.rng.integers(0, self.SIZE // IO, 32).tolist()):
                k = i * 32 + j
                vd.write(blk * IO, self.pool[k * IO : (k + 1) * IO])
                self.last = (vd.name, blk * IO, bytes(self.pool[k * IO : (k + 1) * IO]))
            vd.flush()

    def run(self) -> None:
        t0 = time.perf_counter()
        self.cluster.close()
        t1 = time.perf_counter()
        self.cluster = nxstore.Cluster.open(self.path)
        self.parts["close"].append(t1 - t0)
        self.parts["open"].append(time.perf_counter() - t1)

    def figures(self, times: list[float]) -> dict[str, float]:
        name, off, want = self.last
        assert self.cluster.vdisk(name).read(off, IO) == want, "a write is lost across close"
        return {"close_open_ms": statistics.median(times) * 1e3,
                "close_ms": statistics.median(self.parts["close"]) * 1e3,
                "open_ms": statistics.median(self.parts["open"]) * 1e3}  # fmt: skip

    def close(self) -> None:
        self.cluster.close()


#: Every case, in run order, made from a scratch directory (it sets up its cluster there).
CASES: list[Callable[[str], Case]] = [
    WriteFlushQD1,
    lambda root: SnapshotCreate(root, 1_000),
    lambda root: SnapshotCreate(root, 100_000),
    CloneCreate,
    SeqWriteFlush,
    CloseOpen,
]


def drive(case: Case, benchmark: Any = None) -> dict[str, float]:
    """Run `case` for its rounds (setup untimed; with pytest-benchmark's `benchmark`
    fixture, through benchmark.pedantic) and return its figures, with the syscalls
    per operation."""
    times: list[float] = []
    counter = SyncCounter()
    run = counter.timed(case.run)
    counter.install()
    try:
        if benchmark is not None:
            benchmark.pedantic(run, setup=case.setup, rounds=case.rounds, iterations=1)
            times = list(benchmark.stats.stats.data) if benchmark.stats else [1.0]
        for _ in range(case.rounds if benchmark is None else 0):
            case.setup()
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return {**case.figures(times),
                **counter.figures(case.key, case.rounds * case.ops_per_run)}  # fmt: skip
    finally:
        counter.uninstall()
        case.close()


def child(case: int) -> dict[str, Any]:
    """CASES[case] against the imported nxstore, with the load
    average before and after."""
    t0 = time.perf_counter()
    load = [os.getloadavg()[0]]
    with scratch_dir("integrity") as root:
        figures = drive(CASES[case](root))
    load.append(os.getloadavg()[0])
    return {"engine": os.path.dirname(nxstore.__file__), "load1": load,
            "seconds": time.perf_counter() - t0, "figures": figures}  # fmt: skip


# -- the comparison ------------------------------------------------------------------------
#: (label, figure, its same-run ceiling or None)
ROWS = [
    ("a 4 KiB write+flush QD1, p50 (us)", "wf_p50_us", "ceil_append_p50_us"),
    ("a 4 KiB write+flush QD1, p99 (us)", "wf_p99_us", "ceil_append_p99_us"),
    ("a 4 KiB write+flush QD1 (IOPS)", "wf_iops", "ceil_append_iops"),
    ("b snapshot, 1,000 blocks (ms)", "snap1000_ms", "ceil_sqlite_ms"),
    ("b snapshot, 100,000 blocks (ms)", "snap100000_ms", "ceil_sqlite_ms"),
    ("c clone, 100,000 blocks (ms)", "clone_ms", "ceil_sqlite_ms_clone"),
    ("d seq 1 MiB write+flush (MB/s)", "seq_MBps", "ceil_seq_each_MBps"),
    ("e close+open, 10 vDisks (ms)", "close_open_ms", None),
    ("e close (ms)", "close_ms", None),
    ("e open (ms)", "open_ms", None),
]
#: Raw ceilings of the new protocol's extra steps, reported beside the plain ceilings.
EXTRA_CEILINGS = [
    ("raw append+fdatasync+watermark pwrite, p50 (us)", "ceil_append_mark_p50_us"),
    ("raw append+fdatasync+watermark pwrite (IOPS)", "ceil_append_mark_iops"),
    ("SQLite commit + 32 B pwrite+fdatasync (ms)", "ceil_sqlite_gen_ms"),
    ("os.write 1 MiB, one fdatasync at the end (MB/s)", "ceil_seq_once_MBps"),
]


def run_child(tree: str, case: int) -> dict[str, Any]:
    """One child process measuring case number `case` with the engine in `tree`."""
    env = {k: v for k, v in os.environ.items() if k != "NXSTORE_DEBUG_LOCKS"}
    env["PYTHONPATH"] = tree
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(case)],
                         env=env, cwd=HERE, capture_output=True, text=True)  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"the child measuring {tree} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    want = os.path.join(os.path.realpath(tree), "nxstore")
    if os.path.realpath(result["engine"]) != want:
        raise RuntimeError(f"the child imported {result['engine']}, not {want}")
    return result


def compare(old_tree: str, new_tree: str = REPO, rounds: int = 5,
            progress: Any = print) -> dict[str, Any]:  # fmt: skip
    """`rounds` rounds; in each, every case runs once per engine in back-to-back children
    (order flipped from one pair to the next), so a pair sees the same machine state.
    Returns per-engine medians, new/old of the medians, the median of the per-pair
    new/old ("paired", steadiest when the load drifts), each engine's median of figure
    over its same-run ceiling, and the load average."""
    trees = {"old": old_tree, "new": new_tree}
    runs: dict[str, list[dict[str, float]]] = {"old": [{} for _ in range(rounds)],
                                               "new": [{} for _ in range(rounds)]}  # fmt: skip
    loads: list[float] = []
    t0 = time.perf_counter()
    for r in range(rounds):
        for case in range(len(CASES)):
            for which in ("new", "old") if (r + case) % 2 == 0 else ("old", "new"):
                res = run_child(trees[which], case)
                runs[which][r].update(res["figures"])
                loads += res["load1"]
        progress(f"round {r + 1}/{rounds} done at {time.perf_counter() - t0:.0f} s, "
                 f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    keys = list(runs["new"][0])
    med = {w: {k: statistics.median(x[k] for x in runs[w]) for k in keys} for w in runs}

    def paired(key: str) -> float | None:
        pairs = [n[key] / o[key] for n, o in zip(runs["new"], runs["old"], strict=True) if o[key]]
        return statistics.median(pairs) if pairs else None

    vs_ceil = {w: {key: statistics.median(x[key] / x[ceil] for x in runs[w])
                   for _label, key, ceil in ROWS if ceil}
               for w in runs}  # fmt: skip
    return {"old": med["old"], "new": med["new"],
            "ratio": {k: med["new"][k] / med["old"][k] if med["old"][k] else None for k in keys},
            "paired": {k: paired(k) for k in keys}, "vs_ceiling": vs_ceil,
            "load1": [min(loads), statistics.median(loads), max(loads)],
            "rounds": rounds, "runs": runs}  # fmt: skip


def _fmt(x: float) -> str:
    """Three significant digits or more: 0.612, 12.3, 1,234."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def table(result: dict[str, Any]) -> str:
    """Markdown table of a compare() result. "x ceiling": median over that engine's runs
    of figure / same-run ceiling; the ceiling column: median over both engines' runs."""
    old, new, ratio, vs = result["old"], result["new"], result["ratio"], result["vs_ceiling"]

    def ceil(key: str) -> float:
        return statistics.median(x[key] for w in ("old", "new") for x in result["runs"][w])

    lines = ["| case | old | new | new/old | paired new/old | ceiling, same runs "
             "| old x ceiling | new x ceiling |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, key, ceil_key in ROWS:
        row = (f"| {label} | {_fmt(old[key])} | {_fmt(new[key])} | {ratio[key]:.2f} "
               f"| {result['paired'][key]:.2f} |")  # fmt: skip
        if ceil_key:
            row += f" {_fmt(ceil(ceil_key))} | {vs['old'][key]:.2f} | {vs['new'][key]:.2f} |"
        else:
            row += " - | | |"
        lines.append(row)
    for label, key in EXTRA_CEILINGS:
        lines.append(f"| ceiling: {label} | | | | | {_fmt(ceil(key))} | | |")
    lines += ["", "| case | fsync+fdatasync per op, old | new | write+pwrite per op, old | new |",
              "|---|---|---|---|---|"]  # fmt: skip
    for key in (k[: -len("_syncs_per_op")] for k in new if k.endswith("_syncs_per_op")):
        s, w = f"{key}_syncs_per_op", f"{key}_writes_per_op"
        lines.append(f"| {key} | {old[s]:.2f} | {new[s]:.2f} | {old[w]:.2f} | {new[w]:.2f} |")
    lo, mid, hi = result["load1"]
    lines.append(f"\n{result['rounds']} rounds per engine, medians; 1-min load average "
                 f"{lo:.1f} / {mid:.1f} / {hi:.1f} (min / median / max over the runs)")
    return "\n".join(lines)


def build_old_tree(commit: str, dest: str) -> str:
    """Extract `commit` of this repository into `dest` and build its native extension
    there with this interpreter; returns `dest`."""
    tar = subprocess.run(["git", "-C", REPO, "archive", "--format=tar", commit],
                         check=True, capture_output=True).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        tf.extractall(dest, filter="data")
    subprocess.run([sys.executable, "native/build_native.py"], cwd=dest, check=True,
                   capture_output=True)  # fmt: skip
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-tree", help="source tree of the old engine, native extension built")
    ap.add_argument("--old-commit", default=OLD_COMMIT,
                    help="without --old-tree: build this commit in a scratch dir")
    ap.add_argument("--new-tree", default=REPO, help="default: this repository")
    ap.add_argument("--rounds", type=int, default=5, help="measurements per case and engine")
    ap.add_argument("--json", help="write every figure of every child here")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    with tempfile.TemporaryDirectory(prefix="nxbench-old-") as tmp:
        old = args.old_tree or build_old_tree(args.old_commit, tmp)
        result = compare(os.path.abspath(old), os.path.abspath(args.new_tree), args.rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(table(result))


if __name__ == "__main__":
    main()
