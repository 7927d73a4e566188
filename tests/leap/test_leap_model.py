"""A hypothesis state machine over Leap: category changes, writes, schedule ticks, test
failovers, planned and unplanned failovers and reversals, against a model of which VM
runs where, which is protected, and what its newest recovery point at the recovery zone
holds.

Two served zones (leap_helpers) share one fake clock; a policy protects the VMs with
category dr:yes from the primary zone to the other hourly, and a recovery plan brings up
the VMs with dr:yes. After every rule: every VM is registered at exactly the zone the
model says, reads what was last written to it, and (after a tick) is protected exactly when
the model says so, with its newest recovery point at the recovery zone reading what the VM
read at that tick.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from leap_helpers import BS, SECRET, Zones

from nxstore.leap import NetworkMapping, PolicySchedule, Stage

SIZE = 8 * BS
VMS = ("v0", "v1", "v2")
ZONES = ("east", "west")


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class LeapModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="nxstore-leap-model-")
        self.clock = _Clock()
        self.zones = Zones(self.root, self.clock)
        east = self.zones.add("east")
        self.zones.add("west")
        east.connect_zone("west", self.zones.address("west"), SECRET)
        east.create_category("dr", ["yes"])
        self.primary = "east"                   # the policy's and plan's primary zone
        self.where = dict.fromkeys(VMS, "east")  # the zone each VM runs at
        self.data = {}                           # what each VM reads
        self.tagged = dict.fromkeys(VMS, False)  # carries dr:yes
        self.protected: set[str] = set()         # tagged at the primary at the last tick
        self.point: dict[str, bytes] = {}        # newest recovery point at the other zone
        self.point_tagged: dict[str, bool] = {}  # the VM's dr:yes in that point
        self.test_up = False
        for i, vm in enumerate(VMS):
            vd = east.create_vdisk(f"{vm}-disk", SIZE)
            self.data[vm] = self._write(vd, i)
            east.create_vm(vm, vdisks=[vd], nics=[{"network": "E-LAN"}])
        east.create_policy("dr", "east", ["west"], [PolicySchedule(every=3600)], ["dr:yes"])
        east.create_recovery_plan("dr-plan", "east", "west", [Stage(categories=(("dr", "yes"),))],
                                  [NetworkMapping("E-LAN", "W-LAN", "E-TEST", "W-TEST")])

    def c(self, zone: str):
        return self.zones.served[zone].cluster

    @property
    def recovery(self) -> str:
        return ZONES[1 - ZONES.index(self.primary)]

    @staticmethod
    def _write(vd, seed: int) -> bytes:
        vd.write((seed % 8) * BS, seed.to_bytes(8, "little") * (BS // 8))
        return vd.read(0, SIZE)

    def _plan_vms(self) -> list[str]:
        """The VMs a failover moves: protected as of the last tick (a category change
        takes effect at the next tick) and running at the primary."""
        return [v for v in VMS if v in self.protected and self.where[v] == self.primary]

    def _movable(self) -> bool:
        """A failover moves the plan's VMs: each needs a recovery point at the recovery zone."""
        vms = self._plan_vms()
        return bool(vms) and all(v in self.point for v in vms) and not self.test_up

    # -- rules ------------------------------------------------------------------------------
    @rule(vm=st.sampled_from(VMS))
    def toggle_category(self, vm: str) -> None:
        c = self.c(self.where[vm])
        if self.tagged[vm]:
            c.vm(vm).remove_category("dr")
        else:
            if not any(k.key == "dr" for k in c.categories()):
                c.create_category("dr", ["yes"])
            c.vm(vm).add_category("dr", "yes")
        self.tagged[vm] = not self.tagged[vm]

    @rule(vm=st.sampled_from(VMS), seed=st.integers(1, 1000))
    def write(self, vm: str, seed: int) -> None:
        self.data[vm] = self._write(self.c(self.where[vm]).vm(vm).vdisks[0], seed)

    @rule()
    def tick(self) -> None:
        self.clock.now += 3600
        for zone in ZONES:
            self.c(zone).run_schedules()
        self.protected = {v for v in VMS if self.tagged[v] and self.where[v] == self.primary}
        for vm in self.protected:
            self.point[vm] = self.data[vm]
            self.point_tagged[vm] = self.tagged[vm]

    @precondition(lambda self: self._movable())
    @rule()
    def test_failover_and_cleanup(self) -> None:
        plan = self.c(self.recovery).recovery_plan("dr-plan")
        report = plan.test_failover()
        assert report.ok, report
        for vm in self._plan_vms():
            test_vm = self.c(self.recovery).vm(f"dr-plan-test-{vm}")
            assert test_vm.vdisks[0].read(0, SIZE) == self.point[vm]
        assert plan.cleanup_test().ok

    @precondition(lambda self: self._movable())
    @rule()
    def planned_failover(self) -> None:
        moved = self._plan_vms()
        report = self.c(self.recovery).recovery_plan("dr-plan").planned_failover()
        assert report.ok, report
        self._moved(moved, lose=False)

    @precondition(lambda self: self._movable())
    @rule()
    def unplanned_failover(self) -> None:
        moved = self._plan_vms()
        old = self.primary
        for vm in moved:  # written after the last tick: lost with the primary
            self.data[vm] = self._write(self.c(old).vm(vm).vdisks[0], 4242)
        self.zones.down(old)
        report = self.c(self.recovery).recovery_plan("dr-plan").unplanned_failover()
        assert report.ok, report
        # The old primary comes back, still thinking it owns the PDs: the reverse and the
        # tick that follow (replication the other way) make it demote itself.
        self.zones.add(old)
        self._moved(moved, lose=True)

    def _moved(self, vms: list[str], lose: bool) -> None:
        for vm in vms:
            self.where[vm] = self.recovery
            if lose:  # the VM comes back as it was at the point, categories included
                self.data[vm] = self.point[vm]
                self.tagged[vm] = self.point_tagged[vm]
            self.point.pop(vm, None)
        assert self.c(self.recovery).recovery_plan("dr-plan").reverse().ok
        self.primary = self.recovery
        self.tick()  # replicate back the other way; a returning old primary demotes itself

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def vms_are_where_the_model_says(self) -> None:
        for zone in ZONES:
            c = self.c(zone)
            here = {v.name for v in c.vms()} & set(VMS)
            assert here == {v for v in VMS if self.where[v] == zone}, (zone, here, self.where)
            for vm in here:
                assert c.vm(vm).vdisks[0].read(0, SIZE) == self.data[vm], vm
                assert c.vm(vm).power_state == "on" or zone == "east"

    @invariant()
    def protection_follows_categories(self) -> None:
        c = self.c(self.primary)
        for vm in VMS:
            if vm not in self.protected or self.where[vm] != self.primary:
                continue
            assert c.vm(vm).protection_domain is not None, vm
            rc = self.c(self.recovery)
            newest = rc.protection_domain(f"leap.{vm}").snapshots()[-1]
            replica = next(r for r in rc.replicas()
                           if r.source_vdisk == c.vm(vm).vdisk_names[0])
            snap = next(s for s in replica.snapshots if s.name == newest.name)
            assert snap.read(0, SIZE) == self.point[vm], vm

    def teardown(self) -> None:
        self.zones.close()
        shutil.rmtree(self.root, ignore_errors=True)


# Each example opens and serves two clusters: 20 runs in `make test`, 200 with
# NXSTORE_TORTURE=1 (`make torture`).
TORTURE = os.environ.get("NXSTORE_TORTURE") == "1"
TestLeapModel = LeapModel.TestCase
TestLeapModel.settings = settings(max_examples=200 if TORTURE else 20, stateful_step_count=25,
                                  deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])
