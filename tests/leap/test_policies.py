"""Protection policies: definitions kept alike at their zones, validation, dynamic
membership through the Leap tick, the PD/policy conflict, migrate_pd_to_policy."""

from __future__ import annotations

from datetime import timedelta

import pytest
from leap_helpers import SECRET
from scenario import SIZE, build, disk_images, fill

from nxstore.errors import AlreadyExists, InUse, InvalidArgument, NotFound
from nxstore.leap import PolicySchedule

HOURLY = [PolicySchedule(every=3600, keep_local=2, keep_remote=2)]


def test_definition_reaches_the_recovery_zone_and_follows_updates(zones):
    ca, fr = build(zones, with_plan=False)
    assert fr.policy("ca-to-fr") == ca.policy("ca-to-fr")
    ca.update_policy("ca-to-fr", schedules=[PolicySchedule(every=7200, keep_local=5)])
    assert fr.policy("ca-to-fr").schedules[0].every == 7200
    assert fr.policy("ca-to-fr").version == 2
    ca.delete_policy("ca-to-fr")
    with pytest.raises(NotFound):
        fr.policy("ca-to-fr")


def test_a_zone_that_is_down_gets_the_definition_at_a_later_tick(zones):
    ca, fr = build(zones, with_plan=False)
    zones.down("france")
    ca.update_policy("ca-to-fr", schedules=[PolicySchedule(every=7200)])
    assert "france" in ca.leap_tick().errors[-1]
    fr = zones.add("france")
    assert fr.policy("ca-to-fr").version == 1
    assert not ca.leap_tick().errors
    assert fr.policy("ca-to-fr").version == 2


@pytest.mark.parametrize("kwargs, error, match", [
    ({"recovery": []}, InvalidArgument, "at least one recovery zone"),
    ({"recovery": ["canada"]}, InvalidArgument, "both primary and recovery"),
    ({"recovery": ["mars"]}, NotFound, "mars"),
    ({"schedules": []}, InvalidArgument, "at least one schedule"),
    ({"schedules": [PolicySchedule(every=1800)]}, InvalidArgument, "neither NearSync"),
    ({"schedules": [PolicySchedule(every=3600, keep_local=0)]}, InvalidArgument, "keep_local"),
    ({"schedules": [PolicySchedule(every=0)]}, InvalidArgument, "witness"),
    ({"categories": ["nokey:x"]}, NotFound, "nokey"),
    ({"categories": ["tier:gold"]}, InvalidArgument, "no value 'gold'"),
    ({"categories": ["tier"]}, InvalidArgument, "KEY:VALUE"),
    ({"categories": []}, InvalidArgument, "no category and no container"),
    ({"name": "bad/name"}, InvalidArgument, "'/'"),
])
def test_policy_validation(zones, kwargs, error, match):
    ca, _ = build(zones, with_plan=False)
    args = {"name": "p2", "primary": "canada", "recovery": ["france"], "schedules": HOURLY,
            "categories": ["tier:db"]}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ca.create_policy(**args)
    with pytest.raises(AlreadyExists):
        ca.create_policy("ca-to-fr", "canada", ["france"], HOURLY, ["tier:db"])


def test_membership_follows_categories_mid_schedule(zones, clock):
    ca, fr = build(zones, with_plan=False)
    ca.run_schedules()
    assert {pd.name for pd in ca.protection_domains()} == {"leap.db", "leap.web1", "leap.web2"}
    # a new VM gets the category: protected from the next tick on
    vd = ca.create_vdisk("app-os", SIZE)
    fill(vd, 5)
    ca.create_vm("app", vdisks=[vd], nics=[{"network": "VLAN50"}])
    assert ca.vm("app").protection_domain is None
    ca.vm("app").add_category("replicated-vm", "from-canada")
    clock.advance(3600)
    ca.run_schedules()
    assert ca.vm("app").protection_domain == "leap.app"
    assert [s.name for s in fr.protection_domain("leap.app").snapshots()]
    # web2 loses it: no longer protected, its recovery points stay (here and at france)
    kept_here = [s.name for s in ca.protection_domain("leap.web2").snapshots()]
    kept_there = [s.name for s in fr.protection_domain("leap.web2").snapshots()]
    ca.vm("web2").remove_category("replicated-vm")
    clock.advance(3600)
    ca.run_schedules()
    assert ca.vm("web2").protection_domain is None
    pd = ca.protection_domain("leap.web2")
    assert not pd.schedules() and not pd.entities()
    assert [s.name for s in pd.snapshots()] == kept_here
    assert [s.name for s in fr.protection_domain("leap.web2").snapshots()] == kept_there
    # and back: the same PD protects it again, its old points still there
    ca.vm("web2").add_category("replicated-vm", "from-canada")
    clock.advance(3600)
    ca.run_schedules()
    assert ca.vm("web2").protection_domain == "leap.web2"
    assert len(ca.protection_domain("leap.web2").snapshots()) == 3  # the 2 kept + 1 new


def test_retention_per_schedule(zones, clock):
    ca, fr = build(zones, with_plan=False)
    ca.update_policy("ca-to-fr", schedules=[PolicySchedule(every=3600, keep_local=2,
                                                           keep_remote=3)])
    for _ in range(6):
        ca.run_schedules()
        clock.advance(3600)
    assert len(ca.protection_domain("leap.db").snapshots()) == 2
    assert len(fr.protection_domain("leap.db").snapshots()) == 3


