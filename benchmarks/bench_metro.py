"""Metro mirror benchmarks of issue 14 (run: pytest benchmarks/bench_metro.py --benchmark-only -s).

Measurements, not pass/fail tests (conftest.report). The active cluster runs in this process
(default 16 KiB blocks, background drain on) with two vDisks: "metro", mirrored by a
`MirrorLink` + `LinkMirror` (nxstore.metro.mirror) to a standby cluster served by a child
process on loopback (a ReplicationTarget with the mirror applier registered), and "local",
the same vDisk without a mirror. Both are measured in the same run, alternating rounds; the
loopback round trip is measured on the link itself (PING/PONG through both sides' transport)
before and after each benchmark.

1. QD1: back-to-back 4 KiB random writes (4 KiB aligned, incompressible), each followed by
   `flush()`, for LAT_WINDOW_S per round and side: latency p50/p99 and IOPS. Target (issue):
   Metro p50 <= local p50 + 2 round trips.
2. 16 threads, each doing 4 KiB random write + flush back to back for LAT_WINDOW_S: IOPS
   and latency; barriers sent per flush (group commit). Target: Metro IOPS >= 50% of local.
3. Sequential 1 MiB writes with a flush every 64 MiB, SEQ_BYTES per round: MB/s. Target:
   Metro >= 50% of local.
4. Resync after a break, with the whole Metro stack in real processes (two `nxstore serve`
   sites and a witness, tests/metro/harness.World, every link behind a counting proxy): a PD
   of one RESYNC_BYTES vDisk goes synchronous, the link is cut, the active site breaks and
   writes 1% of the blocks (incompressible, 8-block runs at random offsets), the link comes
   back and the automatic delta resync runs. Bytes the active sent to the standby from the
   heal to synchronous / (changed blocks x block size): target <= 1.1; and its time.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from _repl_util import SECRET, TargetDaemon
from _util import SCALE, KiB, MiB, random_bytes, scaled, scratch_dir, unique_blocks
from conftest import report

import nxstore
from nxstore.metro.mirror import LinkMirror, MirrorLink
from nxstore.replication.sites import get_site

VDISK_BYTES = scaled(1 << 30)          # each vDisk (thin; random writes land anywhere)
LAT_WINDOW_S = max(2.0, 5.0 * SCALE)   # per round and side (benchmarks 1 and 2)
ROUNDS = 3
THREADS = 16
SEQ_BYTES = scaled(256 * MiB, 64 * MiB)  # per round and side (benchmark 3)
FLUSH_EVERY = 64 * MiB
POOL_BYTES = 64 * MiB
RTT_PINGS = 50

# The standby: a cluster served like `nxstore serve` does, with the mirror applier
# registered (the Metro controller's accept is not needed here: every session is taken).
_STANDBY = """
import asyncio, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
import nxstore
from nxstore.metro.applier import Grant
from nxstore.metro.mirror import register
from nxstore.replication.auth import SiteIdentity
from nxstore.replication.protocols import TargetProtocols
from nxstore.replication.target import ReplicationTarget
from nxstore.replication.transport import serve

async def main(path, secret):
    with nxstore.Cluster.open(path) as c:
        protocols = TargetProtocols()
        c.attach(protocols)
        register(protocols, c, lambda cl, site, m: Grant({i: c.vdisk(v.replica)
                                                         for i, v in enumerate(m.vdisks)}))
        srv = await serve("127.0.0.1", 0, ReplicationTarget(c).handle,
                          identity=SiteIdentity(c.id, c.site_name), secret=secret)
        print(f"serving site {c.site_name} (cluster {c.id}) on 127.0.0.1:{srv.port}",
              file=sys.stderr, flush=True)
        await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else 0.0


class Env:
    """The active cluster, its "metro" and "local" vDisks, the standby daemon, the link."""

    def __init__(self, root: str) -> None:
        standby_path = os.path.join(root, "standby")
        nxstore.Cluster.create(standby_path, site_name="standby").close()
        self.daemon = TargetDaemon(standby_path,
                                   argv=[sys.executable, "-c", _STANDBY, standby_path, SECRET])
        self.c = nxstore.Cluster.create(os.path.join(root, "active"), site_name="active")
        self.c.add_remote_site("standby", self.daemon.address, SECRET)
        metro = self.c.create_vdisk("metro", VDISK_BYTES)
        self.c.create_vdisk("local", VDISK_BYTES)
        self.c.replicate(metro.snapshot("seed"), "standby")
        self.link = MirrorLink(self.c, get_site(self.c.ctx.catalog, "standby"), "bench", 1,
                               {"metro": "active:metro"})
        self.link.open()
        self.c.set_mirror("metro", LinkMirror(self.link))
        self.pool = random_bytes(POOL_BYTES, 7)
        self.rtts: list[float] = []

    def rtt(self) -> float:
        """Median of RTT_PINGS round trips on the idle link (also kept in `rtts`)."""
        got = [self.link.rtt() for _ in range(RTT_PINGS)]
        self.rtts += got
        return float(np.median(got))

    def close(self) -> None:
        try:
            self.link.close()
            self.c.close()
        finally:
            self.daemon.stop()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with scratch_dir("metro") as root:
        e = Env(root)
        try:
            yield e
        finally:
            e.close()


