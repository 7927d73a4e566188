"""Migrate, activate, demotion of a returning owner, failback: real `nxstore serve`
processes for the peer site, the operator's site open in the test process on the fake
clock (failover_helpers.Sites). Every data check compares whole vDisk images."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from failover_helpers import BS, SIZE, VDISKS, Sites, fill, image, images, setup_pd

import nxstore
from nxstore.errors import AlreadyExists, InUse, NotFound, NxError, ReadOnly
from nxstore.protection.failover import migration as failover

HOUR = 3600.0
MINUTE = 60.0


@pytest.fixture
def sites(tmp_path, clock):
    s = Sites(tmp_path, clock, ["france", "canada"])
    yield s
    s.cleanup()


def run_hours(c, clock, hours: int, writes: bool = True, seed: int = 100) -> None:
    for h in range(hours):
        if writes:
            fill(c.vdisk("db-data"), seed + h, [h % 64, (h * 7) % 64])
        runs = c.run_schedules()
        assert all(r.ok for r in runs), runs
        clock.advance(HOUR)


def owners(sites) -> dict[str, tuple[str, int]]:
    """{site: (state, epoch)} of pd-web, each site opened in turn (daemons stopped)."""
    out = {}
    for name in sites.names:
        c = sites.open(name)
        pd = c.protection_domain("pd-web")
        out[name] = (pd.state, pd.epoch)
    return out


# -- migrate --------------------------------------------------------------------------------

def test_migrate_loses_nothing_and_reverses(sites, clock):
    sites.serve("canada")
    fr = sites.open("france")
    pd = setup_pd(fr)
    run_hours(fr, clock, 3)
    fill(fr.vdisk("web-os"), 77, [5, 6])  # after the last scheduled snapshot
    before = images(fr, VDISKS)
    res = pd.migrate("canada")
    assert res.steps == failover.STEPS and res.epoch == 2 and not res.power_on
    assert sorted(res.vms) == ["app", "db", "web"]
    # france: VMs gone, vDisks kept as read-only replicas, PD inactive and owned by canada
    assert fr.vms() == []
    assert pd.state == "inactive" and pd.owner_site == "canada" and pd.epoch == 2
    assert all(fr.vdisk(n).read_only for n in VDISKS)
    assert images(fr, VDISKS) == before
    with pytest.raises(ReadOnly):
        fr.vdisk("web-os").write(0, bytes(BS))
    assert [j.status for j in pd.journal()] == ["done"]
    assert all(not s.enabled for s in pd.schedules())
    # canada: the VMs with their data byte for byte, NICs mapped, powered off (seed 001:
    # "you must start them manually")
    sites.serve("france")
    ca = sites.open("canada")
    cpd = ca.protection_domain("pd-web")
    assert cpd.state == "active" and cpd.epoch == 2 and cpd.owner_site == "canada"
    assert images(ca, VDISKS) == before
    assert ca.vm("web").nics == [{"network": "VLAN60"}]
    assert ca.vm("db").nics == [{"network": "VLAN7"}]  # unmapped network kept
    assert ca.vm("web").categories == {"tier": "web"}
    assert {v.name: v.power_state for v in ca.vms()} == {"app": "off", "db": "off", "web": "off"}
    assert cpd.consistency_groups() == {"app+db": ["app", "db"]}
    [sched] = cpd.schedules()
    assert sched.enabled and sched.keep_remote == {"france": 2}
    # reverse direction: canada's schedule replicates back to france, incremental
    fill(ca.vdisk("db-data"), 999, [1])
    runs = ca.run_schedules()
    assert len(runs) == 1 and runs[0].ok and runs[0].replicated == ("france",), runs
    after = images(ca, VDISKS)
    sites.serve("canada")
    fr = sites.open("france")
    newest = fr.vdisk("db-data").snapshots()[-1]
    assert newest.name == runs[0].snapshot and image(newest) == after["db-data"]


def test_reverse_replication_is_incremental(sites, clock):
    sites.serve("canada")
    fr = sites.open("france")
    pd = setup_pd(fr, schedule=False)
    pd.snapshot(replicate_to=["canada"])
    pd.migrate("canada")
    sites.serve("france")
    ca = sites.open("canada")
    cpd = ca.protection_domain("pd-web")
    fill(ca.vdisk("web-os"), 5, [9])
    snap = cpd.snapshot()
    result = cpd.replicate(snap, "france")
    assert result.base_snapshot is not None and result.base_snapshot.startswith("pd-web.migrate")
    assert result.blocks_total == 1  # only web-os changed, one block


def test_migrate_power_on_keeps_the_source_power_states(sites, clock):
    sites.serve("canada")
    fr = sites.open("france")
    pd = setup_pd(fr, schedule=False)
    powers = {v.name: v.power_state for v in fr.vms()}
    assert set(powers.values()) == {"on", "off"}
    res = pd.migrate("canada", power_on=True)
    assert res.power_on and json.loads(pd.journal()[-1].detail)["power_on"] is True
    assert fr.vms() == []
    sites.serve("france")
    ca = sites.open("canada")
    assert {v.name: v.power_state for v in ca.vms()} == powers
    # and home again without it: registered powered off at france
    ca.vm("db").power_on()
    res = ca.protection_domain("pd-web").migrate("france")
    assert not res.power_on and res.epoch == 3
    sites.serve("canada")
    fr = sites.open("france")
    assert {v.name: v.power_state for v in fr.vms()} == {"app": "off", "db": "off", "web": "off"}


STEP_NUMBERS = list(range(1, len(failover.STEPS) + 1))


def migrate_failing_at(pd, monkeypatch, step: int, power_on: bool = False) -> None:
    """pd.migrate("canada", power_on) with a failure injected in place of step `step`."""
    name = failover.STEPS[step - 1]

    def boom(*a, **k):
        raise NxError(f"injected failure in {name}")

    monkeypatch.setattr(failover, f"_step_{name}", boom)
    with pytest.raises(NxError, match="injected"):
        pd.migrate("canada", power_on=power_on)
    monkeypatch.undo()


@pytest.mark.parametrize("step", STEP_NUMBERS)
@pytest.mark.parametrize("then", ["resume", "rollback"])
def test_failure_at_every_step(sites, clock, monkeypatch, step, then):
    sites.serve("canada")
    fr = sites.open("france")
    pd = setup_pd(fr)
    run_hours(fr, clock, 2)
    before = images(fr, VDISKS)
    powers = {v.name: v.power_state for v in fr.vms()}
    name = failover.STEPS[step - 1]
    migrate_failing_at(pd, monkeypatch, step, power_on=True)
    [j] = pd.journal()
    assert j.status == "failed" and j.step == step - 1 and name in j.error
    assert images(fr, VDISKS) == before  # france's data intact
    if then == "resume":
        res = pd.migrate("canada")  # the journal keeps power_on=True
        assert res.steps == failover.STEPS[step - 1:] and res.power_on
        sites.serve("france")
        ca = sites.open("canada")
        assert images(ca, VDISKS) == before
        assert {v.name: v.power_state for v in ca.vms()} == powers
        assert owners(sites) == {"france": ("inactive", 2), "canada": ("active", 2)}
        return
    if step == len(failover.STEPS):  # the destination already owns it
        with pytest.raises(InUse, match="destination owns"):
            pd.rollback_migrate()
        pd.migrate("canada")
        assert owners(sites) == {"france": ("inactive", 2), "canada": ("active", 2)}
        return
    pd.rollback_migrate()
    assert pd.state == "active" and pd.epoch == 1
    assert {v.name: v.power_state for v in fr.vms()} == powers
    assert sorted(v.name for v in pd.vms()) == ["app", "db", "web"]
    assert pd.consistency_groups() == {"app+db": ["app", "db"]}
    assert all(s.enabled for s in pd.schedules())
    assert images(fr, VDISKS) == before
    assert pd.journal()[-1].status == "rolled_back"
    clock.advance(HOUR)
    assert all(r.ok for r in fr.run_schedules())  # protection goes on
    res = pd.migrate("canada")  # and a later migration works
    assert res.epoch == 2
    assert owners(sites) == {"france": ("inactive", 2), "canada": ("active", 2)}


def test_resume_can_ask_for_power_on(sites, clock, monkeypatch):
    sites.serve("canada")
    fr = sites.open("france")
    pd = setup_pd(fr, schedule=False)
    powers = {v.name: v.power_state for v in fr.vms()}
    migrate_failing_at(pd, monkeypatch, failover.STEPS.index("register_at_destination") + 1)
    assert json.loads(pd.journal()[-1].detail)["power_on"] is False
    res = pd.migrate("canada", power_on=True)
    assert res.power_on and res.steps == ("register_at_destination", "reverse_direction")
    sites.serve("france")
    assert {v.name: v.power_state for v in sites.open("canada").vms()} == powers


def test_failure_after_destination_adopted(sites, clock, monkeypatch):
    """Step 5 done at the peer but its reply lost: rollback refuses, resume finishes."""
    sites.serve("canada")
    fr = sites.open("france")
    pd = setup_pd(fr)
    run_hours(fr, clock, 1)
    before = images(fr, VDISKS)
    real = failover._step_register_at_destination

    def adopted_then_lost(*a, **k):
        real(*a, **k)
        raise NxError("injected: reply lost")

    monkeypatch.setattr(failover, "_step_register_at_destination", adopted_then_lost)
    with pytest.raises(NxError, match="reply lost"):
        pd.migrate("canada")
    monkeypatch.undo()
    with pytest.raises(InUse, match="adopted"):
        pd.rollback_migrate()
    res = pd.migrate("canada")
    assert res.steps == failover.STEPS[4:]
    sites.serve("france")
    ca = sites.open("canada")
    assert images(ca, VDISKS) == before


@pytest.mark.parametrize("step", [2, 4, 6])
def test_demotion_aborts_an_interrupted_migration(sites, clock, monkeypatch, step):
    """france's migration fails at `step` and france goes down; canada owns the PD at
    epoch 2 (it activates it, or it adopted it at step 5). canada's failback demotes
    france, which closes the journal as aborted; back home, a new migrate works."""
    sites.serve("canada")
    fr = sites.open("france")
    pd = setup_pd(fr)
    run_hours(fr, clock, 2)
    migrate_failing_at(pd, monkeypatch, step)
    sites.close("france")  # gone mid-migration
    ca = sites.open("canada")
    if step < 5:
        ca.activate("pd-web")
    fill(ca.vdisk("db-data"), 4242, [60])
    sites.serve("france")
    assert ca.protection_domain("pd-web").failback("france").migrate.epoch == 3
    expect = images(ca, VDISKS)
    sites.serve("canada")
    fr = sites.open("france")
    pd = fr.protection_domain("pd-web")
    first = pd.journal()[0]
    assert (first.kind, first.status) == ("migrate", "aborted") and first.step == step - 1
    assert "aborted by demotion" in first.error and "epoch 2" in first.error
    assert pd.state == "active" and images(fr, VDISKS) == expect
    res = pd.migrate("canada")
    assert res.steps == failover.STEPS and res.epoch == 4
    assert owners(sites) == {"france": ("inactive", 4), "canada": ("active", 4)}


# -- bad input ------------------------------------------------------------------------------

def test_migrate_bad_input(sites, clock):
    fr = sites.open("france")
    pd = setup_pd(fr)
    with pytest.raises(NotFound, match="no remote site 'mars'"):
        pd.migrate("mars")
    # canada is configured but down (nothing listens)
    with pytest.raises(NxError, match="connection"):
        pd.migrate("canada")
    assert pd.state == "active" and pd.epoch == 1 and pd.journal() == []
    assert len(fr.vms()) == 3
    # canada up but without a remote site for france: refused before any change
    sites.close("france")
    c = sites.open("canada")
    c.remove_remote_site("france")
    sites.serve("canada", point=False)
    fr = sites.open("france")
    pd = fr.protection_domain("pd-web")
    with pytest.raises(NotFound, match="no remote site named 'france'"):
        pd.migrate("canada")
    assert pd.state == "active" and pd.journal() == [] and len(fr.vms()) == 3
    with pytest.raises(InUse, match="active on this site"):
        fr.activate("pd-web")
    with pytest.raises(NotFound):
        fr.activate("nope")


def test_migrate_refuses_name_clash_at_destination(sites, clock):
    c = sites.open("canada")
    c.create_vdisk("web-os", BS)  # a local vDisk of the same name at canada
    sites.serve("canada")
    fr = sites.open("france")
    pd = setup_pd(fr)
    before = images(fr, VDISKS)
    with pytest.raises(AlreadyExists, match="web-os"):
        pd.migrate("canada")
    pd.rollback_migrate()  # failed at step 2 (the destination's check): roll back
    assert pd.state == "active" and len(fr.vms()) == 3 and images(fr, VDISKS) == before


# -- activate, RPO, return of the old owner, failback -------------------------------------------

def _disaster_setup(sites, clock):
    """france protects pd-web hourly to canada; writes every 10 minutes for 3h25m; returns
    (france images at its newest replicated snapshot, {minute: value written}, T)."""
    sites.serve("canada")
    fr = sites.open("france")
    pd = setup_pd(fr)
    written = {}
    for minute in range(0, 3 * 60 + 30, 10):
        fill(fr.vdisk("db-data"), 1000 + minute, [minute // 10])
        written[minute] = minute // 10
        runs = fr.run_schedules()
        assert all(r.ok for r in runs)
        clock.advance(10 * MINUTE)
    newest = pd.snapshots()[-1]
    at_snap = {m.snapshot.vdisk_name: image(m.snapshot) for m in newest.members()}
    return pd, at_snap, newest, clock()


def test_activate_rpo_is_the_interval(sites, clock):
    pd, at_snap, newest, t_disaster = _disaster_setup(sites, clock)
    head = images(sites.open("france"), VDISKS)
    assert head != at_snap  # writes after the last snapshot exist at france
    sites.close("france")  # france is gone
    sites.stop("canada")
    ca = sites.open("canada")
    res = ca.activate("pd-web")
    assert res.snapshot == newest.name and res.previous_owner == "france" and res.epoch == 2
    assert 0 < t_disaster - res.snapshot_created_at <= HOUR  # RPO == the interval
    assert images(ca, VDISKS) == at_snap
    assert {v.name: v.power_state for v in ca.vms()} == {"app": "on", "db": "off", "web": "on"}
    cpd = ca.protection_domain("pd-web")
    assert cpd.state == "active" and cpd.schedules()[0].keep_remote == {"france": 2}
    with pytest.raises(InUse):
        ca.activate("pd-web")


def test_returning_owner_demotes_itself_at_replication(sites, clock):
    pd, at_snap, _, _ = _disaster_setup(sites, clock)
    sites.close("france")
    sites.stop("canada")
    ca = sites.open("canada")
    ca.activate("pd-web")
    sites.serve("canada")
    fr = sites.open("france")  # france comes back and its schedule fires
    clock.advance(HOUR)
    runs = fr.run_schedules()
    assert runs and "owned by site 'canada'" in str(runs[0].replication_errors)
    pd = fr.protection_domain("pd-web")
    assert pd.state == "inactive" and pd.owner_site == "canada" and pd.epoch == 2
    assert fr.vms() == [] and all(not s.enabled for s in pd.schedules())
    assert fr.run_schedules() == []  # nothing runs at a non-owner
    # france's own writes after the last replicated snapshot were kept aside
    assert any(s.name.startswith("pd-web.diverged") for s in fr.vdisk("db-data").snapshots())
    assert owners(sites) == {"france": ("inactive", 2), "canada": ("active", 2)}


def test_sync_ownership_and_failback_sends_only_deltas(sites, clock):
    pd, at_snap, newest, _ = _disaster_setup(sites, clock)
    sites.close("france")
    sites.stop("canada")
    ca = sites.open("canada")
    ca.activate("pd-web")
    # france returns while the operator is at canada: sync_ownership from france
    sites.serve("canada")
    fr = sites.open("france")
    out = fr.protection_domain("pd-web").sync_ownership()
    assert out.demoted and out.state == "inactive" and out.peers["canada"].epoch == 2
    # canada writes 3 blocks, then fails back to france
    sites.serve("france")
    ca = sites.open("canada")
    fill(ca.vdisk("db-data"), 4242, [60, 61])
    fill(ca.vdisk("web-os"), 4243, [62])
    expect = images(ca, VDISKS)
    res = ca.protection_domain("pd-web").failback()
    assert res.site == "france"
    assert res.reprotect.base_snapshot == newest.name
    assert res.reprotect.blocks_total == 3  # only the deltas since the common snapshot
    assert res.migrate is not None and res.migrate.epoch == 3
    sites.serve("canada")
    fr = sites.open("france")
    fpd = fr.protection_domain("pd-web")
    assert fpd.state == "active" and fpd.epoch == 3
    assert images(fr, VDISKS) == expect
    assert sorted(v.name for v in fr.vms()) == ["app", "db", "web"]
    assert fpd.schedules()[0].keep_remote == {"canada": 2}


def test_failback_demotes_an_old_owner_that_never_synced(sites, clock):
    """The old owner is still active (it never talked to anyone since): the new owner's
    failback makes it demote itself; at no point are both active at one epoch."""
    _disaster_setup(sites, clock)
    sites.close("france")
    sites.stop("canada")
    ca = sites.open("canada")
    ca.activate("pd-web")
    sites.serve("france")  # france comes back as a daemon, still "active" at epoch 1
    res = ca.protection_domain("pd-web").failback(migrate_back=False)
    assert res.reprotect.blocks_total == 0 and res.migrate is None
    assert owners(sites) == {"france": ("inactive", 2), "canada": ("active", 2)}


def test_journal_rows_are_json(sites, clock):
    sites.serve("canada")
    fr = sites.open("france")
    pd = setup_pd(fr)
    pd.snapshot(replicate_to=["canada"])
    pd.migrate("canada")
    [j] = pd.journal()
    d = json.loads(j.detail)
    assert d["peer_site"] == "canada" and {e["name"] for e in d["entities"]} == {"web", "app", "db"}


# -- CLI --------------------------------------------------------------------------------------

def test_cli_vm_pd_migrate_activate(sites, clock, capsys):
    from nxstore.cli import main

    fr = sites.open("france")
    fr.create_vdisk("d1", SIZE)
    fill(fr.vdisk("d1"), 3, [0, 1])
    sites.serve("canada")
    sites.close("france")
    path = sites.path("france")
    assert main(["vm", "create", path, "web", "--vdisk", "d1", "--nic", "VLAN50",
                 "--category", "tier=web"]) == 0
    assert main(["vm", "create", path, "bad", "--vdisk", "nope"]) == 1
    assert main(["vm", "create", path, "x", "--category", "novalue"]) == 1
    assert main(["pd", "create", path, "pd-web", "web"]) == 0
    assert main(["pd", "schedule", path, "pd-web", "--every", "1h", "--keep", "2",
                 "--remote", "canada=2"]) == 0
    assert main(["pd", "schedule", path, "pd-web", "--every", "5x", "--keep", "1"]) == 2
    assert main(["pd", "snapshot", path, "pd-web", "--name", "s1", "--replicate-to", "canada"]) == 0
    capsys.readouterr()
    assert main(["pd", "show", path, "pd-web", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["state"] == "active" and info["snapshot_list"][0]["replicated_to"] == ["canada"]
    assert main(["pd", "migrate", path, "pd-web", "mars"]) == 1
    assert "no remote site 'mars'" in capsys.readouterr().err
    assert main(["pd", "activate", path, "pd-web"]) == 1
    assert main(["pd", "migrate", path, "pd-web", "canada"]) == 0
    out = capsys.readouterr().out
    assert "migrated pd-web to canada (epoch 2" in out and "powered off at canada" in out
    assert main(["vm", "list", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["pd", "list", path]) == 0
    assert "inactive" in capsys.readouterr().out
    sites.stop("canada")
    cpath = sites.path("canada")
    assert main(["vm", "show", cpath, "web", "--json"]) == 0
    vm = json.loads(capsys.readouterr().out)
    assert vm["nics"] == [{"network": "VLAN60"}] and vm["power"] == "off"
    assert main(["vm", "power-on", cpath, "web"]) == 0
    assert main(["pd", "activate", cpath, "pd-web"]) == 1  # active there already
    # home again with --power-on: web is on at france as it was at canada
    sites.serve("france")
    sites.open("canada")  # points canada at france's daemon
    sites.close("canada")
    capsys.readouterr()
    assert main(["pd", "migrate", cpath, "pd-web", "france", "--power-on"]) == 0
    assert "powered off" not in capsys.readouterr().out
    sites.stop("france")
    assert main(["vm", "show", path, "web", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["power"] == "on"


# -- three sites ----------------------------------------------------------------------------------

def test_three_sites_migrate_keeps_the_third_replica_site(tmp_path, clock):
    """france protects to canada and uk; after a migration to canada, canada's schedule
    replicates to france (renamed from canada) and uk; uk learns the new owner."""
    sites = Sites(tmp_path, clock, ["france", "canada", "uk"])
    try:
        sites.serve("canada")
        sites.serve("uk")
        fr = sites.open("france")
        pd = setup_pd(fr, schedule=False)
        pd.add_schedule(every=timedelta(hours=1), keep_local=2,
                        keep_remote={"canada": 2, "uk": 2})
        run_hours(fr, clock, 2)
        before = images(fr, VDISKS)
        pd.migrate("canada")
        sites.serve("france")
        ca = sites.open("canada")
        cpd = ca.protection_domain("pd-web")
        assert cpd.schedules()[0].keep_remote == {"france": 2, "uk": 2}
        assert images(ca, VDISKS) == before
        run_hours(ca, clock, 1)
        after = images(ca, VDISKS)
        sites.serve("canada")
        uk = sites.open("uk")
        upd = uk.protection_domain("pd-web")
        assert (upd.state, upd.owner_site, upd.epoch) == ("inactive", "canada", 2)
        # uk's replica of france's db-data now follows canada's: incremental, not a new copy
        [rep] = [r for r in uk.replicas() if r.source_vdisk == "db-data"]
        assert (rep.vdisk, rep.source_site) == ("france:db-data", "canada")
        assert image(rep.snapshots[-1]) == after["db-data"]
        # canada still answers: activating at uk would make two owners
        with pytest.raises(InUse, match="'canada' answers and owns"):
            uk.activate("pd-web")
        assert uk.protection_domain("pd-web").state == "inactive" and uk.vms() == []
        sites.kill("canada")  # canada is gone: uk can activate from canada's replica
        res = uk.activate("pd-web")
        assert res.previous_owner == "canada" and res.epoch == 3
        assert images(uk, VDISKS) == after
    finally:
        sites.cleanup()


# -- schedules carried over, activate fencing ------------------------------------------------------

def _scheduled(pd, schedule) -> list[str]:
    return [s.name for s in pd.snapshots() if s.schedule_id == schedule.id]


def test_retention_stays_exact_after_migrate_and_back(sites, clock):
    """The PD snapshots a migration carries over keep their schedule: the new owner's
    retention prunes them, and the old owner (a replica site now) keeps exactly N."""
    sites.serve("canada")
    fr = sites.open("france")
    pd = setup_pd(fr)
    [fsched] = pd.schedules()
    run_hours(fr, clock, 4)
    carried = _scheduled(pd, fsched)
    assert len(carried) == 2
    res = pd.migrate("canada")
    sites.serve("france")
    ca = sites.open("canada")
    cpd = ca.protection_domain("pd-web")
    [csched] = cpd.schedules()
    assert _scheduled(cpd, csched) == carried
    run_hours(ca, clock, 3, seed=300)
    kept = _scheduled(cpd, csched)
    assert len(kept) == 2 and not set(kept) & set(carried)  # the carried ones were pruned
    assert [s.name for s in cpd.snapshots()] == [res.snapshot, *kept]  # + the final (ad hoc)
    assert all(len(ca.vdisk(n).snapshots()) == 3 for n in VDISKS)
    home = ca.protection_domain("pd-web").migrate("france")
    sites.serve("canada")
    fr = sites.open("france")
    # Remote retention (keep 2, counting only the schedule's snapshots: the carried ones
    # were pruned there too) while france was a replica site; the first migration's final
    # snapshot is ad hoc: kept there, as at canada.
    assert all([s.name for s in fr.vdisk(n).snapshots()] == [res.snapshot, *kept, home.snapshot]
               for n in VDISKS)
    fpd = fr.protection_domain("pd-web")
    assert [s.id for s in fpd.schedules()] == [fsched.id]  # france's row, updated in place
    assert _scheduled(fpd, fsched) == kept
    run_hours(fr, clock, 3, seed=600)
    assert len(_scheduled(fpd, fsched)) == 2
    assert all(len(fr.vdisk(n).snapshots()) == 4 for n in VDISKS)  # 2 scheduled + 2 finals


def test_activate_refuses_while_the_owner_answers(sites, clock, capsys):
    from nxstore.cli import main

    sites.serve("canada")
    fr = sites.open("france")
    setup_pd(fr)
    run_hours(fr, clock, 2)
    sites.serve("france")  # france is alive (its daemon answers) and owns pd-web
    ca = sites.open("canada")
    before = {r.vdisk: [s.name for s in r.snapshots] for r in ca.replicas()}
    with pytest.raises(InUse, match="'france' answers and owns .* force"):
        ca.activate("pd-web")
    cpd = ca.protection_domain("pd-web")
    assert (cpd.state, cpd.epoch) == ("inactive", 1) and ca.vms() == []
    assert {r.vdisk: [s.name for s in r.snapshots] for r in ca.replicas()} == before
    sites.close("canada")
    path = sites.path("canada")
    assert main(["pd", "activate", path, "pd-web"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "answers and owns" in err and "--force" in err
    assert "force=True" not in err  # CLI words (nxstore.cli.common.cli_words)
    assert main(["pd", "activate", path, "pd-web", "--force"]) == 0  # operator fences france
    assert "activated pd-web (epoch 2)" in capsys.readouterr().out
    # france still thinks it owns pd-web until it talks to canada; then it demotes
    sites.serve("canada")
    fr = sites.open("france")
    assert fr.protection_domain("pd-web").sync_ownership().demoted
    assert owners(sites) == {"france": ("inactive", 2), "canada": ("active", 2)}


def test_two_survivors_cannot_both_activate_and_converge_if_cut_off(tmp_path, clock):
    """france (the owner) is gone. canada activates; uk then asks everyone and refuses.
    If uk could not reach canada it activates too (same epoch): at their first contact
    the smaller cluster id keeps the PD, the other demotes itself."""
    sites = Sites(tmp_path, clock, ["france", "canada", "uk"])
    ids = {n: _cluster_id(sites, n) for n in sites.names}
    try:
        sites.serve("canada")
        sites.serve("uk")
        fr = sites.open("france")
        pd = setup_pd(fr, schedule=False)
        pd.add_schedule(every=timedelta(hours=1), keep_local=2, keep_remote={"canada": 2, "uk": 2})
        run_hours(fr, clock, 2)
        sites.close("france")  # the disaster: france is gone for good
        sites.stop("canada")
        ca = sites.open("canada")
        assert ca.activate("pd-web").epoch == 2
        sites.serve("canada")
        uk = sites.open("uk")
        with pytest.raises(InUse, match="'canada' answers and owns"):
            uk.activate("pd-web")
        # cut off from canada, uk activates too: two owners at epoch 2
        sites.stop("canada")
        assert uk.activate("pd-web").epoch == 2
        sites.serve("canada")
        winner, loser = sorted(["canada", "uk"], key=ids.get)
        uk = sites.open("uk")
        out = uk.protection_domain("pd-web").sync_ownership(["canada"])
        assert out.demoted == (loser == "uk")
        if loser == "canada":  # uk won: canada learns it at its next contact with uk
            sites.serve("uk")
            ca = sites.open("canada")
            assert ca.protection_domain("pd-web").sync_ownership(["uk"]).demoted
        state = {n: s for n, s in owners(sites).items() if n != "france"}
        assert state == {winner: ("active", 2), loser: ("inactive", 2)}
    finally:
        sites.cleanup()


def _cluster_id(sites, name: str) -> str:
    with nxstore.Cluster.open(sites.path(name), background=False) as c:
        return c.id
