"""Activate at a NearSync restore point: the source dies with LWS shipped after its last vDisk
snapshot; the remote comes up at the newest LWS (RPO = the LWS interval), byte-identical to
the source at that marker, or at a point the operator names; failback afterwards ships the
deltas since the chain's snapshot and brings the PD home. Both sites live in this process
(the peer served by an in-process daemon), on the fake clock."""

from __future__ import annotations

import contextlib

import pytest
from ns_helpers import BS, SECRET, InProcessDaemon, protect, tick

import nxstore
from nxstore.errors import InUse, InvalidArgument, NotFound
from nxstore.protection import failover

SIZE = 32 * BS
DEAD = "127.0.0.1:1"  # connection refused: the site is gone


def fill(vd, seed: int, blocks: list[int], partial: bool = False) -> None:
    for i in blocks:
        data = (seed * 1_000_003 + i).to_bytes(8, "little") * (BS // 8)
        vd.write(i * BS + (100 if partial else 0), data[: 700 if partial else BS])


def point_to(c: nxstore.Cluster, site: str, address: str) -> None:
    with contextlib.suppress(NotFound):
        c.remove_remote_site(site)
    c.add_remote_site(site, address, SECRET)


@pytest.fixture
def disaster(make_cluster, clock):
    """paris protects VM "app" (vDisks db, log) to canada with a 1 s NearSync schedule; three
    LWS are shipped after the seed; then paris writes more (never shipped) and dies. Yields
    (paris, canada, {LWS time: images at that marker}, time of the death)."""
    a = make_cluster("paris", site_name="paris", clock=clock)
    b = make_cluster("canada", site_name="canada", clock=clock)
    served = InProcessDaemon(b)
    try:
        db, log = a.create_vdisk("db", SIZE), a.create_vdisk("log", 8 * BS)
        fill(db, 1, range(0, 32, 2))
        fill(log, 2, range(8))
        vm = a.create_vm("app", vdisks=[db, log], nics=[{"network": "VLAN50"}])
        pd = protect(a, "canada", served.address, [vm])
        assert tick(a, clock)[0].ok and pd.replication_state()["canada"].state == "nearsync"
        seed = pd.snapshots()[-1].name
        at = {}
        for k in range(3):
            fill(db, 10 + k, [k, 7 + k])
            fill(db, 20 + k, [20 + k], partial=True)
            fill(log, 30 + k, [k])
            at[clock() + 1] = {"db": db.read(0, SIZE), "log": log.read(0, 8 * BS)}
            assert tick(a, clock)[0].ok
        assert pd.snapshots()[-1].name == seed  # no vDisk snapshot since the seed
        fill(db, 99, [30, 31])  # after the last LWS: lost with paris
        db.flush()
        clock.advance(0.5)
    finally:
        served.close()
    point_to(b, "paris", DEAD)
    yield a, b, at, clock(), seed


def test_activate_at_the_newest_lws_and_fail_back(disaster):
    a, b, at, died, seed = disaster
    newest = max(at)
    last = b.restore_points("pd")[-1]
    assert last.kind == "lws" and last.created_at == newest
    res = b.activate("pd")
    assert res.lws == last.name and res.snapshot == f"pd.lws-{last.seq}"
    assert res.snapshot_created_at == newest and died - res.snapshot_created_at <= 1.5  # RPO
    assert res.vdisks == ("db", "log") and res.vms == ("app",)
    for name, image in at[newest].items():
        assert b.vdisk(name).read(0, len(image)) == image  # the source at the marker
    pd = b.protection_domain("pd")
    assert pd.state == "active" and pd.epoch == 2 and b.vms()[0].power_state == "on"
    assert [s.name for s in pd.snapshots()][-1] == res.snapshot  # a local restore point
    assert b.scrub() == []

    # canada runs on; paris comes back and canada fails back to it
    fill(b.vdisk("db"), 500, [3])
    expect = {n: b.vdisk(n).read(0, b.vdisk(n).size) for n in ("db", "log")}
    served = InProcessDaemon(a)
    try:
        point_to(b, "paris", served.address)
        out = pd.failback()
        assert out.reprotect.base_snapshot == seed  # the chain's snapshot: both sites have it
        # the blocks the episodes touched (db 0-2, 7-9, 20-22; log 0-2) and db 3 written
        # since; paris has all but db 3 (its own writes), so only that one travels
        assert out.reprotect.blocks_total == 13 and out.reprotect.blocks_sent == 1
        assert out.migrate is not None and out.migrate.epoch == 3
    finally:
        served.close()
    home = a.protection_domain("pd")
    assert home.state == "active" and home.epoch == 3
    assert {n: a.vdisk(n).read(0, a.vdisk(n).size) for n in ("db", "log")} == expect
    assert a._ctx.release_floor() is None  # the old chain's OpLog floor went at the demotion
    assert home.replication_state() == {}


def test_activate_at_a_chosen_point_or_snapshot(disaster):
    _, b, at, _, seed = disaster
    points = b.restore_points("pd")
    lws = [p for p in points if p.kind == "lws"]
    assert len(lws) == 3
    with pytest.raises(NotFound):
        b.activate("pd", point="nosuch")
    with pytest.raises(InvalidArgument):
        b.activate("pd", point=1.5)
    assert b.protection_domain("pd").state == "inactive"  # nothing changed
    res = b.activate("pd", point=lws[0].seq)
    assert res.lws == lws[0].name and res.snapshot_created_at == lws[0].created_at
    for name, image in at[lws[0].created_at].items():
        assert b.vdisk(name).read(0, len(image)) == image


def test_activate_at_the_seed_snapshot_by_name(disaster):
    a, b, _, _, seed = disaster
    want = {m.snapshot.vdisk_name: m.snapshot.read(0, m.snapshot.size)
            for m in a.protection_domain("pd").get_snapshot(seed).members()}
    res = b.activate("pd", point=seed)
    assert res.snapshot == seed and res.lws == ""
    assert {n: b.vdisk(n).read(0, b.vdisk(n).size) for n in want} == want


def test_cli_activate_point(disaster, capsys):
    from nxstore.cli import main

    _, b, at, _, _ = disaster
    first = next(p for p in b.restore_points("pd") if p.kind == "lws")
    path = b.path
    b.close()
    assert main(["pd", "activate", path, "pd", "--point", "nosuch"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no restore point 'nosuch'" in err[0]
    assert main(["pd", "activate", path, "pd", "--point", str(first.seq)]) == 0
    out = capsys.readouterr().out
    assert f"from LWS {first.name} (composed into pd.lws-{first.seq})" in out
    with nxstore.Cluster.open(path, background=False) as c:
        assert c.vdisk("db").read(0, SIZE) == at[first.created_at]["db"]


def test_returning_owner_demotes_at_its_first_nearsync_round(disaster, clock, caplog):
    """paris comes back after canada activated and runs its NearSync schedule: the
    ownership check before shipping demotes it on that first round (no NotFound, no
    fall back and re-seed first); canada's PD and data are untouched, one owner."""
    a, b, _, _, _ = disaster
    b.activate("pd")
    fill(b.vdisk("db"), 600, [4])  # canada's own writes since the activation
    theirs = {n: b.vdisk(n).read(0, b.vdisk(n).size) for n in ("db", "log")}
    pd = a.protection_domain("pd")
    assert pd.state == "active" and pd.replication_state()["canada"].state == "nearsync"
    served = InProcessDaemon(b)
    try:
        point_to(a, "canada", served.address)
        caplog.set_level("INFO", logger="nxstore")
        [run] = tick(a, clock)
        assert "owned by site 'canada'" in run.replication_errors["canada"]
        assert pd.state == "inactive" and pd.owner_site == "canada" and pd.epoch == 2
        assert a.vms() == [] and all(not s.enabled for s in pd.schedules())
        assert pd.replication_state() == {} and a._ctx.release_floor() is None
        assert "-> fallback" not in caplog.text and "seed it first" not in caplog.text
        assert tick(a, clock) == []  # nothing runs at a non-owner
        # a demoted site sends no sync: it would claim the new owner's epoch for itself
        with pytest.raises(InUse, match="not by this site"):
            failover.sync_peer(a._protection(), "pd", "canada")
    finally:
        served.close()
    assert any(s.name.startswith("pd.diverged") for s in a.vdisk("db").snapshots())
    cpd = b.protection_domain("pd")
    assert cpd.state == "active" and cpd.epoch == 2 and b.vms()[0].power_state == "on"
    assert {n: b.vdisk(n).read(0, b.vdisk(n).size) for n in ("db", "log")} == theirs
