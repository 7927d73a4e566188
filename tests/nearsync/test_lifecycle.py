"""NearSync against real `nxstore serve` processes: seed-then-stable, fallback on a stalled
link and automatic re-entry (state sequence asserted), composing at the remote, RPO."""

from __future__ import annotations

import os

import pytest
from ns_helpers import BS, protect, states, tick
from tcp_proxy import Faults
from test_e2e import ThreadedProxy

import nxstore
from nxstore.errors import InvalidArgument


def test_seed_then_stable_then_composed(make_cluster, clock, remote):
    path, daemon = remote("canada")
    a = make_cluster("paris", site_name="paris", clock=clock)
    a.configure_nearsync(compose_every=3.0)
    vd = a.create_vdisk("db", 32 * BS)
    vd.write(0, os.urandom(20 * BS))
    pd = protect(a, "canada", daemon.address, [vd], keep_remote=2)
    assert pd.rpo() == {"canada": None}
    run = tick(a, clock)[0]
    assert run.ok and pd.replication_state()["canada"].state == "nearsync"
    expect = {}
    for i in range(5):
        vd.write(i * 3000, os.urandom(5000))
        expect[clock() + 1] = vd.read(0, vd.size)
        assert tick(a, clock)[0].ok
        assert pd.rpo()["canada"] == 0.0
    assert states(pd, "canada") == ["none", "seeding", "nearsync"]
    clock.advance(10)
    assert pd.rpo()["canada"] == 10.0
    daemon.stop()
    with nxstore.Cluster.open(path, background=False) as b:
        points = b.restore_points("pd")
        snaps = [p for p in points if p.kind == "snapshot"]
        assert len(snaps) == 2  # remote retention: keep 2 (seeds and composed)
        assert snaps[-1].created_at in expect  # composed at the remote, named as the source's
        assert b.snapshot("paris:db", snaps[-1].name).read(0, vd.size) == expect[
            snaps[-1].created_at]
        for p in points:
            if p.kind == "lws":
                got = b.restore_point(p, f"r{p.seq}-")[0]
                assert got.read(0, vd.size) == expect[p.created_at]
        assert b.scrub() == []


def test_fallback_on_stalled_link_and_automatic_reentry(make_cluster, clock, remote):
    _, daemon = remote("canada")
    proxy = ThreadedProxy(daemon.port)
    try:
        a = make_cluster("paris", site_name="paris", clock=clock)
        a.configure_nearsync(lag_threshold=3.0, ship_timeout=1.0)
        vd = a.create_vdisk("db", 16 * BS)
        pd = protect(a, "canada", proxy.address, [vd])
        assert tick(a, clock)[0].ok
        vd.write(0, b"x" * 5000)
        assert tick(a, clock)[0].ok
        proxy.proxy.faults["up"] = Faults(stall_at=0)  # new connections forward nothing
        vd.write(BS, b"y" * 5000)
        first = tick(a, clock)[0]
        assert first.replication_errors and pd.replication_state()["canada"].state == "nearsync"
        floor = a._ctx.release_floor()
        assert floor is not None  # the unshipped episode is kept meanwhile
        second = tick(a, clock, 5.0)[0]
        assert "canada" in second.replication_errors
        assert pd.replication_state()["canada"].state == "fallback"
        assert a._ctx.release_floor() is None  # the floor went with the chain
        proxy.proxy.faults["up"] = Faults()
        assert tick(a, clock)[0].ok
        assert states(pd, "canada") == ["none", "seeding", "nearsync", "fallback", "seeding",
                                        "nearsync"]
        vd.write(2 * BS, b"z" * 100)
        assert tick(a, clock)[0].ok
        assert pd.rpo()["canada"] == 0.0
    finally:
        proxy.close()


def test_schedule_interval_rules(make_cluster, clock):
    from datetime import timedelta

    a = make_cluster("paris", clock=clock)
    a.add_remote_site("canada", "127.0.0.1:1", "s" * 16)
    vd = a.create_vdisk("db", BS)
    pd = a.create_protection_domain("pd", entities=[vd])
    for seconds, remote in ((0.5, {"canada": 1}), (901, {"canada": 1}), (30, None)):
        with pytest.raises(InvalidArgument):
            pd.add_schedule(every=timedelta(seconds=seconds), keep_local=1, keep_remote=remote)
    pd.add_schedule(every=timedelta(seconds=1), keep_local=1, keep_remote={"canada": 1})
    with pytest.raises(InvalidArgument):
        a.configure_nearsync(lag_threshold=-1)
    with pytest.raises(InvalidArgument):
        a.configure_nearsync(bogus=1)
