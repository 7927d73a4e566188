"""Topologies: one zone protecting to two, two protecting to one, and a full mesh of three
zones with policies in every direction at once; each fails over and is byte-identical."""

from __future__ import annotations

from scenario import SIZE, fill

from nxstore.leap import NetworkMapping, PolicySchedule, Stage

HOURLY = [PolicySchedule(every=3600, keep_local=2, keep_remote=2)]


def _vm(c, name: str, seed: int, category: tuple[str, str]) -> bytes:
    if category[0] not in {x.key for x in c.categories()}:
        c.create_category(category[0], [category[1]])
    elif category[1] not in c.category(category[0]).values:
        c.add_category_values(category[0], [category[1]])
    vd = c.create_vdisk(f"{name}-os", SIZE)
    fill(vd, seed)
    c.create_vm(name, vdisks=[vd], nics=[{"network": "LAN"}])
    c.vm(name).add_category(*category)
    return vd.read(0, SIZE)


def _fail_over(c, plan_name: str, vms: list[str]) -> None:
    report = c.recovery_plan(plan_name).unplanned_failover()
    assert report.ok, report
    for vm in vms:
        assert c.vm(vm).power_state == "on"


def test_one_zone_protects_to_two(zones):
    ca, fr, uk = (zones.add(n) for n in ("canada", "france", "uk"))
    zones.pair_all()
    data = _vm(ca, "app", 1, ("dr", "both"))
    ca.create_policy("two-ways", "canada", ["france", "uk"], HOURLY, ["dr:both"])
    ca.run_schedules()
    for z in (fr, uk):
        assert z.policy("two-ways").recovery == ("france", "uk")
        assert z.protection_domain("leap.app").snapshots()
    ca.create_recovery_plan("to-uk", "canada", "uk", [Stage(vms=("app",))],
                            [NetworkMapping("LAN", "UK-LAN")])
    zones.down("canada")
    _fail_over(uk, "to-uk", ["app"])
    assert uk.vm("app").vdisks[0].read(0, SIZE) == data
    assert uk.vm("app").nics == [{"network": "UK-LAN"}]
    assert fr.protection_domain("leap.app").snapshots()  # france keeps its copy


def test_two_zones_protect_to_one(zones):
    ca, fr, uk = (zones.add(n) for n in ("canada", "france", "uk"))
    ca.connect_zone("france", zones.address("france"), "leap zones test secret")
    uk.connect_zone("france", zones.address("france"), "leap zones test secret")
    a = _vm(ca, "ca-app", 1, ("site", "ca"))
    b = _vm(uk, "uk-app", 2, ("site", "uk"))
    ca.create_policy("ca-fr", "canada", ["france"], HOURLY, ["site:ca"])
    uk.create_policy("uk-fr", "uk", ["france"], HOURLY, ["site:uk"])
    ca.run_schedules()
    uk.run_schedules()
    assert {p.name for p in fr.policies()} == {"ca-fr", "uk-fr"}
    for src, vm in (("canada", "ca-app"), ("uk", "uk-app")):
        c = ca if src == "canada" else uk
        c.create_recovery_plan(f"{vm}-plan", src, "france", [Stage(vms=(vm,))],
                               [NetworkMapping("LAN", "FR-LAN")])
    zones.down("canada")
    zones.down("uk")
    _fail_over(fr, "ca-app-plan", ["ca-app"])
    _fail_over(fr, "uk-app-plan", ["uk-app"])
    assert fr.vm("ca-app").vdisks[0].read(0, SIZE) == a
    assert fr.vm("uk-app").vdisks[0].read(0, SIZE) == b


def test_full_mesh_of_three_zones(zones, clock):
    names = ("canada", "france", "uk")
    cs = {n: zones.add(n) for n in names}
    zones.pair_all()
    data = {}
    for i, n in enumerate(names):
        to = names[(i + 1) % 3]
        data[f"{n}-vm"] = _vm(cs[n], f"{n}-vm", i + 1, ("from", n))
        cs[n].create_policy(f"{n}-to-{to}", n, [to], HOURLY, [f"from:{n}"])
        cs[n].create_recovery_plan(f"{n}-plan", n, to, [Stage(categories=(("from", n),))],
                                   [NetworkMapping("LAN", f"{to}-LAN", "TEST", f"{to}-TEST")])
    for _ in range(2):
        for n in names:
            cs[n].run_schedules()
        clock.advance(3600)
    for i, n in enumerate(names):
        to = names[(i + 1) % 3]
        assert cs[to].protection_domain(f"leap.{n}-vm").snapshots()
        report = cs[to].recovery_plan(f"{n}-plan").test_failover()
        assert report.ok, report
        assert cs[to].vm(f"{n}-plan-test-{n}-vm").vdisks[0].read(0, SIZE) == data[f"{n}-vm"]
        assert cs[to].recovery_plan(f"{n}-plan").cleanup_test().ok
    # every zone's planned failover at once, in a ring: each zone gets its neighbour's VM
    for i, n in enumerate(names):
        to = names[(i + 1) % 3]
        report = cs[to].recovery_plan(f"{n}-plan").planned_failover()
        assert report.ok, report
        assert cs[to].vm(f"{n}-vm").vdisks[0].read(0, SIZE) == data[f"{n}-vm"]
        assert cs[to].vm(f"{n}-vm").nics == [{"network": f"{to}-LAN"}]
