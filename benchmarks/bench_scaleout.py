"""Scale-out benchmarks of issue 18, the S3 half (run: pytest benchmarks/bench_scaleout.py
--benchmark-only -s).

Measurements with the peer timed in the same run, interleaved: every round runs the local
back end in the untimed pedantic setup right before the S3 back end's timed call, so both
see the same machine load (reported: the 1-minute load average). The S3 server is a real
SeaweedFS (`weed mini`, tests/s3server.py) on 127.0.0.1 with a temporary data directory,
sharing the machine's cores with nxstore. Sizes scale with NXSTORE_BENCH_SCALE.

S1. ingest: SEQ_BYTES of unique incompressible data in 1 MiB writes + flush into a fresh
    cluster (16 KiB blocks) on S3 (64 MiB groups, each uploaded with a conditional put by
    the store's uploader thread once sealed and synced) vs the same into a local cluster,
    timed (a) until flush returns: everything durable on the local disk, at most
    S3_UPLOAD_PENDING_GROUPS sealed groups still to upload, and (b) until every sealed
    group is on S3 (`ExtentStore.wait_uploaded`), reported with the server's own ceiling in
    the same run (plain boto3 PUTs of group-sized objects). Target: >= 0.5 x local.
S2. read: the ingested vDisk read back sequentially in 1 MiB calls, (a) warm, every group
    in the read cache, vs the local cluster (target: >= 0.8 x local), and (b) cold: the
    cache emptied and the cluster reopened, every group fetched with ranged GETs (reported
    against the same local figure; no target); (c) SPARSE_READS and RANDOM_READS random
    16 KiB reads on an empty cache (the cluster's open included): a cold read fetches only the chunks
    (extent_remote.PART_CHUNK_BYTES) its records lie in; the same run with the chunk set to
    the group size is what fetching whole groups costs (reported with the bytes fetched).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _util import Fresh, KiB, MiB, read_all, scaled, scratch_dir, timed, unique_blocks, write_all
from conftest import report

import nxstore
from nxstore.constants import EXTENT_CACHE_DIR, EXTENT_DIR, EXTENT_GROUP_BYTES
from nxstore.store import extent_remote

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from s3server import BUCKET, SeaweedServer  # noqa: E402

SEQ_BYTES = scaled(256 * MiB)
ROUNDS = 5
RANDOM_READS = 200  # dense: most chunks of every group
SPARSE_READS = 8  # sparse: a few chunks of each group


@pytest.fixture(scope="module")
def s3() -> Iterator[SeaweedServer]:
    server = SeaweedServer().start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    with scratch_dir("scaleout") as path:
        yield path


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return unique_blocks(SEQ_BYTES, 16 * KiB, seed=18)


class _S3Fresh(Fresh):
    """Fresh clusters on S3, each under its own prefix."""

    def __init__(self, root: str, server: SeaweedServer) -> None:
        super().__init__(root, block_size=16 * KiB, background=False)
        self.server = server

    def new(self) -> nxstore.Cluster:
        self.kwargs.update(extent_store=f"s3://{BUCKET}/bench-{uuid.uuid4().hex[:12]}",
                           s3_endpoint=self.server.endpoint)  # fmt: skip
        return super().new()


def _ingest(c: nxstore.Cluster, data: np.ndarray) -> nxstore.VDisk:
    vd = c.create_vdisk("seq", SEQ_BYTES)
    write_all(vd, data, MiB)
    vd.flush()
    return vd


@pytest.mark.parametrize("until", ["flushed", "uploaded"])
def test_s1_ingest_s3_vs_local(benchmark, s3, root, data, until) -> None:  # noqa: ANN001
    local = Fresh(os.path.join(root, f"l-{until}"), 16 * KiB, background=False)
    remote = _S3Fresh(os.path.join(root, f"s-{until}"), s3)
    os.makedirs(local.root)
    os.makedirs(remote.root)
    local_s: list[float] = []
    made: list[nxstore.Cluster] = []

    def setup() -> None:
        remote.discard()  # the last round's uploads finish before anything is timed
        c = local.new()
        local_s.append(timed(lambda: _ingest(c, data)))
        local.discard()
        made[:] = [remote.new()]

    def run() -> None:
        _ingest(made[0], data)
        if until == "uploaded":
            made[0].ctx.store.wait_uploaded()

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    c = remote.cluster
    assert c is not None and c.vdisk("seq").read(SEQ_BYTES - MiB, MiB) == data[-MiB:].tobytes()
    uploaded = len(c.ctx.store._remote.sizes)
    remote.discard()
    what = ("flush returned (sealed groups durable locally, uploads in the background)"
            if until == "flushed" else "flush + every sealed group on S3")  # fmt: skip
    extra = {}
    if until == "uploaded":  # the server's own ceiling: plain PUTs of group-sized objects
        client, body = s3.client(), data[:EXTENT_GROUP_BYTES].tobytes()
        puts = max(1, SEQ_BYTES // len(body))
        put_s = timed(lambda: [client.put_object(Bucket=BUCKET, Key=f"ceiling/{i}", Body=body)
                               for i in range(puts)])  # fmt: skip
        extra["server_put_MBps"] = round(puts * len(body) / put_s / 1e6, 1)
    report(benchmark, f"S1 seq ingest 1 MiB writes, S3 back end, until {what}", SEQ_BYTES,
           "MB/s", SEQ_BYTES / float(np.median(local_s)) / 1e6, "local back end, same run",
           target_ratio=0.5, groups_on_s3_at_end=uploaded, load1=os.getloadavg()[0],
           **extra)  # fmt: skip


def _local_and_s3(root: str, name: str, s3: SeaweedServer, data: np.ndarray) -> tuple[str, str]:
    """Paths of two new clusters holding `data` in vDisk "seq": local, and on S3."""
    lpath, spath = os.path.join(root, f"l-{name}"), os.path.join(root, f"s-{name}")
    with nxstore.Cluster.create(lpath, block_size=16 * KiB, background=False) as c:
        _ingest(c, data)
    with nxstore.Cluster.create(spath, block_size=16 * KiB, background=False,
                                extent_store=f"s3://{BUCKET}/bench-{name}-{uuid.uuid4().hex[:8]}",
                                s3_endpoint=s3.endpoint) as c:  # fmt: skip
        _ingest(c, data)
    return lpath, spath


def test_s2_read_s3_vs_local(benchmark, s3, root, data) -> None:  # noqa: ANN001
    lpath, spath = _local_and_s3(root, "read", s3, data)
    lc = nxstore.Cluster.open(lpath, background=False)
    sc = nxstore.Cluster.open(spath, background=False)
    try:
        read_all(lc.vdisk("seq"), SEQ_BYTES)  # warm both: page cache, read cache
        read_all(sc.vdisk("seq"), SEQ_BYTES)
        local_s: list[float] = []

        def setup() -> None:
            local_s.append(timed(lambda: read_all(lc.vdisk("seq"), SEQ_BYTES)))

        benchmark.pedantic(lambda: read_all(sc.vdisk("seq"), SEQ_BYTES), setup=setup,
                           rounds=ROUNDS, iterations=1)  # fmt: skip
        local_mbps = SEQ_BYTES / float(np.median(local_s)) / 1e6
        report(benchmark, "S2a seq read 1 MiB, S3 back end, groups in the read cache",
               SEQ_BYTES, "MB/s", local_mbps, "local back end, same run", target_ratio=0.8,
               load1=os.getloadavg()[0])  # fmt: skip
        sc.close()
        cold: dict[str, list[float]] = {"chunks": [], "whole groups": []}
        fetched = {}
        modes = [("chunks", extent_remote.PART_CHUNK_BYTES),
                 ("whole groups", EXTENT_GROUP_BYTES)]  # (what a cold read fetched before)
        for r in range(4):  # an empty cache each time; the first mode of a round runs slower
            for how, chunk in modes[:: 1 if r % 2 else -1]:
                shutil.rmtree(os.path.join(spath, EXTENT_DIR, EXTENT_CACHE_DIR))
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(extent_remote, "PART_CHUNK_BYTES", chunk)
                    sc = nxstore.Cluster.open(spath, background=False)
                    cold[how].append(timed(lambda sc=sc: read_all(sc.vdisk("seq"), SEQ_BYTES)))
                    fetched[how] = sc.ctx.store._remote.fetches
                    sc.close()
        for how, times in cold.items():
            report(benchmark, f"S2b seq read 1 MiB, S3 back end, empty cache, fetching {how}",
                   SEQ_BYTES, "MB/s", local_mbps, "local back end, same run",
                   seconds=float(np.median(times)), fetch_calls=fetched[how],
                   load1=os.getloadavg()[0])  # fmt: skip
    finally:
        lc.close()
        sc.close()


@pytest.mark.parametrize("reads", [SPARSE_READS, RANDOM_READS])
@pytest.mark.parametrize("fetch", ["chunks", "whole groups"])
def test_s2c_cold_random_reads(benchmark, s3, root, data, fetch, reads, monkeypatch) -> None:  # noqa: ANN001
    if fetch == "whole groups":  # what a cold read fetched before chunks: its whole group
        monkeypatch.setattr(extent_remote, "PART_CHUNK_BYTES", EXTENT_GROUP_BYTES)
    lpath, spath = _local_and_s3(root, f"cold-{fetch}-{reads}".replace(" ", "-"), s3, data)
    blocks = np.random.default_rng(5).integers(0, SEQ_BYTES // (16 * KiB), reads)
    offsets = (blocks * 16 * KiB).tolist()
    with nxstore.Cluster.open(lpath, background=False) as lc:
        read_all(lc.vdisk("seq"), SEQ_BYTES)  # in the page cache
        local_s = timed(lambda: [lc.vdisk("seq").read(o, 16 * KiB) for o in offsets])
    fetched: list[int] = []

    def setup() -> None:
        shutil.rmtree(os.path.join(spath, EXTENT_DIR, EXTENT_CACHE_DIR))

    def run() -> None:
        with nxstore.Cluster.open(spath, background=False) as sc:
            vd = sc.vdisk("seq")
            for o in offsets:
                vd.read(o, 16 * KiB)
            fetched.append(sc.ctx.store._remote.fetched_bytes)

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    report(benchmark, f"S2c {reads} random 16 KiB reads (open included), S3 back end, "
           f"empty cache, fetching {fetch}", reads, "reads/s", reads / local_s,
           "local back end (page cache), same run", fetched_bytes=int(np.median(fetched)),
           load1=os.getloadavg()[0])  # fmt: skip
