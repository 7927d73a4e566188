"""What issue 11's integrity machinery costs (run: pytest benchmarks/bench_integrity_cost.py
--benchmark-only -s).

Measurements, not pass/fail tests. a-e measure the current engine with the cases of
integrity_cost.py, each next to its ceiling measured in the same run (conftest.report)
and the 1-minute load average:
a. 4 KiB write + flush at queue depth 1: p50/p99 latency and IOPS, vs appending 4 KiB
   pwrite + fdatasync (and the same plus a watermark pwrite);
b. snapshot create at 1,000 and 100,000 mapped 4 KiB blocks, vs a SQLite commit with
   synchronous=FULL (and the same plus a 32-byte pwrite + fdatasync);
c. clone create (100,000 blocks), same ceilings;
d. sequential 1 MiB write + flush each, vs os.write 1 MiB + fdatasync each;
e. close + open of a cluster with 10 vDisks (no ceiling).
f. runs `integrity_cost.py` itself: the same cases against the engine before issue 11
   (commit 1f92998, or the built tree in NXSTORE_OLD_TREE) in child processes alternating
   with this tree, case by case, NXSTORE_IC_ROUNDS rounds (default 5); reports new/old.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from _util import scratch_dir
from conftest import report
from integrity_cost import (
    OLD_COMMIT,
    ROWS,
    SEQ_BYTES,
    CloneCreate,
    CloseOpen,
    SeqWriteFlush,
    SnapshotCreate,
    WriteFlushQD1,
    build_old_tree,
    compare,
    drive,
    table,
)


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    with scratch_dir("integrity") as path:
        yield path


def _load() -> float:
    return os.getloadavg()[0]


def test_a_write_flush_qd1(benchmark, root: str) -> None:
    case = WriteFlushQD1(root)
    f = drive(case, benchmark)
    report(benchmark, "a 4 KiB write+flush QD1 (16 KiB blocks)", case.ops, "IOPS",
           f["ceil_append_iops"], "appending 4 KiB pwrite+fdatasync QD1", **f,
           load1=_load())  # fmt: skip


@pytest.mark.parametrize("nblocks", [1_000, 100_000])
def test_b_snapshot_create(benchmark, root: str, nblocks: int) -> None:
    f = drive(SnapshotCreate(root, nblocks), benchmark)
    report(benchmark, f"b snapshot create, {nblocks:,} mapped 4 KiB blocks", 1, "ops/s",
           1e3 / f["ceil_sqlite_ms"], "SQLite commit, WAL, synchronous=FULL", **f,
           load1=_load())  # fmt: skip


def test_c_clone_create(benchmark, root: str) -> None:
    f = drive(CloneCreate(root), benchmark)
    report(benchmark, "c clone create, 100,000 mapped 4 KiB blocks", 1, "ops/s",
           1e3 / f["ceil_sqlite_ms_clone"], "SQLite commit, WAL, synchronous=FULL", **f,
           load1=_load())  # fmt: skip


def test_d_seq_write_flush(benchmark, root: str) -> None:
    f = drive(SeqWriteFlush(root), benchmark)
    report(benchmark, "d seq 1 MiB write+flush each (16 KiB blocks)", SEQ_BYTES, "MB/s",
           f["ceil_seq_each_MBps"], "os.write 1 MiB + fdatasync each", **f,
           load1=_load())  # fmt: skip


def test_e_close_open(benchmark, root: str) -> None:
    f = drive(CloseOpen(root), benchmark)
    report(benchmark, "e close+open, 10 vDisks", 1, "ops/s", **f, load1=_load())


def test_f_old_vs_new(benchmark) -> None:
    rounds = int(os.environ.get("NXSTORE_IC_ROUNDS", "5"))
    out: dict[str, object] = {}

    def run() -> None:
        old = os.environ.get("NXSTORE_OLD_TREE")
        with tempfile.TemporaryDirectory(prefix="nxbench-old-") as tmp:
            out.update(compare(old or build_old_tree(OLD_COMMIT, tmp), rounds=rounds))

    benchmark.pedantic(run, rounds=1, iterations=1)
    print("\n" + table(out))
    benchmark.extra_info["comparison"] = out  # every child's figures, in --benchmark-json
    paired = out["paired"]
    report(benchmark, "f new/old paired, 4 KiB write+flush QD1 p50", paired["wf_p50_us"], "x",
           seconds=1.0, **{f"new_over_old_{key}": paired[key] for _label, key, _c in ROWS},
           load1_median=out["load1"][1])  # fmt: skip
