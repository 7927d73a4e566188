"""NearSync benchmarks of issue 6 (run: pytest benchmarks/bench_nearsync.py --benchmark-only -s).

Measurements, not pass/fail tests (conftest.report). The source cluster runs in this process
(background drain on, default 16 KiB blocks); the remote is a real `nxstore serve` child
process on loopback (its own scheduler off). The source's schedules are run by a thread that
calls `Cluster.run_schedules()` every SCHEDULER_POLL_S, as `nxstore serve --schedule-interval`
would; the NearSync schedule runs every INTERVAL_S and ships at once.

1. RPO under load: a writer thread paces random 4-64 KiB writes (4 KiB aligned, incompressible)
   at WRITE_RATE (20 MB/s) with a flush every FLUSH_EVERY_S, while a sampler reads `pd.rpo()`
   (the age of the newest restore point the remote holds) every SAMPLE_EVERY_S. RPO_ROUNDS
   windows of RPO_WINDOW_S each (30 s in all at NXSTORE_BENCH_SCALE=1). Reported: p50 / p99 /
   max age, per window and pooled; target p99 < 3 s. Alongside, from the same run: the time
   each LWS took to ship and its bytes, and the floor interval + median ship time.
2. Bytes per LWS: one episode per round, shipped by a schedule run on a manual clock.
   "overwrite": HOT_BLOCKS distinct blocks each rewritten OVERWRITES times with new contents
   (full blocks); "unique": HOT_BLOCKS x OVERWRITES distinct blocks written once. Reported:
   bytes on the wire (frames both ways, the transport's counters) / bytes written, and / the
   distinct bytes the episode ends with; the timed call is the schedule run (ship).
3. Write-path cost: latency of 4 KiB random writes, each followed by flush, back to back for
   LAT_WINDOW_S per round, on a vDisk under a NearSync schedule (LWS every second, shipped) vs a cluster without NearSync;
   the plain round runs in the untimed setup right before each NearSync round, followed by a
   "markers only" round on the plain cluster (a thread calls `vd.lws()` every INTERVAL_S,
   nothing is shipped), which separates the marker from the shipping work in this process.
   Also the latency of `vd.lws()` itself.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import numpy as np
import pytest
from _repl_util import SECRET, TargetDaemon
from _util import SCALE, KiB, MiB, random_bytes, scaled, scratch_dir
from conftest import report

import nxstore
from nxstore.nearsync import shipping

VDISK_BYTES = scaled(1 << 30)          # the written vDisk (thin; random writes land anywhere)
WRITE_RATE = 20e6                      # bytes/s of the steady load (benchmark 1)
FLUSH_EVERY_S = 0.1                    # the load's periodic flush
INTERVAL_S = 1                         # NearSync schedule interval (the minimum)
SCHEDULER_POLL_S = 0.05                # how often the scheduler thread looks for due schedules
SAMPLE_EVERY_S = 0.1                   # RPO sampling period
RPO_ROUNDS = 3
RPO_WINDOW_S = max(3.0, 10.0 * SCALE)  # per round: 3 x 10 s = 30 s at scale 1
TARGET_P99_S = 3.0
HOT_BLOCKS = max(16, int(256 * SCALE))  # distinct blocks per episode (benchmark 2)
OVERWRITES = 16                        # writes of each hot block per episode
EPISODE_ROUNDS = 5
LAT_WINDOW_S = max(2.0, 5.0 * SCALE)   # per round and side: 4 KiB writes+flush (benchmark 3)
LAT_ROUNDS = 3
MARKERS = max(50, int(300 * SCALE))    # vd.lws() calls timed (benchmark 3)
POOL_BYTES = 64 * MiB                  # random data the writers slice from


def _pct(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else 0.0


class ManualClock:
    """A cluster clock that moves only when told (benchmark 2 runs schedules on it)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Site:
    """One remote cluster served by `nxstore serve` (a child process) on loopback."""

    def __init__(self, root: str) -> None:
        self.root = root
        path = os.path.join(root, "remote")
        nxstore.Cluster.create(path, site_name="remote").close()
        secret = os.path.join(root, "secret")
        with open(os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(SECRET)
        self.daemon = TargetDaemon(path, argv=[
            sys.executable, "-m", "nxstore.cli", "serve", path, "--listen", "127.0.0.1:0",
            "--secret-file", secret, "--schedule-interval", "0"])
        self.n = 0

    def source(self, **kwargs: object) -> tuple[nxstore.Cluster, nxstore.VDisk, object]:
        """A new source cluster with vDisk "vd" in PD "pd<n>", NearSync every INTERVAL_S to this
        remote, seeded (state `nearsync`) before it is returned: (cluster, vDisk, PD)."""
        self.n += 1
        c = nxstore.Cluster.create(os.path.join(self.root, f"src{self.n}"),
                                   site_name=f"src{self.n}", **kwargs)
        c.add_remote_site("remote", self.daemon.address, SECRET)
        vd = c.create_vdisk("vd", VDISK_BYTES)
        # One PD name per source: the remote tracks each PD's owner site.
        pd = c.create_protection_domain(f"pd{self.n}", entities=[vd])
        pd.add_schedule(every=timedelta(seconds=INTERVAL_S), keep_local=2,
                        keep_remote={"remote": 2})
        for _ in range(3):  # seeding: a plain snapshot, then seed snapshot + marker
            runs = c.run_schedules()
            if pd.replication_state().get("remote") and \
                    pd.replication_state()["remote"].state == "nearsync":
                return c, vd, pd
            assert all(r.ok for r in runs), [r.summary() for r in runs]
        raise AssertionError(f"not seeded: {pd.replication_state()}")

    def close(self) -> None:
        self.daemon.stop()


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with scratch_dir("nearsync") as root:
        s = Site(root)
        try:
            yield s
        finally:
            s.close()


@pytest.fixture
def shipments(monkeypatch: pytest.MonkeyPatch) -> list[shipping.Shipped]:
    """Every LWS shipped while the test runs (the driver's calls of shipping.ship, recorded)."""
    got: list[shipping.Shipped] = []
    real = shipping.ship

    def recording(*args: object, **kwargs: object) -> list[shipping.Shipped]:
        out = real(*args, **kwargs)  # type: ignore[arg-type]
        got.extend(out)
        return out

    monkeypatch.setattr(shipping, "ship", recording)
    return got


class Loop(threading.Thread):
    """Calls `step()` until stopped; `step` returns how long to wait before the next call."""

    def __init__(self, step: Callable[[], float]) -> None:
        super().__init__(daemon=True)
        self.step, self.halt = step, threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.wait(self.step()):
                pass
        except BaseException as exc:  # surfaced by stop(): a thread must not fail silently
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join()
        if self.error is not None:
            raise self.error


def scheduler(c: nxstore.Cluster, failed: list[str]) -> Loop:
    """The source's scheduler: due schedules every SCHEDULER_POLL_S; failures into `failed`."""

    def step() -> float:
        failed.extend(r.summary() for r in c.run_schedules() if not r.ok)
        return SCHEDULER_POLL_S

    return Loop(step)


class PacedWriter:
    """Random 4-64 KiB writes (4 KiB aligned, sliced from a random pool) at `rate` bytes/s,
    a flush every FLUSH_EVERY_S: the steady load of benchmark 1."""

    def __init__(self, vd: nxstore.VDisk, rate: float, seed: int) -> None:
        self.vd, self.rate = vd, rate
        self.rng = np.random.default_rng(seed)
        self.pool = random_bytes(POOL_BYTES, seed)
        self.written = 0
        self.start = self.next_flush = 0.0
        self.loop = Loop(self.step)

    def step(self) -> float:
        now = time.perf_counter()
        if not self.start:
            self.start, self.next_flush = now, now + FLUSH_EVERY_S
        ahead = self.written - self.rate * (now - self.start)
        if ahead > 0:
            return min(ahead / self.rate, FLUSH_EVERY_S)
        n = int(self.rng.integers(1, 17)) * 4 * KiB
        off = int(self.rng.integers(0, (VDISK_BYTES - n) // (4 * KiB) + 1)) * 4 * KiB
        src = int(self.rng.integers(0, POOL_BYTES - n))
        self.vd.write(off, self.pool[src:src + n])
        self.written += n
        if now >= self.next_flush:
            self.vd.flush()
            self.next_flush = now + FLUSH_EVERY_S
        return 0.0

    def mb_per_s(self) -> float:
        return self.written / (time.perf_counter() - self.start) / 1e6


# --- 1. RPO under a steady 20 MB/s random-write load ------------------------------------


def test_rpo_under_load(benchmark, site: Site, shipments: list[shipping.Shipped]) -> None:  # noqa: ANN001
    c, vd, pd = site.source()
    failed: list[str] = []
    windows: list[list[float]] = []
    rates: list[float] = []

    def window() -> None:
        ages: list[float] = []

        def sample() -> float:
            age = pd.rpo()["remote"]
            ages.append(float("inf") if age is None else age)
            return SAMPLE_EVERY_S

        writer = PacedWriter(vd, WRITE_RATE, seed=len(windows) + 1)
        threads = [scheduler(c, failed), writer.loop, Loop(sample)]
        for t in threads:
            t.start()
        time.sleep(RPO_WINDOW_S)
        rates.append(writer.mb_per_s())
        for t in threads:
            t.stop()
        windows.append(ages)

    try:
        benchmark.pedantic(window, rounds=RPO_ROUNDS, iterations=1)
        state = pd.replication_state()["remote"].state
    finally:
        c.close()
    assert not failed, failed[:3]
    assert state == "nearsync", state
    ages = [a for w in windows for a in w]
    ship_s = [s.seconds for s in shipments]
    p99 = _pct(ages, 99)
    floor = INTERVAL_S + statistics.median(ship_s)
    report(benchmark, f"N1 RPO p99, LWS every {INTERVAL_S} s under {WRITE_RATE / 1e6:.0f} MB/s "
           "random writes", p99, "s", ceiling=floor,
           ceiling_label="floor: interval + median ship time", seconds=1,
           p50=_pct(ages, 50), max=max(ages), samples=len(ages),
           p50_per_window=[round(_pct(w, 50), 2) for w in windows],
           p99_per_window=[round(_pct(w, 99), 2) for w in windows],
           write_mb_s=[round(r, 1) for r in rates], lws_shipped=len(shipments),
           ship_s_p50=statistics.median(ship_s), ship_s_p99=_pct(ship_s, 99),
           mb_written_per_lws=statistics.median(s.bytes_written for s in shipments) / 1e6,
           wire_per_written=sum(s.bytes_on_wire for s in shipments)
           / max(1, sum(s.bytes_written for s in shipments)),
           target_met=p99 < TARGET_P99_S)


# --- 2. bytes shipped per LWS vs bytes written in the episode ---------------------------


@pytest.mark.parametrize("case", ["overwrite", "unique"])
def test_bytes_per_lws(benchmark, site: Site, shipments: list[shipping.Shipped],  # noqa: ANN001
                       case: str) -> None:
    clock = ManualClock()
    c, vd, pd = site.source(clock=clock)
    bs = c.block_size
    rng = np.random.default_rng(7)
    distinct = HOT_BLOCKS if case == "overwrite" else HOT_BLOCKS * OVERWRITES
    rounds: list[tuple[int, int]] = []   # (bytes written, distinct bytes) per episode

    def setup() -> None:
        shipments.clear()
        blocks = rng.choice(VDISK_BYTES // bs, size=distinct, replace=False)
        data = random_bytes(HOT_BLOCKS * OVERWRITES * bs, int(rng.integers(1 << 30)))
        rows = data.reshape(-1, bs)
        # overwrite: pass k writes every hot block with its k-th new contents.
        order = np.tile(blocks, OVERWRITES) if case == "overwrite" else blocks
        for b, row in zip(order.tolist(), rows, strict=True):
            vd.write(b * bs, row)
        vd.flush()
        rounds.append((data.nbytes, distinct * bs))
        clock.now += INTERVAL_S

    def ship() -> None:
        runs = c.run_schedules()
        assert runs and all(r.ok for r in runs), [r.summary() for r in runs]

    try:
        benchmark.pedantic(ship, setup=setup, rounds=EPISODE_ROUNDS, iterations=1)
    finally:
        c.close()
    # The last round's shipment: one LWS carrying exactly that round's episode.
    assert len(shipments) == 1, shipments
    last = shipments[0]
    written, final = rounds[-1]
    assert last.bytes_written == written and last.bytes_payload == final, (last, written, final)
    report(benchmark, f"N2 bytes per LWS, {case} ({written / MiB:.1f} MiB written, "
           f"{final / MiB:.1f} MiB distinct)", written, "MB/s",
           wire_per_written=last.bytes_on_wire / written,
           wire_per_distinct=last.bytes_on_wire / final,
           bytes_on_wire=last.bytes_on_wire, blocks_sent=last.blocks_sent,
           ship_s=last.seconds)


# --- 3. cost of LWS markers on the write path --------------------------------------------


def _write_flush_latencies(vd: nxstore.VDisk, seconds: float, rng: np.random.Generator,
                           pool: np.ndarray) -> np.ndarray:
    """Seconds of each 4 KiB random write + flush(), back to back for `seconds`."""
    out: list[float] = []
    deadline = time.perf_counter() + seconds
    while True:
        off = int(rng.integers(0, VDISK_BYTES // (4 * KiB))) * 4 * KiB
        src = int(rng.integers(0, POOL_BYTES - 4 * KiB))
        t0 = time.perf_counter()
        vd.write(off, pool[src:src + 4 * KiB])
        vd.flush()
        t1 = time.perf_counter()
        out.append(t1 - t0)
        if t1 >= deadline:
            return np.array(out)


def test_marker_cost_on_write_path(benchmark, site: Site) -> None:  # noqa: ANN001
    c, vd, _ = site.source()
    plain = nxstore.Cluster.create(os.path.join(site.root, "plain"))
    pvd = plain.create_vdisk("vd", VDISK_BYTES)
    rng = np.random.default_rng(11)
    pool = random_bytes(POOL_BYTES, 11)
    on: list[np.ndarray] = []
    off: list[np.ndarray] = []
    marked: list[np.ndarray] = []  # markers only: vd.lws() every INTERVAL_S, nothing shipped
    failed: list[str] = []

    def mark() -> float:
        pvd.lws()
        return INTERVAL_S

    def setup() -> None:
        off.append(_write_flush_latencies(pvd, LAT_WINDOW_S, rng, pool))
        marker = Loop(mark)
        marker.start()
        try:
            marked.append(_write_flush_latencies(pvd, LAT_WINDOW_S, rng, pool))
        finally:
            marker.stop()

    def measure() -> None:
        sched = scheduler(c, failed)
        sched.start()
        try:
            on.append(_write_flush_latencies(vd, LAT_WINDOW_S, rng, pool))
        finally:
            sched.stop()

    try:
        benchmark.pedantic(measure, setup=setup, rounds=LAT_ROUNDS, iterations=1)
        marker = np.empty(MARKERS)
        for i in range(MARKERS):
            t0 = time.perf_counter()
            pvd.lws()
            marker[i] = time.perf_counter() - t0
    finally:
        c.close()
        plain.close()
    assert not failed, failed[:3]
    ms = lambda a, q: round(_pct(a, q) * 1e3, 3)  # noqa: E731
    all_on, all_off, all_marked = np.concatenate(on), np.concatenate(off), np.concatenate(marked)
    report(benchmark, "N3 4 KiB write+flush p99 latency with NearSync (LWS every 1 s)",
           _pct(all_on, 99) * 1e3, "ms", ceiling=_pct(all_off, 99) * 1e3,
           ceiling_label="without NearSync, same run", seconds=1,
           p50_on_ms=ms(all_on, 50), p50_off_ms=ms(all_off, 50),
           p99_on_per_round=[ms(a, 99) for a in on], p99_off_per_round=[ms(a, 99) for a in off],
           p50_on_per_round=[ms(a, 50) for a in on], p50_off_per_round=[ms(a, 50) for a in off],
           p50_markers_only_ms=ms(all_marked, 50), p99_markers_only_ms=ms(all_marked, 99),
           p99_markers_only_per_round=[ms(a, 99) for a in marked],
           max_on_ms=ms(all_on, 100), max_off_ms=ms(all_off, 100),
           writes_on=all_on.size, writes_off=all_off.size, lws_call_p50_ms=ms(marker, 50), lws_call_p99_ms=ms(marker, 99))
