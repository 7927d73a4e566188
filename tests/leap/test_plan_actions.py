"""Recovery plans end to end in one process: two served zones on one fake clock, the
seed's scenario (scenario.py): test failover and cleanup, planned failover, reverse,
unplanned failover with the primary gone, failback. At every step the VMs' data is
byte-identical to the expected point and they power on in stage order on mapped
networks."""

from __future__ import annotations

import pytest
from scenario import VMS, build, disk_images, fill

from nxstore.errors import InvalidArgument


def _powered(report) -> list[str]:
    """The VMs the report powered on, in order."""
    return [s.name.split(": ", 1)[1] for s in report.steps
            if s.name.startswith("stage ") and ": " in s.name and s.detail.startswith("on")]


@pytest.mark.parametrize("every", [3600.0, 900.0], ids=["hourly", "nearsync-15min"])
def test_seed_scenario_round_trip(zones, clock, every):
    ca, fr = build(zones, schedule_every=every)
    ca.run_schedules()  # the Leap tick protects the three VMs; the first slot runs now
    assert {pd.name for pd in ca.protection_domains()} == {"leap.db", "leap.web1", "leap.web2"}
    point1 = {vm: disk_images(ca, vm) for vm in VMS}
    plan = fr.recovery_plan("ca-plan")
    assert plan.validate().ok

    # test failover: clones on the test network, production untouched
    for vm in VMS:
        fill(ca.vm(vm).vdisks[0], 99, [1])  # production keeps changing meanwhile
    report = plan.test_failover()
    assert report.ok, report
    assert _powered(report) == ["ca-plan-test-db", "ca-plan-test-web1", "ca-plan-test-web2"]
    for vm in VMS:
        test_vm = fr.vm(f"ca-plan-test-{vm}")
        assert test_vm.power_state == "on" and test_vm.nics == [{"network": "FR-VLAN51"}]
        assert disk_images(fr, test_vm.name) == point1[vm]
    assert plan.last_failover_status == "Succeeded"
    with pytest.raises(InvalidArgument, match="cleanup_test"):
        plan.test_failover()
    assert plan.cleanup_test().ok
    assert not [v for v in fr.vms()]
    assert not [vd for vd in fr.vdisks() if vd.name.startswith("ca-plan-test-")]
    assert ca.vm("db").power_state == "on"

    # planned failover: no data loss (writes after the last schedule run arrive too)
    latest = {vm: disk_images(ca, vm) for vm in VMS}
    report = plan.planned_failover()
    assert report.ok, report
    assert _powered(report) == ["db", "web1", "web2"]
    assert not ca.vms()
    for vm in VMS:
        assert fr.vm(vm).power_state == "on"
        assert fr.vm(vm).nics == [{"network": "FR-VLAN50"}]
        assert disk_images(fr, vm) == latest[vm]

    # reverse: france is primary now and replicates to canada
    assert plan.reverse().ok
    assert fr.policy("ca-to-fr").primary == "france"
    assert ca.policy("ca-to-fr").primary == "france"
    assert ca.recovery_plan("ca-plan").spec.recovery == "canada"
    clock.advance(3600)
    for vm in VMS:
        fill(fr.vm(vm).vdisks[0], 7, [2, 5])
    fr.run_schedules()
    replicated = {vm: disk_images(fr, vm) for vm in VMS}

    # unplanned failover to canada: france is gone; canada comes up from what it holds
    for vm in VMS:
        fill(fr.vm(vm).vdisks[0], 8, [4])  # lost with france
    zones.down("france")
    back = ca.recovery_plan("ca-plan")
    report = back.unplanned_failover()
    assert report.ok, report
    assert _powered(report) == ["db", "web1", "web2"]
    for vm in VMS:
        assert ca.vm(vm).nics == [{"network": "VLAN50"}]
        assert disk_images(ca, vm) == replicated[vm]

    # failback: reverse at canada, france returns, planned failover run at france
    assert back.reverse().ok
    fr = zones.add("france")
    clock.advance(3600)
    ca.run_schedules()  # delivers the reversed definitions and replicates to france
    now = {vm: disk_images(ca, vm) for vm in VMS}
    report = fr.recovery_plan("ca-plan").planned_failover()
    assert report.ok, report
    for vm in VMS:
        assert fr.vm(vm).power_state == "on"
        assert fr.vm(vm).nics == [{"network": "FR-VLAN50"}]
        assert disk_images(fr, vm) == now[vm]
    assert not ca.vms()