def test_vm_in_a_pd_cannot_also_be_in_a_policy(zones):
    ca, _ = build(zones, with_plan=False)
    ca.delete_policy("ca-to-fr")
    ca.create_protection_domain("pd-db", ["db"])
    with pytest.raises(InUse, match=r"VM 'db' is in protection domain 'pd-db'.*policy 'p'"):
        ca.create_policy("p", "canada", ["france"], HOURLY, ["tier:db"])
    # a VM that gets the category later is reported by the tick, and left in its PD
    ca.create_policy("p", "canada", ["france"], HOURLY, ["tier:web"])
    ca.vm("db").add_category("tier", "web")
    out = ca.leap_tick()
    assert any("'db'" in c and "pd-db" in c for c in out.conflicts)
    assert ca.vm("db").protection_domain == "pd-db"


def test_migrate_pd_to_policy_keeps_recovery_points(zones, clock):
    ca, fr = build(zones, with_plan=False)
    ca.delete_policy("ca-to-fr")
    pd = ca.create_protection_domain("pd-db", ["db"])
    pd.add_schedule(every=timedelta(hours=1), keep_local=5, keep_remote={"france": 5})
    ca.run_schedules()
    before = [s.name for s in pd.snapshots()]
    ca.vm("db").remove_category("replicated-vm")
    ca.create_policy("gold", "canada", ["france"], HOURLY, ["replicated-vm:from-canada"])
    ca.migrate_pd_to_policy("pd-db", "gold")
    assert ca.vm("db").categories["replicated-vm"] == "from-canada"
    clock.advance(3600)
    ca.run_schedules()
    assert ca.vm("db").protection_domain == "pd-db"
    names = [s.name for s in pd.snapshots()]
    assert names[0] == before[0] and len(names) == 2
    assert [(s.every, s.keep_local) for s in pd.schedules()] == [(timedelta(hours=1), 2)]
    assert disk_images(ca, "db") == [fr.vdisk("canada:" + n).read(0, SIZE)
                                     for n in ("db-os", "db-data")]
    with pytest.raises(InvalidArgument, match="zone 'canada'"):
        fr.migrate_pd_to_policy("pd-db", "gold")


def test_zones_pair_both_ways_and_refuse_removal_in_use(zones):
    ca, fr = build(zones, with_plan=False)
    assert [z.name for z in ca.zones()] == ["france"]
    assert [z.name for z in fr.zones()] == ["canada"]
    assert {s.name for s in fr.remote_sites()} == {"canada"}
    ca.connect_zone("france", zones.address("france"), SECRET)  # idempotent
    with pytest.raises(InUse, match="policy 'ca-to-fr'"):
        fr.remove_zone("canada")
    with pytest.raises(InvalidArgument, match="this site"):
        ca.connect_zone("canada", zones.address("france"), SECRET)
    ca.delete_policy("ca-to-fr")
    fr.remove_zone("canada")
    assert not fr.zones() and not ca.zones()


def test_pairing_an_unreachable_or_misnamed_zone_records_nothing(zones):
    ca, fr = zones.add("canada"), zones.add("france")
    with pytest.raises(InvalidArgument, match="called 'france'"):
        ca.connect_zone("uk", zones.address("france"), SECRET)
    assert not ca.zones() and not ca.remote_sites() and not fr.zones()
    zones.down("france")
    with pytest.raises(Exception, match="connect|refused"):
        ca.connect_zone("france", "127.0.0.1:1", SECRET)
    assert not ca.zones() and not ca.remote_sites()


def test_a_category_a_policy_or_plan_names_cannot_be_deleted(zones):
    ca, fr = build(zones)
    for key in ("replicated-vm", "tier"):
        for vm in ca.vms():
            vm.remove_category(key)
    with pytest.raises(InUse, match="protection policy 'ca-to-fr'"):
        ca.delete_category("replicated-vm")
    with pytest.raises(InUse, match="recovery plan 'ca-plan'"):
        ca.delete_category("tier")
    ca.delete_recovery_plan("ca-plan")
    ca.delete_category("tier")


def test_a_policy_protects_a_whole_container_including_later_vdisks(zones, clock):
    ca, fr = build(zones, with_plan=False)
    for c in (ca, fr):
        c.create_container("scratch")
    first = ca.create_vdisk("s1", SIZE, container="scratch")
    fill(first, 3)
    ca.update_policy("ca-to-fr", containers=["scratch"])
    ca.run_schedules()
    pd = ca.protection_domain("leap-container.scratch")
    assert pd.containers() == ["scratch"]
    assert fr.vdisk("canada:s1").read(0, SIZE) == first.read(0, SIZE)
    later = ca.create_vdisk("s2", SIZE, container="scratch")
    fill(later, 4)
    clock.advance(3600)
    ca.run_schedules()
    assert fr.vdisk("canada:s2").read(0, SIZE) == later.read(0, SIZE)
    ca.update_policy("ca-to-fr", containers=[])
    ca.leap_tick()
    assert not pd.containers() and not pd.schedules()
