"""The NearSync commands as real subprocesses: `lws`, `nearsync config`, `pd nearsync`,
`pd restore-points`, `pd restore-point`, and seconds in `pd schedule --every`. The NearSync
history itself is made in-process (fake clock, real `nxstore serve` remote), then the
commands run on the closed clusters; every failure is one `nxstore: error:` line with exit
status 1 (2 for usage errors)."""

from __future__ import annotations

import json
import os

import pytest
from ns_helpers import BS, protect, tick
from test_cli import nx, one_error_line

import nxstore
from nxstore.errors import InvalidArgument
from nxstore.nearsync import NearSyncConfig


def test_lws_command(tmp_path):
    path = str(tmp_path / "c")
    nx("create", path, "--block-size", "4K")
    for name in ("db", "log"):
        nx("vdisk", "create", path, name, "1M")
    out = nx("lws", path, "db", "log").stdout
    assert out.startswith("LWS lws-") and "of db, log at " in out
    assert "LWS before-upgrade (marker seq " in nx("lws", path, "db", "--name", "before-upgrade").stdout
    nx("pd", "create", path, "pd", "db")
    assert "of db at " in nx("lws", path, "--pd", "pd").stdout
    one_error_line(nx("lws", path, rc=1), "VDISK names or --pd")
    one_error_line(nx("lws", path, "db", "--pd", "pd", rc=1), "not both")
    one_error_line(nx("lws", path, "nosuch", rc=1), "nosuch")
    one_error_line(nx("lws", path, "--pd", "nosuch", rc=1), "nosuch")
    one_error_line(nx("lws", path, "db", "db", rc=1), "each named once")
    one_error_line(nx("lws", path, "db", "--name", "bad/name", rc=1), "bad/name")


def test_schedule_in_seconds_needs_a_remote(tmp_path):
    path = str(tmp_path / "c")
    nx("create", path)
    nx("vdisk", "create", path, "db", "1M")
    nx("pd", "create", path, "pd", "db")
    one_error_line(nx("pd", "schedule", path, "pd", "--every", "10s", "--keep", "2", rc=1),
                   "whole seconds for a NearSync schedule")
    one_error_line(nx("pd", "schedule", path, "pd", "--every", "10x", "--keep", "2", rc=2),
                   "10s, 30m")


def test_nearsync_state_restore_points_and_restore(make_cluster, clock, remote):
    dst, daemon = remote("canada")
    a = make_cluster("paris", site_name="paris", clock=clock)
    vd = a.create_vdisk("db", 16 * BS)
    vd.write(0, os.urandom(8 * BS))
    protect(a, "canada", daemon.address, [vd])
    assert tick(a, clock)[0].ok                      # seeded
    images = {}
    for i in range(3):
        vd.write(i * 5000, os.urandom(3000))
        images[i] = vd.read(0, vd.size)
        assert tick(a, clock)[0].ok
    src = a.path
    a.close()

    out = nx("pd", "nearsync", src, "pd", "--history").stdout
    assert out.splitlines()[0].split()[:3] == ["SITE", "STATE", "SINCE"]
    assert out.splitlines()[1].split()[:2] == ["canada", "nearsync"]
    assert "canada: " in out and "seeding -> nearsync" in out
    info = json.loads(nx("pd", "nearsync", src, "pd", "--json").stdout)["canada"]
    assert info["state"] == "nearsync" and info["shipped_seq"] > 0
    assert info["rpo_s"] is not None and [h["new"] for h in info["history"]] == ["seeding", "nearsync"]
    one_error_line(nx("pd", "nearsync", src, "nosuch", rc=1), "nosuch")
    one_error_line(nx("pd", "restore-points", src, "pd", rc=1), "no NearSync restore points")

    daemon.stop()
    points = json.loads(nx("pd", "restore-points", dst, "pd", "--json").stdout)
    lws = [p for p in points if p["kind"] == "lws"]
    assert [p["kind"] for p in points].count("snapshot") >= 1 and len(lws) == 3
    listing = nx("pd", "restore-points", dst, "pd").stdout
    assert all(p["name"] in listing for p in points)

    out = nx("pd", "restore-point", dst, "pd", lws[0]["name"], "--prefix", "r0-").stdout
    assert out.startswith(f"restored lws {lws[0]['name']} of ") and "r0-db" in out
    nx("pd", "restore-point", dst, "pd", str(lws[1]["seq"]), "--prefix", "r1-")
    nx("pd", "restore-point", dst, "pd", "--latest", "--prefix", "r2-")
    for i in range(3):
        image = str(dst) + f".r{i}.raw"
        nx("export", dst, f"r{i}-db", image)
        with open(image, "rb") as f:
            assert f.read() == images[i], f"restore point {i}"

    one_error_line(nx("pd", "restore-point", dst, "pd", "nosuch", "--prefix", "x-", rc=1),
                   "no restore point 'nosuch'")
    one_error_line(nx("pd", "restore-point", dst, "pd", "--prefix", "x-", rc=1), "--latest")
    one_error_line(nx("pd", "restore-point", dst, "pd", "--latest", "--prefix", "r0-", rc=1),
                   "r0-db")
    one_error_line(nx("pd", "restore-points", dst, "other", rc=1), "'other'")


def test_nearsync_config_is_kept_in_the_catalogue(tmp_path):
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, background=False) as c:
        assert c.nearsync_config() == NearSyncConfig()  # the defaults
        c.configure_nearsync(compose_every=600, lag_threshold=120)
        for bad in ({"ship_timeout": 0}, {"max_interval": 0.5}, {"lag_threshold": float("nan")},
                    {"compose_every": "1h"}, {"bogus": 1}):
            with pytest.raises(InvalidArgument):
                c.configure_nearsync(**bad)
    with nxstore.Cluster.open(path, background=False) as c:  # kept, bad ones changed nothing
        cfg = c.nearsync_config()
        assert (cfg.compose_every, cfg.lag_threshold, cfg.max_interval, cfg.ship_timeout) == (
            600, 120, 900, 60)

    out = nx("nearsync", "config", path).stdout.splitlines()
    assert out[0].split() == ["SETTING", "VALUE", "MEANING"]
    assert out[3].split()[:3] == ["compose_every", "600", "s"]
    out = nx("nearsync", "config", path, "--ship-timeout", "2m", "--max-interval", "30").stdout
    assert "ship_timeout   120 s" in out and "max_interval   30 s" in out
    one_error_line(nx("nearsync", "config", path, "--lag-threshold", "-5", rc=1),
                   "lag_threshold must be a positive number")
    one_error_line(nx("nearsync", "config", path, "--compose-every", "soon", rc=2), "soon")
    with nxstore.Cluster.open(path, background=False) as c:
        assert c.nearsync_config().ship_timeout == 120 and c.nearsync_config().lag_threshold == 120
