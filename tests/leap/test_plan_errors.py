"""Recovery plans when things are wrong: every validation problem at once, a plan naming a
zone that is down, a hook that fails (the plan stops there and a re-run resumes), actions
run at the wrong zone, bad definitions."""

from __future__ import annotations

import os
import stat

import pytest
from scenario import NETWORKS, STAGES, build

from nxstore.errors import InvalidArgument, NotFound
from nxstore.leap import NetworkMapping, Stage


def test_validate_reports_every_problem_at_once(zones):
    ca, fr = build(zones, with_plan=False)
    ca.create_category("orphan", ["x"])
    ca.create_recovery_plan("bad", "canada", "france",
                            [Stage(vms=("db", "ghost")), Stage(categories=(("orphan", "x"),))],
                            [NetworkMapping("VLAN99", "FR-VLAN99")])
    report = fr.recovery_plan("bad").validate()  # nothing replicated yet either
    assert report.status == "Failed: validate"
    text = "\n".join(report.problems)
    assert "VM 'ghost' is not protected to zone 'france'" in text
    assert "VM 'db' is not protected to zone 'france'" in text  # no tick ran yet
    assert "category orphan:x matches no VM" in text
    ca.run_schedules()
    report = fr.recovery_plan("bad").validate()
    text = "\n".join(report.problems)
    assert "network 'VLAN50' has no production network mapped" in text
    assert "VM 'db' is not protected" not in text and "ghost" in text
    assert fr.recovery_plan("bad").last_failover_status == "Failed: validate"


def test_no_recovery_point_yet_and_zone_down(zones):
    ca, fr = build(zones)
    ca.leap_tick()  # PDs made, but nothing replicated: the schedules have not run
    ca.protection_domain("leap.db").snapshot()  # a local point only
    report = fr.recovery_plan("ca-plan").validate()
    assert any("no recovery point" in p or "not protected" in p for p in report.problems)
    ca.run_schedules()
    zones.down("canada")
    report = fr.recovery_plan("ca-plan").validate()
    assert report.ok  # the primary being down does not block an unplanned failover...
    assert any("zone 'canada' is down" in p for p in report.problems)
    report = fr.recovery_plan("ca-plan").planned_failover()  # ...but a planned one
    assert report.status == "Failed: validate"
    assert not fr.vms()


def test_a_failing_hook_stops_the_plan_and_a_rerun_resumes(zones, tmp_path):
    ca, fr = build(zones)
    ca.run_schedules()
    hook = tmp_path / "hook.sh"
    flag = tmp_path / "ok"
    hook.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/calls\n[ -e {flag} ] || "
                    "{ echo db not ready >&2; exit 3; }\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    stages = [Stage(vms=("db",), hook=str(hook)), Stage(categories=(("tier", "web"),))]
    ca.recovery_plan("ca-plan").update(stages=stages)
    plan = fr.recovery_plan("ca-plan")
    report = plan.unplanned_failover()  # canada still answers: activate refuses...
    assert report.status.startswith("Failed: activate leap.db")
    zones.down("canada")
    seen = []  # the progress callback gets each step as it ends, the failed one too
    report = plan.unplanned_failover(progress=seen.append)
    assert report.status == "Failed: stage 1: hook"
    assert seen == report.steps and seen[-1].status == "failed"
    assert "db not ready" in report.steps[-1].detail
    assert fr.vm("db").power_state == "on"
    assert fr.vm("web1").power_state == "off"  # the plan stopped before stage 2
    flag.touch()
    seen.clear()
    report = plan.unplanned_failover(progress=seen.append)
    assert report.ok, report
    assert seen == report.steps and [s.name for s in seen][0] == "validate"
    assert [s.detail for s in report.steps if s.name.startswith("activate")] == [
        "skipped: already active here"] * 3
    assert fr.vm("web1").power_state == "on"
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[-1] == "ca-plan unplanned_failover db"


def test_callable_hook_stay_off_and_stage_delay(zones):
    ca, fr = build(zones)
    ca.run_schedules()
    slept: list[float] = []
    seen: list[list[str]] = []
    ca.recovery_plan("ca-plan").update(
        stages=[Stage(vms=("db",)), Stage(vms=("web2", "web1"), delay=30)], stay_off=["web1"])
    plan = fr.recovery_plan("ca-plan")
    plan.set_hook(2, lambda vms: seen.append([v.name for v in vms]))
    from nxstore.leap import recovery

    report = recovery.test_failover(fr._protection(), "ca-plan", None, fr._leap.hooks,
                                    sleep=slept.append)
    assert report.ok, report
    assert slept == [30.0]
    assert seen == [["ca-plan-test-web2", "ca-plan-test-web1"]]
    assert fr.vm("ca-plan-test-web1").power_state == "off"
    assert fr.vm("ca-plan-test-web2").power_state == "on"
    with pytest.raises(InvalidArgument, match="no stage 3"):
        plan.set_hook(3, print)


def test_actions_run_at_the_recovery_zone_only(zones):
    ca, fr = build(zones)
    with pytest.raises(InvalidArgument, match="recovery zone 'france'"):
        ca.recovery_plan("ca-plan").planned_failover()
    with pytest.raises(InvalidArgument, match="fail over before reversing"):
        fr.recovery_plan("ca-plan").reverse()
    with pytest.raises(NotFound):
        fr.recovery_plan("nope")


@pytest.mark.parametrize("kwargs, match", [
    ({"recovery": "canada"}, "both 'canada'"),
    ({"stages": []}, "at least one stage"),
    ({"stages": [Stage()]}, "names no VM and no category"),
    ({"stages": [Stage(vms=("db",)), Stage(vms=("db",))]}, "more than one place"),
    ({"stages": [Stage(vms=("db",), delay=-1)]}, "delay"),
    ({"networks": NETWORKS * 2}, "maps a primary network twice"),
])
def test_plan_validation(zones, kwargs, match):
    ca, _ = build(zones, with_plan=False)
    args = {"name": "p", "primary": "canada", "recovery": "france", "stages": STAGES,
            "networks": NETWORKS}
    args.update(kwargs)
    with pytest.raises(InvalidArgument, match=match):
        ca.create_recovery_plan(**args)
    assert not os.path.exists(zones.path("nothing"))
