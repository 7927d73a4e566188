"""A zone of several clusters: zone paris groups sites paris-a and paris-b, london is a
one-cluster zone. Policies name zone + cluster, replication lands at the named cluster
only, a plan fails over to it and reverses; ambiguous and unknown clusters and removing
what is in use are refused; definitions and zones of the previous version still read."""

from __future__ import annotations

import pytest
from leap_helpers import SECRET
from scenario import SIZE, fill

from nxstore.errors import InUse, InvalidArgument, NotFound
from nxstore.leap import NetworkMapping, PolicySchedule, Stage, definitions
from nxstore.leap.rows import ZoneRow

HOURLY = [PolicySchedule(every=3600, keep_local=2, keep_remote=2)]


def _paris(zones):
    lo, pa, pb = (zones.add(n) for n in ("london", "paris-a", "paris-b"))
    lo.connect_zone("paris", zones.address("paris-a"), SECRET, cluster="paris-a")
    lo.connect_zone("paris", zones.address("paris-b"), SECRET, cluster="paris-b")
    pa.connect_zone("paris", zones.address("paris-b"), SECRET, cluster="paris-b")  # fellows
    return lo, pa, pb


def _app(c) -> bytes:
    c.create_category("dr", ["paris"])
    vd = c.create_vdisk("app-os", SIZE)
    fill(vd, 7)
    c.create_vm("app", vdisks=[vd], nics=[{"network": "LAN"}])
    c.vm("app").add_category("dr", "paris")
    return vd.read(0, SIZE)


def test_a_zone_groups_clusters_paired_both_ways(zones):
    lo, pa, pb = _paris(zones)
    (paris,) = lo.zones()
    assert (paris.name, paris.cluster_names, paris.local) == ("paris", ("paris-a", "paris-b"),
                                                              False)
    assert [m.address for m in paris.clusters] == [zones.address("paris-a"),
                                                   zones.address("paris-b")]
    for c in (pa, pb):
        assert c.local_zone().name == "paris"
        assert c.local_zone().cluster_names == ("paris-a", "paris-b")
        assert [(z.name, z.cluster_names) for z in c.zones()] == [("london", ("london",))]
    assert lo.local_zone().cluster_names == ("london",)
    assert lo.zone_up("paris") == "" and lo.zone_up("paris", "paris-b") == ""
    with pytest.raises(InvalidArgument, match="is a member of zone 'paris'"):
        pa.connect_zone("elsewhere", zones.address("paris-b"), SECRET, cluster="paris-b")
    rome = zones.add("rome")
    with pytest.raises(InvalidArgument, match="site 'paris-b' is a member of zone 'paris', "
                                              "not 'milan'"):
        rome.connect_zone("milan", zones.address("paris-b"), SECRET, cluster="paris-b")
    assert not rome.zones() and not rome.remote_sites()