def _writer(env: Env, name: str, seed: int, until: float, lat: list[float]) -> None:
    """4 KiB random writes + flush on vDisk `name` until `until`; latencies into `lat`."""
    vd = env.c.vdisk(name)
    rng = np.random.default_rng(seed)
    blocks = VDISK_BYTES // (4 * KiB)
    while (now := time.perf_counter()) < until:
        off = int(rng.integers(0, blocks)) * 4 * KiB
        src = int(rng.integers(0, POOL_BYTES - 4 * KiB))
        vd.write(off, env.pool[src: src + 4 * KiB])
        vd.flush()
        lat.append(time.perf_counter() - now)


def _run_writers(env: Env, name: str, threads: int, seed: int) -> list[float]:
    """`threads` writers on `name` for LAT_WINDOW_S; their latencies, all together."""
    until = time.perf_counter() + LAT_WINDOW_S
    lats: list[list[float]] = [[] for _ in range(threads)]
    workers = [threading.Thread(target=_writer, args=(env, name, seed + i, until, lats[i]))
               for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return [x for lat in lats for x in lat]


def _paired(benchmark, env: Env, threads: int) -> tuple[list[list[float]], list[list[float]], int, int]:  # noqa: ANN001
    """ROUNDS rounds: local in the untimed setup, then Metro (timed). Returns the latencies
    per round of each side, and the flushes and barriers of the Metro rounds."""
    local: list[list[float]] = []
    metro: list[list[float]] = []
    counts = [0, 0]

    def setup() -> None:
        local.append(_run_writers(env, "local", threads, 100 * len(local)))

    def measure() -> None:
        before = env.link.barriers
        metro.append(_run_writers(env, "metro", threads, 1000 + 100 * len(metro)))
        counts[0] += len(metro[-1])
        counts[1] += env.link.barriers - before

    benchmark.pedantic(measure, setup=setup, rounds=ROUNDS, iterations=1)
    return local, metro, counts[0], counts[1]


def _summary(benchmark, label: str, env: Env, threads: int, rtt_before: float) -> None:  # noqa: ANN001
    local, metro, flushes, barriers = _paired(benchmark, env, threads)
    rtt = float(np.median([rtt_before, env.rtt()]))
    all_l = [x for r in local for x in r]
    all_m = [x for r in metro for x in r]
    iops_l = len(all_l) / (ROUNDS * LAT_WINDOW_S)
    iops_m = len(all_m) / (ROUNDS * LAT_WINDOW_S)
    ms: Callable[[list[float], float], float] = lambda v, q: _pct(v, q) * 1e3  # noqa: E731
    report(benchmark, f"{label}: Metro IOPS", iops_m, "IOPS", ceiling=iops_l,
           ceiling_label="local IOPS, same run", seconds=1,
           p50_metro_ms=ms(all_m, 50), p50_local_ms=ms(all_l, 50),
           p99_metro_ms=ms(all_m, 99), p99_local_ms=ms(all_l, 99),
           rtt_ms=rtt * 1e3, p50_over_local_in_rtts=(_pct(all_m, 50) - _pct(all_l, 50)) / rtt,
           barriers_per_flush=barriers / max(1, flushes),
           rounds_metro_p50_ms=[round(ms(r, 50), 3) for r in metro],
           rounds_local_p50_ms=[round(ms(r, 50), 3) for r in local])


# --- 1. QD1 ------------------------------------------------------------------------------------
def test_qd1_write_flush_latency(benchmark, env: Env) -> None:  # noqa: ANN001
    _summary(benchmark, "M1 4 KiB write+flush, QD1", env, 1, env.rtt())


# --- 2. 16 threads -------------------------------------------------------------------------------
def test_16_threads_write_flush(benchmark, env: Env) -> None:  # noqa: ANN001
    _summary(benchmark, f"M2 4 KiB write+flush, {THREADS} threads", env, THREADS, env.rtt())


# --- 3. sequential 1 MiB writes ------------------------------------------------------------------
def _sequential(env: Env, name: str, seed: int) -> float:
    """Seconds to write SEQ_BYTES of new data (no block of it stored before) to `name` in
    1 MiB writes, flushing every FLUSH_EVERY."""
    vd = env.c.vdisk(name)
    data = memoryview(unique_blocks(SEQ_BYTES, env.c.block_size, seed))
    started = time.perf_counter()
    for off in range(0, SEQ_BYTES, MiB):
        vd.write(off % VDISK_BYTES, data[off: off + MiB])
        if (off + MiB) % FLUSH_EVERY == 0:
            vd.flush()
    vd.flush()
    return time.perf_counter() - started


def test_sequential_1mib_writes(benchmark, env: Env) -> None:  # noqa: ANN001
    rtt = env.rtt()
    local: list[float] = []
    metro: list[float] = []
    benchmark.pedantic(lambda: metro.append(_sequential(env, "metro", 100 + len(metro))),
                       setup=lambda: local.append(_sequential(env, "local", 200 + len(local))),
                       rounds=ROUNDS, iterations=1)
    rate_l = SEQ_BYTES / float(np.median(local)) / 1e6
    rate_m = SEQ_BYTES / float(np.median(metro))
    report(benchmark, "M3 sequential 1 MiB writes, flush every 64 MiB: Metro", rate_m, "MB/s",
           ceiling=rate_l, ceiling_label="local, same run", seconds=1,
           rtt_ms=float(np.median([rtt, env.rtt()])) * 1e3,
           rounds_metro_s=[round(x, 3) for x in metro], rounds_local_s=[round(x, 3) for x in local])


# --- 4. resync after a break -----------------------------------------------------------------
RESYNC_BYTES = scaled(256 * MiB, 64 * MiB)
RESYNC_RUN_BLOCKS = 8


def _status(site) -> dict:  # noqa: ANN001
    import json

    return json.loads(site.nx("pd", "metro", "status", site.path, "pd", "--json").stdout)


def _until(site, pred: Callable[[dict], bool], what: str, timeout: float = 300.0) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = _status(site)
        if pred(s):
            return s
        time.sleep(0.05)
    raise AssertionError(f"never {what}: {s}")


def test_resync_after_break(benchmark) -> None:  # noqa: ANN001
    from pathlib import Path

    here = os.path.dirname(os.path.abspath(__file__))
    for sub in ("tests", "tests/metro", "tests/replication"):  # the tests' process harness
        sys.path.insert(0, os.path.join(here, "..", sub))
    from harness import World

    with scratch_dir("metro-resync") as scratch:
        _resync(benchmark, World(Path(scratch), block_size=4096))


def _resync(benchmark, world) -> None:  # noqa: ANN001
    from sites_helper import NXSTORE

    root = world.root
    try:
        w = world.start_process(
            "w", [*NXSTORE, "witness", "--listen", "127.0.0.1:0", "--secret-file",
                  str(world.secret_file), "--data", str(root / "witness")],
            r"on 127\.0\.0\.1:(?P<port>\d+)")
        a = world.site("a")
        world.site("b")
        world.connect("a", "b")
        a.nx("vdisk", "create", a.path, "db", RESYNC_BYTES)
        fill = a.scratch_file("fill")
        for off in range(0, RESYNC_BYTES, 64 * MiB):  # a full, incompressible disk
            fill.write_bytes(random_bytes(min(64 * MiB, RESYNC_BYTES - off), off).tobytes())
            a.nx("vdisk", "write", a.path, "db", off, fill, timeout=600)
        a.nx("pd", "create", a.path, "pd", "db")
        started = time.perf_counter()
        a.nx("pd", "metro", "enable", a.path, "pd", "b", "--witness",
             world.link("a", "w").address, "--peer-witness", world.link("b", "w").address,
             "--witness-secret-file", str(world.secret_file), "--break-timeout", "2",
             "--rtt-limit", "0.5", timeout=900)
        seed_s = time.perf_counter() - started
        _until(a, lambda s: s["state"] == "synchronous", "synchronous")
        link = world.link("a", "b")
        link.set_mode("drop")
        world.link("b", "a").set_mode("drop")
        bs = world.block_size
        blocks = RESYNC_BYTES // bs
        runs = max(1, blocks // 100 // RESYNC_RUN_BLOCKS)
        rng = np.random.default_rng(14)
        starts = rng.choice(blocks // RESYNC_RUN_BLOCKS, runs, replace=False) * RESYNC_RUN_BLOCKS
        piece = a.scratch_file("piece")
        for i, blk in enumerate(starts.tolist()):
            piece.write_bytes(os.urandom(RESYNC_RUN_BLOCKS * bs))
            a.nx("vdisk", "write", a.path, "db", blk * bs, piece, timeout=120)
            if i == 0:  # the first write waited for the break
                assert _status(a)["state"] == "broken"
        changed = runs * RESYNC_RUN_BLOCKS
        dirty = _status(a)["dirty_blocks"]
        sent_before = link.passed("up")
        healed = {}

        def resync() -> None:
            t0 = time.perf_counter()
            link.set_mode("pass")
            world.link("b", "a").set_mode("pass")
            _until(a, lambda s: s["state"] == "synchronous", "synchronous again")
            healed["s"] = time.perf_counter() - t0

        benchmark.pedantic(resync, rounds=1, iterations=1)
        sent = link.passed("up") - sent_before
        same = a.read("db") == world["b"].read("a:db")
        assert same, "the replica differs after the resync"
        report(benchmark, "M4 resync after a break, 1% of blocks changed: bytes sent per "
               "changed byte", sent / (changed * bs), "x", seconds=1,
               changed_blocks=changed, dirty_blocks_reported=dirty, bytes_sent=sent,
               resync_s=healed["s"], vdisk_bytes=RESYNC_BYTES, seed_s=seed_s,
               resync_mb_per_s=changed * bs / healed["s"] / 1e6, witness=w.name)
    finally:
        world.close()
