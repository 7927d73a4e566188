"""Leap recovery time benchmarks of issue 15 (run: pytest benchmarks/bench_leap.py
--benchmark-only -s).

Measurements, not pass/fail tests (conftest.report). Two zones, canada and france, are
real clusters served on loopback in this process (tests/leap/leap_helpers: each zone's
replication target on its own event-loop thread). Canada holds VMS VMs of two thin
VDISK_BYTES vDisks each (a few scattered blocks written), split over three categories;
policy "bench" protects them hourly to france; recovery plan "bench-plan" brings them up
in three stages of VMS/3 VMs (by category, stage delays 0), mapping one production and one
test network. One schedule pass seeds france. Then, from the moment the action is called to
the last VM powered on:

1. `test_failover()` at france (clones from the newest recovery points, test network),
   `cleanup_test()` untimed after each round. Peer in the same run: the bare work, each PD's
   `restore(mode="clone")` called directly (no plan).
2. `unplanned_failover()` at france with canada gone, a fresh pair of zones per round
   (untimed setup). Peer: each PD's `activate()` called directly on another fresh pair.
Target (issue): each under 5 s. The per-step breakdown (median over rounds, summed per
kind of step: validate, clone/activate, power on) is printed and stored.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from _util import KiB, scaled, scratch_dir
from conftest import report

sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "leap"))
from leap_helpers import SECRET, Zones  # noqa: E402

from nxstore.leap import NetworkMapping, PolicySchedule, Stage  # noqa: E402

VMS = 30
VDISKS_PER_VM = 2
VDISK_BYTES = scaled(1 << 30)
BLOCKS_WRITTEN = 8          # scattered 16 KiB writes per vDisk
ROUNDS = 3
TARGET_S = 5.0
TIERS = ("s1", "s2", "s3")


def _build(root: str) -> Zones:
    os.makedirs(root)
    z = Zones(root, time.time)
    ca = z.add("canada")
    z.add("france")
    ca.connect_zone("france", z.address("france"), SECRET)
    ca.create_category("tier", list(TIERS))
    payload = os.urandom(16 * KiB)
    for i in range(VMS):
        vds = []
        for j in range(VDISKS_PER_VM):
            vd = ca.create_vdisk(f"vm{i:02d}-d{j}", VDISK_BYTES)
            for k in range(BLOCKS_WRITTEN):
                vd.write(((k * 7919 + i * 31 + j) % (VDISK_BYTES // (16 * KiB))) * 16 * KiB,
                         payload)
            vds.append(vd)
        ca.create_vm(f"vm{i:02d}", vdisks=vds, nics=[{"network": "VLAN50"}])
        ca.vm(f"vm{i:02d}").add_category("tier", TIERS[i * len(TIERS) // VMS])
    ca.create_policy("bench", "canada", ["france"], [PolicySchedule(every=3600)],
                     categories=[f"tier:{t}" for t in TIERS])
    ca.create_recovery_plan("bench-plan", "canada", "france",
                            [Stage(categories=(("tier", t),)) for t in TIERS],
                            [NetworkMapping("VLAN50", "FR-VLAN50", "VLAN51", "FR-VLAN51")])
    ca.run_schedules()
    return z


@pytest.fixture
def fresh_zones() -> Iterator[callable]:
    """make() -> a freshly built pair of zones under a scratch dir (all closed at the end)."""
    with scratch_dir("nxstore-bench-leap-") as root:
        made: list[Zones] = []

        def make() -> Zones:
            z = _build(os.path.join(root, str(len(made))))
            made.append(z)
            return z

        yield make
        for z in made:
            z.close()


def _breakdown(reports: list) -> dict[str, float]:
    """Median over rounds of the seconds spent per kind of step."""
    per_round = []
    for r in reports:
        kinds: dict[str, float] = defaultdict(float)
        for s in r.steps:
            kind = ("power on" if s.name.startswith("stage ") else s.name.split(" ")[0])
            kinds[kind] += s.seconds
        per_round.append(kinds)
    keys = sorted({k for r in per_round for k in r})
    return {k: statistics.median(r.get(k, 0.0) for r in per_round) for k in keys}


def _report(benchmark, title: str, reports: list, peer: str, peer_times: list[float]) -> None:  # noqa: ANN001
    """The RTO (median seconds) against the target, the peer's median and the per-step
    breakdown."""
    parts = _breakdown(reports)
    print(f"\n[bench] {title} per step: " +
          ", ".join(f"{k} {v:.3f} s" for k, v in parts.items()))
    report(benchmark, f"{title} RTO, {VMS} VMs x {VDISKS_PER_VM} vDisks of "
           f"{VDISK_BYTES >> 30} GiB in 3 stages", benchmark.stats.stats.median, "s",
           ceiling=TARGET_S, ceiling_label="target", seconds=1,
           **{peer: statistics.median(peer_times)}, load=os.getloadavg()[0],
           **{f"step_{k.replace(' ', '_')}_s": v for k, v in parts.items()})


def test_test_failover_rto(benchmark, fresh_zones) -> None:  # noqa: ANN001
    z = fresh_zones()
    fr = z.served["france"].cluster
    plan = fr.recovery_plan("bench-plan")
    reports = []

    def run() -> None:
        r = plan.test_failover()
        assert r.ok, r
        reports.append(r)

    def cleanup() -> None:
        if reports:
            plan.cleanup_test()

    benchmark.pedantic(run, setup=cleanup, rounds=ROUNDS, iterations=1)
    plan.cleanup_test()
    bare = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for pd in fr.protection_domains():
            pd.restore(pd.snapshots()[-1], mode="clone", prefix="bare-")
        bare.append(time.perf_counter() - t0)
        for vm in [v.name for v in fr.vms() if v.name.startswith("bare-")]:
            fr.delete_vm(vm)
    _report(benchmark, "L1 test_failover", reports, "bare_clone_s", bare)


def test_unplanned_failover_rto(benchmark, fresh_zones) -> None:  # noqa: ANN001
    reports = []
    state: dict[str, Zones] = {}

    def setup() -> None:
        state["z"] = z = fresh_zones()
        z.down("canada")

    def run() -> None:
        r = state["z"].served["france"].cluster.recovery_plan("bench-plan").unplanned_failover()
        assert r.ok, r
        reports.append(r)

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    bare = []
    for _ in range(ROUNDS):
        setup()
        fr = state["z"].served["france"].cluster
        t0 = time.perf_counter()
        for pd in fr.protection_domains():
            fr.activate(pd.name)
        bare.append(time.perf_counter() - t0)
    _report(benchmark, "L2 unplanned_failover", reports, "bare_activate_s", bare)