def test_policy_names_zone_and_cluster_and_replicates_there_only(zones, clock):
    lo, pa, pb = _paris(zones)
    data = _app(lo)
    with pytest.raises(InvalidArgument, match=r"zone 'paris' has clusters paris-a, paris-b: "
                                              r"say which one as paris/CLUSTER"):
        lo.create_policy("to-b", "london", ["paris"], HOURLY, ["dr:paris"])
    with pytest.raises(InvalidArgument, match=r"cluster 'paris-c' is not a member of zone "
                                              r"'paris' \(members: paris-a, paris-b\)"):
        lo.create_policy("to-b", "london", ["paris/paris-c"], HOURLY, ["dr:paris"])
    with pytest.raises(InvalidArgument, match="zone 'paris' has clusters"):
        pa.create_policy("back", "paris", ["london"], HOURLY, ["dr:paris"])
    with pytest.raises(NotFound, match="no availability zone 'rome'"):
        lo.create_policy("to-b", "london", ["rome/x"], HOURLY, ["dr:paris"])
    policy = lo.create_policy("to-b", "london", [("paris", "paris-b")], HOURLY, ["dr:paris"])
    assert (policy.primary_cluster, policy.recovery, policy.recovery_clusters) == (
        "london", ("paris",), ("paris-b",))
    lo.create_recovery_plan("p", "london", "paris", [Stage(vms=("app",))],
                            [NetworkMapping("LAN", "PARIS-LAN")])
    for c in (pa, pb):  # definitions reach every cluster of the zone
        assert c.policy("to-b").recovery_clusters == ("paris-b",)
        assert c.recovery_plan("p").spec.recovery == "paris"
    lo.run_schedules()
    assert list(lo.protection_domain("leap.app").schedules()[0].keep_remote) == ["paris-b"]
    assert pb.protection_domain("leap.app").snapshots()
    assert "london:app-os" in {v.name for v in pb.vdisks()}
    assert "london:app-os" not in {v.name for v in pa.vdisks()}

    wrong = pa.recovery_plan("p").validate()
    assert not wrong.ok
    assert any("protects to cluster 'paris-b' of zone 'paris', not to this one" in p
               for p in wrong.problems), wrong.problems
    assert pb.recovery_plan("p").validate().ok
    spec = definitions.get_definition(lo._protection(), "policy", "to-b").spec
    gone = {**spec, "clusters": {"london": "london", "paris": "paris-z"}}
    definitions.receive(pb._protection(), "policy", "gone", gone, 1)  # a member since removed
    report = pb.recovery_plan("p").validate()
    assert not report.ok
    assert ("policy 'gone' names cluster 'paris-z' of zone 'paris', which is not a member of "
            "it here (members: paris-a, paris-b)") in report.problems, report.problems
    definitions.receive_drop(pb._protection(), "policy", "gone", 1)

    with pytest.raises(InUse, match="cluster 'paris-b' of zone 'paris' is used by policy "
                                    "'to-b'"):
        lo.remove_zone("paris", "paris-b")
    with pytest.raises(InUse, match="availability zone 'paris' is used by policy 'to-b', "
                                    "recovery plan 'p'"):
        lo.remove_zone("paris")
    with pytest.raises(InvalidArgument, match="this site's own zone"):
        pb.remove_zone("paris")
    with pytest.raises(InvalidArgument, match="not a member"):
        lo.remove_zone("paris", "paris-c")

    report = pb.recovery_plan("p").planned_failover()
    assert report.ok, report
    assert pb.vm("app").vdisks[0].read(0, SIZE) == data
    assert pb.vm("app").nics == [{"network": "PARIS-LAN"}]
    assert pb.vm("app").power_state == "on"
    assert pb.recovery_plan("p").reverse().ok
    for c in (lo, pa, pb):
        back = c.policy("to-b")
        assert (back.primary, back.primary_cluster, back.recovery_clusters) == (
            "paris", "paris-b", ("london",))
    clock.advance(3600)
    pb.run_schedules()
    assert lo.protection_domain("leap.app").snapshots()

    lo.remove_zone("paris", "paris-a")  # no policy names it: the plan keeps paris-b
    assert [z.cluster_names for z in lo.zones()] == [("paris-b",)]
    assert [z.name for z in pa.zones()] == []
    pc = zones.add("paris-c")  # a cluster joining later gets the definitions naming its zone
    lo.connect_zone("paris", zones.address("paris-c"), SECRET, cluster="paris-c")
    assert pc.policy("to-b").version == lo.policy("to-b").version == 2
    assert pc.recovery_plan("p").spec == lo.recovery_plan("p").spec
    zones.down("paris-b")  # the reversed plan's primary cluster
    report = lo.recovery_plan("p").validate()
    assert any(p.startswith("zone 'paris' is down (cluster 'paris-b'): ")
               for p in report.problems), report.problems


def test_definitions_and_zones_of_the_previous_version_read(zones):
    ca = zones.add("canada")
    zones.add("france")
    ca.connect_zone("france", zones.address("france"), SECRET)
    mgr = ca._protection()
    with mgr.lock, mgr.catalog.transaction():
        mgr.catalog.insert(ZoneRow(0, "uk", "cluster-uk", 1.0))  # as the previous version did
    assert [(z.name, z.cluster_names) for z in ca.zones()] == [("france", ("france",)),
                                                               ("uk", ("uk",))]
    assert not mgr.catalog.rows(ZoneRow)
    ca.create_category("dr", ["yes"])
    old = {"primary": "canada", "recovery": ["france"], "categories": [["dr", "yes"]],
           "schedules": [{"every": 3600.0, "keep_local": 1, "keep_remote": 3,
                          "app_consistent": False, "witness": "", "witness_secret": ""}],
           "containers": []}
    definitions.receive(mgr, "policy", "old", old, 1)
    policy = ca.policy("old")
    assert (policy.primary_cluster, policy.recovery_clusters) == ("canada", ("france",))
    with pytest.raises(InUse, match="policy 'old'"):
        ca.remove_zone("france")
