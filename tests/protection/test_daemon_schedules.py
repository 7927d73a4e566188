"""Schedules run by `nxstore serve` itself, on a simulated clock (`--clock-file`): real
daemon processes for every site, simulated days, exact retention counts at every site
(checked with the daemons stopped), failures that must not stop the scheduler, the
RPO of an activate after the owner's daemon is killed, and three daemons replicating
to each other at the same instants."""

from __future__ import annotations

import logging
import re
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
from failover_helpers import VDISKS, Sites, image, setup_pd

from nxstore.cli.serve import FileClock, run_due_schedules
from nxstore.errors import InvalidArgument

HOUR = 3600.0
_RUN_RE = re.compile(r"schedule run: PD (\S+) schedule \d+: snapshot (\S+) ")


def runs(d, pd: str = "pd-web") -> list[str]:
    """Snapshot names of the schedule runs daemon `d` logged for `pd`, in order."""
    return [m.group(2) for line in d.lines if (m := _RUN_RE.search(line)) and m.group(1) == pd]


def wait_for(what, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"timed out waiting for {what.__doc__ or what}"
        time.sleep(0.02)


def wait_runs(d, n: int, pd: str = "pd-web") -> list[str]:
    wait_for(lambda: len(runs(d, pd)) >= n)
    return runs(d, pd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sites(tmp_path, clock):
    s = Sites(tmp_path, clock, ["france", "canada"])
    yield s
    s.cleanup()


def test_daemon_runs_schedules_over_simulated_days(sites, clock):
    """france's daemon runs a 4-hourly schedule (keep 2 here, 3 at canada) over three
    simulated days; canada goes down for one slot, the clock file is garbage for a
    while, a ten-hour jump is one catch-up snapshot: the counts come out exact."""
    port = free_port()
    sites.serve("canada", port=port)
    fr = sites.open("france")
    pd = setup_pd(fr, schedule=False)
    pd.add_schedule(every=timedelta(hours=4), keep_local=2, keep_remote={"canada": 3},
                    start=clock() + 4 * HOUR)
    d = sites.serve("france", schedules=0.05)
    for slot in range(1, 10):
        sites.advance(4 * HOUR)
        wait_runs(d, slot)
    sites.stop("canada")  # down for one slot: the run fails, the daemon goes on
    sites.advance(4 * HOUR)
    wait_for(lambda: "FAILED canada" in d.stderr)
    sites.serve("canada", port=port)
    Path(sites.clock_file).write_text("not a time\n")
    wait_for(lambda: "does not hold epoch seconds" in d.stderr)
    sites.advance(10 * HOUR)  # one catch-up snapshot for the two slots missed
    taken = wait_runs(d, 11)
    assert "catch-up for 1 missed slot(s)" in d.stderr
    for slot in range(12, 18):
        sites.advance(4 * HOUR)
        taken = wait_runs(d, slot)
    time.sleep(0.3)  # a few more scheduler passes: nothing else is due
    assert len(runs(d)) == 17 and d.running
    sites.stop("france")
    sites.stop("canada")
    fr = sites.open("france")
    pd = fr.protection_domain("pd-web")
    assert [s.name for s in pd.snapshots()] == taken[-2:]
    assert all([s.name for s in fr.vdisk(n).snapshots()] == taken[-2:] for n in VDISKS)
    assert pd.snapshots()[-1].replicated_to() == ["canada"]
    ca = sites.open("canada")
    for n in VDISKS:
        snaps = ca.vdisk(f"france:{n}").snapshots()
        assert [s.name for s in snaps] == taken[-3:]
        assert image(snaps[-1]) == image(fr.vdisk(n))
    cpd = ca.protection_domain("pd-web")
    assert cpd.state == "inactive" and [s.name for s in cpd.snapshots()] == taken[-3:]


def test_daemon_rpo_of_activate_is_the_interval(sites, clock):
    """france's daemon replicates hourly; it is killed 40 simulated minutes after its
    last snapshot: canada activates from that snapshot (RPO: at most one interval)."""
    sites.serve("canada")
    fr = sites.open("france")
    setup_pd(fr, schedule=False).add_schedule(every=timedelta(hours=1), keep_local=2,
                                             keep_remote={"canada": 2}, start=clock() + HOUR)
    expect = {n: image(fr.vdisk(n)) for n in VDISKS}
    d = sites.serve("france", schedules=0.05)
    for hour in range(1, 4):
        sites.advance(HOUR)
        taken = wait_runs(d, hour)
    sites.advance(40 * 60)
    t_disaster = clock()
    sites.kill("france")
    sites.stop("canada")
    ca = sites.open("canada")
    res = ca.activate("pd-web")  # france does not answer: taken as gone
    assert res.snapshot == taken[-1] and res.epoch == 2
    assert t_disaster - res.snapshot_created_at == 40 * 60
    assert {n: image(ca.vdisk(n)) for n in VDISKS} == expect
    assert sorted(v.name for v in ca.vms()) == ["app", "db", "web"]


def test_three_daemons_replicating_to_each_other(tmp_path, clock):
    """Three `nxstore serve` processes on one simulated clock: france owns pd-web
    (replicated to canada and uk), canada owns pd-ca (replicated to france and uk);
    both fire at the same instants, so france and canada replicate to each other
    at once. Every site ends with exact counts."""
    sites = Sites(tmp_path, clock, ["france", "canada", "uk"])
    try:
        sites.ports = {n: f"127.0.0.1:{free_port()}" for n in sites.names}
        fr = sites.open("france")
        pd = setup_pd(fr, schedule=False)
        pd.add_schedule(every=timedelta(hours=1), keep_local=2,
                        keep_remote={"canada": 2, "uk": 3}, start=clock() + HOUR)
        ca = sites.open("canada")
        ca.create_vdisk("ledger", 16 * 4096).write(0, b"ledger" * 1000)
        cpd = ca.create_protection_domain("pd-ca", entities=["ledger"])
        cpd.add_schedule(every=timedelta(hours=1), keep_local=3,
                         keep_remote={"france": 2, "uk": 2}, start=clock() + HOUR)
        d = {n: sites.serve(n, schedules=0.05, port=int(sites.ports[n].rsplit(":", 1)[1]))
             for n in sites.names}
        for hour in range(1, 6):
            sites.advance(HOUR)
            web = wait_runs(d["france"], hour)
            led = wait_runs(d["canada"], hour, pd="pd-ca")
        assert "FAILED" not in d["france"].stderr + d["canada"].stderr
        for n in sites.names:
            sites.stop(n)
        fr, ca, uk = (sites.open(n) for n in sites.names)
        assert [s.name for s in fr.protection_domain("pd-web").snapshots()] == web[-2:]
        assert [s.name for s in ca.protection_domain("pd-ca").snapshots()] == led[-3:]
        assert [s.name for s in fr.vdisk("canada:ledger").snapshots()] == led[-2:]
        assert [s.name for s in uk.vdisk("canada:ledger").snapshots()] == led[-2:]
        for n in VDISKS:
            assert [s.name for s in ca.vdisk(f"france:{n}").snapshots()] == web[-2:]
            assert [s.name for s in uk.vdisk(f"france:{n}").snapshots()] == web[-3:]
        assert image(uk.vdisk("canada:ledger").snapshots()[-1]) == image(ca.vdisk("ledger"))
        for c, name, owner in ((uk, "pd-web", "france"), (uk, "pd-ca", "canada"),
                               (fr, "pd-ca", "canada"), (ca, "pd-web", "france")):
            p = c.protection_domain(name)
            assert (p.state, p.owner_site, p.epoch) == ("inactive", owner, 1)
    finally:
        sites.cleanup()


# -- the scheduler pass and the clock file, in process ----------------------------------------

def test_a_failing_schedule_pass_is_logged_not_raised(cl, monkeypatch, caplog):
    def broken():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cl, "run_schedules", broken)
    with caplog.at_level(logging.ERROR, "nxstore.cli.serve"):
        run_due_schedules(cl)
    assert "schedule pass failed" in caplog.text and "No space left" in caplog.text


def test_file_clock(tmp_path, caplog):
    path = tmp_path / "clock"
    with pytest.raises(InvalidArgument, match="cannot read clock file"):
        FileClock(str(path))
    for bad in ("", "soon", "nan", "inf"):
        path.write_text(bad)
        with pytest.raises(InvalidArgument, match="does not hold epoch seconds"):
            FileClock(str(path))
    path.write_text("1700000000.5\n")
    clock = FileClock(str(path))
    assert clock() == 1700000000.5
    path.write_text("1700003600")
    assert clock() == 1700003600.0
    path.write_text("garbage")
    with caplog.at_level(logging.WARNING, "nxstore.cli.serve"):
        assert clock() == clock() == 1700003600.0  # the last good value, warned once
    assert caplog.text.count("does not hold epoch seconds") == 1


def test_serve_rejects_a_bad_clock_file_and_interval(tmp_path, capsys):
    from nxstore.cli import main

    secret = tmp_path / "secret"
    secret.write_text("a shared secret of 32 characters")
    secret.chmod(0o600)
    assert main(["create", str(tmp_path / "c")]) == 0
    base = ["serve", str(tmp_path / "c"), "--listen", "127.0.0.1:0", "--secret-file", str(secret)]
    capsys.readouterr()
    assert main([*base, "--clock-file", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read clock file" in err
    assert main([*base, "--schedule-interval", "-1"]) == 2
    assert "bad number of seconds" in capsys.readouterr().err
