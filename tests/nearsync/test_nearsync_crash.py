"""Crashes around NearSync (SIGKILL of real processes): the source between a marker and its
shipment, the remote while it composes a vDisk snapshot."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from ns_helpers import BS, protect, tick

import nxstore

SOURCE_CHILD = textwrap.dedent("""
    import os, signal, sys
    import nxstore
    c = nxstore.Cluster.open(sys.argv[1], background=False, clock=lambda: float(sys.argv[2]))
    vd = c.vdisk("db")
    vd.write(0, bytes(range(256)) * 40)
    vd.write(3 * 4096 + 7, b"acknowledged" * 100)
    vd.flush()                                   # acknowledged before the marker
    c.lws_group(pd="pd", name="crashpoint")
    vd.write(0, b"after the marker" * 512)       # never acknowledged
    os.kill(os.getpid(), signal.SIGKILL)
""")

COMPOSE_CHILD = textwrap.dedent("""
    import sys
    import nxstore
    c = nxstore.Cluster.open(sys.argv[1], background=False)
    print("ready", flush=True)
    c.compose_pending()
    c.close()
""")


def test_source_killed_between_marker_and_shipment(make_cluster, clock, remote, tmp_path):
    path, daemon = remote("canada")
    a = make_cluster("paris", site_name="paris", clock=clock)
    vd = a.create_vdisk("db", 64 * BS)
    vd.write(0, os.urandom(64 * BS))
    protect(a, "canada", daemon.address, [vd])
    assert tick(a, clock)[0].ok and tick(a, clock)[0].ok
    a.close()
    script = tmp_path / "child.py"
    script.write_text(SOURCE_CHILD)
    marker_time = clock() + 0.5
    proc = subprocess.run([sys.executable, str(script), a.path, repr(marker_time)], timeout=60)
    assert proc.returncode == -9
    a = nxstore.Cluster.open(a.path, background=False, clock=clock)
    expect = a.vdisk("db").read(0, 64 * BS)  # recovered: everything acknowledged, no more
    assert expect[3 * BS + 7:3 * BS + 7 + 1200] == b"acknowledged" * 100
    runs = tick(a, clock)
    assert runs[0].ok, runs
    a.close()
    daemon.stop()
    with nxstore.Cluster.open(path, background=False) as b:
        point = next(p for p in b.restore_points("pd") if p.name == "crashpoint")
        assert point.created_at == marker_time
        got = b.restore_point(point, "r-")[0].read(0, 64 * BS)
        assert got[:10240] == bytes(range(256)) * 40
        assert got == expect


def test_remote_killed_while_composing_keeps_the_previous_snapshot(make_cluster, clock, remote,
                                                                  tmp_path):
    path, daemon = remote("canada")
    a = make_cluster("paris", site_name="paris", clock=clock)
    a.configure_nearsync(compose_every=3.0)
    vd = a.create_vdisk("db", 512 * BS)
    protect(a, "canada", daemon.address, [vd], keep_remote=5)
    assert tick(a, clock)[0].ok
    for i in range(3):  # partial writes all over: composing patches every block
        for k in range(0, 512, 2):
            vd.write(k * BS + 100 * i, os.urandom(700))
        assert tick(a, clock)[0].ok
    a.close()
    daemon.stop()
    with nxstore.Cluster.open(path, background=False) as b:
        replica = b.vdisk("paris:db")
        *_, prev, composed = replica.snapshots()
        want_prev, want_new = prev.read(0, prev.size), composed.read(0, composed.size)
        name = composed.name
        composed.delete()  # make the compose pending again
    script = tmp_path / "compose.py"
    script.write_text(COMPOSE_CHILD)
    for delay in (0.0, 0.01, 0.03, 0.06, 0.1):
        child = subprocess.Popen([sys.executable, str(script), path], stdout=subprocess.PIPE,
                                 text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        child.kill()
        child.wait()
        with nxstore.Cluster.open(path, background=False) as b:
            snaps = {s.name: s for s in b.vdisk("paris:db").snapshots()}
            assert snaps[prev.name].read(0, prev.size) == want_prev
            if name in snaps:
                assert snaps[name].read(0, prev.size) == want_new
                snaps[name].delete()
            assert b.scrub() == []
    with nxstore.Cluster.open(path, background=False) as b:
        (made,) = b.compose_pending()
        assert made.name == name and made.read(0, made.size) == want_new
