"""Schedules and retention over simulated days (fake clock), hooks, catch-up, persistence,
and remote retention against a real `serve_cluster` target process."""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from pd_helpers import DAY, HOUR, MB, read_block, script, write_block

from nxstore import ScheduleRun
from nxstore.errors import InvalidArgument, NotFound

MINUTE = 60.0


def _pd(cl, n: int = 2, name: str = "pd"):
    vds = [cl.create_vdisk(f"{name}-v{i}", MB) for i in range(n)]
    vm = cl.create_vm(f"{name}-vm", vdisks=vds, nics=[{"network": "VLAN50"}])
    return cl.create_protection_domain(name, entities=[vm]), vm


def _count(pd, schedule) -> int:
    return sum(1 for s in pd.snapshots() if s.schedule_id == schedule.id)


def test_hourly_schedule_over_three_days_keeps_exactly_n(cl, clock):
    pd, vm = _pd(cl)
    sched = pd.add_schedule(every=timedelta(hours=1), keep_local=2)
    for hour in range(72):
        write_block(vm.vdisks[0], 0, hour)
        runs = cl.run_schedules()
        assert len(runs) == 1 and isinstance(runs[0], ScheduleRun) and runs[0].ok
        assert runs[0].missed_slots == 0
        assert _count(pd, sched) == min(hour + 1, 2)
        assert len(cl.vdisk("pd-v0").snapshots()) == min(hour + 1, 2)
        clock.advance(HOUR / 2)
        assert cl.run_schedules() == []  # not due yet
        clock.advance(HOUR / 2)
    newest = pd.snapshots()[-1]
    assert read_block(newest.members()[0].snapshot, 0) == 71


def test_several_schedules_per_pd(cl, clock):
    pd, _ = _pd(cl)
    half = pd.add_schedule(every=timedelta(minutes=30), keep_local=4)
    hourly = pd.add_schedule(every=timedelta(hours=1), keep_local=3)
    daily = pd.add_schedule(every=timedelta(days=1), keep_local=2)
    adhoc = pd.snapshot(name="manual")
    ran = {half.id: 0, hourly.id: 0, daily.id: 0}
    for _ in range(int(3 * DAY / (30 * MINUTE))):
        for run in cl.run_schedules():
            assert run.ok and run.missed_slots == 0
            ran[run.schedule_id] += 1
        clock.advance(30 * MINUTE)
    assert ran == {half.id: 2 * 72, hourly.id: 72, daily.id: 3}
    assert (_count(pd, half), _count(pd, hourly), _count(pd, daily)) == (4, 3, 2)
    assert adhoc in pd.snapshots()  # ad-hoc snapshots belong to no schedule's retention
    assert len(pd.snapshots()) == 4 + 3 + 2 + 1
    assert [s.id for s in pd.schedules()] == [half.id, hourly.id, daily.id]


def test_catch_up_after_downtime_is_one_snapshot(make_cluster, clock):
    c = make_cluster("p", clock=clock)
    pd, _ = _pd(c)
    sched = pd.add_schedule(every=timedelta(hours=1), keep_local=5)
    t0 = clock()
    assert len(c.run_schedules()) == 1
    c.close()
    clock.advance(10 * HOUR + 30 * MINUTE)  # down for ten and a half hours
    c = make_cluster.open(c.path, clock=clock)
    runs = c.run_schedules()
    assert len(runs) == 1 and runs[0].missed_slots == 9 and runs[0].due_at == t0 + HOUR
    assert c.run_schedules() == []
    pd = c.protection_domain("pd")
    assert _count(pd, sched) == 2
    (s,) = pd.schedules()
    assert s.next_due == t0 + 11 * HOUR and s.last_run == clock()  # slots stay aligned
    clock.advance(30 * MINUTE)
    assert len(c.run_schedules()) == 1


def test_schedules_persist_across_reopen(make_cluster, clock):
    c = make_cluster("p", clock=clock)
    pd, _ = _pd(c)
    pd.add_schedule(every=timedelta(hours=6), keep_local=2, app_consistent=True)
    c.run_schedules()
    before = pd.schedules()
    c = make_cluster.reopen(c, clock=clock)
    pd = c.protection_domain("pd")
    assert pd.schedules() == before
    (s,) = before
    assert s.every == timedelta(hours=6) and s.keep_local == 2 and s.app_consistent
    assert s.last_run == clock() and s.next_due == clock() + 6 * HOUR
    assert c.run_schedules() == []  # the slot that ran before the reopen does not run again
    clock.advance(6 * HOUR)
    assert len(c.run_schedules()) == 1
    pd.set_schedules_enabled(False)
    clock.advance(6 * HOUR)
    assert c.run_schedules() == []


def test_schedule_bad_input(cl):
    pd, _ = _pd(cl)
    for kwargs in ({"keep_local": 0}, {"keep_local": -1}, {"keep_local": True},
                   {"every": timedelta(0)}, {"every": timedelta(minutes=-5)},
                   {"every": timedelta(seconds=30)}, {"every": timedelta(seconds=90)},
                   {"every": 3600}, {"keep_remote": {"france": 0}},
                   {"app_consistent": "yes"}):
        args = {"every": timedelta(hours=1), "keep_local": 2, **kwargs}
        if "keep_remote" in kwargs:
            cl.add_remote_site("france", "127.0.0.1:1", "s" * 16) if not cl.remote_sites() else None
        with pytest.raises(InvalidArgument):
            pd.add_schedule(**args)
    with pytest.raises(NotFound, match="no remote site 'canada'"):
        pd.add_schedule(every=timedelta(hours=1), keep_local=2, keep_remote={"canada": 2})
    assert pd.schedules() == []


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def hook(self, tag: str, fail: bool = False, sleep: float = 0.0):
        def run(vm):
            self.calls.append(f"{tag}:{vm.name}")
            if sleep:
                time.sleep(sleep)
            if fail:
                raise RuntimeError(f"{tag} broke")
        return run


def test_app_consistent_callable_hooks(cl, clock):
    pd, vm = _pd(cl)
    rec = _Recorder()
    vm.set_hooks(pre_freeze=rec.hook("freeze"), post_thaw=rec.hook("thaw"))
    pd.add_schedule(every=timedelta(hours=1), keep_local=3, app_consistent=True)
    (run,) = cl.run_schedules()
    assert run.ok and run.consistency == "application" and rec.calls == ["freeze:pd-vm", "thaw:pd-vm"]
    assert pd.snapshots()[-1].app_consistent

    rec.calls.clear()
    vm.set_hooks(pre_freeze=rec.hook("freeze", fail=True), post_thaw=rec.hook("thaw"))
    clock.advance(HOUR)
    (run,) = cl.run_schedules()
    assert run.snapshot and run.consistency == "crash" and not run.ok
    assert [(f.phase, f.reason) for f in run.hook_failures] == [("pre-freeze", "error")]
    assert "freeze broke" in run.hook_failures[0].detail
    assert rec.calls == ["freeze:pd-vm", "thaw:pd-vm"]  # post-thaw ran anyway
    assert pd.snapshots()[-1].consistency == "crash"

    rec.calls.clear()
    vm.set_hooks(pre_freeze=rec.hook("freeze", sleep=2.0), post_thaw=rec.hook("thaw"),
                 timeout=0.2)
    clock.advance(HOUR)
    started = time.monotonic()
    (run,) = cl.run_schedules()
    assert time.monotonic() - started < 1.5
    assert run.consistency == "crash" and run.hook_failures[0].reason == "timeout"
    assert "thaw:pd-vm" in rec.calls

    vm.set_hooks(pre_freeze=rec.hook("freeze"), post_thaw=rec.hook("thaw", fail=True))
    clock.advance(HOUR)
    (run,) = cl.run_schedules()
    assert run.consistency == "crash"
    assert [(f.phase, f.reason) for f in run.hook_failures] == [("post-thaw", "error")]

    vm.power_off()  # a powered-off VM is not frozen: its hooks do not run
    rec.calls.clear()
    clock.advance(HOUR)
    (run,) = cl.run_schedules()
    assert rec.calls == [] and run.ok


def test_app_consistent_executable_hooks(cl, clock, tmp_path):
    pd, vm = _pd(cl)
    log = tmp_path / "hooks.log"
    ok = script(tmp_path, "ok.sh", f'echo "$1 $2 $NXSTORE_PD" >> {log}')
    bad = script(tmp_path, "bad.sh", f'echo "$1 failing" >> {log}; echo oops; exit 3')
    slow = script(tmp_path, "slow.sh", "sleep 20")
    pd.add_schedule(every=timedelta(hours=1), keep_local=5, app_consistent=True)

    vm.set_hooks(pre_freeze=ok, post_thaw=ok)
    (run,) = cl.run_schedules()
    assert run.ok and run.consistency == "application"
    assert log.read_text().splitlines() == ["pre-freeze pd-vm pd", "post-thaw pd-vm pd"]

    log.write_text("")
    vm.set_hooks(pre_freeze=bad, post_thaw=ok)
    clock.advance(HOUR)
    (run,) = cl.run_schedules()
    assert run.consistency == "crash"
    (failure,) = run.hook_failures
    assert failure.reason == "error" and "status 3" in failure.detail and "oops" in failure.detail
    assert log.read_text().splitlines() == ["pre-freeze failing", "post-thaw pd-vm pd"]

    log.write_text("")
    vm.set_hooks(pre_freeze=slow, post_thaw=ok, timeout=0.3)
    clock.advance(HOUR)
    started = time.monotonic()
    (run,) = cl.run_schedules()
    assert time.monotonic() - started < 5  # the script and its sleep child were killed
    assert run.consistency == "crash" and run.hook_failures[0].reason == "timeout"
    assert log.read_text().splitlines() == ["post-thaw pd-vm pd"]
    assert [s.consistency for s in pd.snapshots()] == ["application", "crash", "crash"]


def test_failed_replication_prunes_nothing_remote_and_keeps_local_count(cl, clock):
    pd, _ = _pd(cl)
    cl.add_remote_site("canada", "127.0.0.1:1", "secret" * 3)  # nothing listens there
    sched = pd.add_schedule(every=timedelta(hours=1), keep_local=2, keep_remote={"canada": 2})
    for _ in range(4):
        (run,) = cl.run_schedules()
        assert run.snapshot and run.replicated == () and "canada" in run.replication_errors
        assert run.pruned_remote == {}
        clock.advance(HOUR)
    assert _count(pd, sched) == 2
    assert all(s.replicated_to() == [] for s in pd.snapshots())


# -- remote retention with a real target process ---------------------------------------------

SECRET = "s3cret-for-tests"


def _start_target(path: str, port: int = 0) -> tuple[subprocess.Popen, int, list[str]]:
    code = ("import logging; logging.basicConfig(level=logging.INFO); "
            "from nxstore.cli.serve import serve_cluster; "
            f"serve_cluster({path!r}, '127.0.0.1:{port}', {SECRET!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    port = None
    deadline = time.monotonic() + 30
    while port is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(r"serving site \S+ .* on 127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
    if port is None:
        proc.kill()
        raise AssertionError("target did not start:\n" + "".join(lines))
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    return proc, port, lines


class Target:
    """The cluster "canada" at `path`, served by a real `serve_cluster` process while
    started (again on the same port after a stop)."""

    def __init__(self, path: str) -> None:
        self.path, self.port, self.proc, self.lines = path, 0, None, []

    def start(self) -> None:
        self.proc, self.port, self.lines = _start_target(self.path, self.port)

    def stop(self) -> None:
        """SIGTERM; the process must exit cleanly."""
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == 0, "".join(self.lines)


@pytest.fixture
def canada(make_cluster, tmp_path):
    target = Target(str(tmp_path / "canada"))
    make_cluster("canada", site_name="canada").close()
    target.start()
    yield target
    if target.proc is not None:  # the test failed before stopping it
        target.proc.kill()
        target.proc.wait(timeout=30)


def _france(make_cluster, clock, canada: Target):
    c = make_cluster("france", site_name="france", clock=clock)
    c.add_remote_site("canada", f"127.0.0.1:{canada.port}", SECRET)
    return c


def test_remote_retention_with_real_target(make_cluster, clock, canada):
    c = _france(make_cluster, clock, canada)
    pd, vm = _pd(c)
    sched = pd.add_schedule(every=timedelta(hours=1), keep_local=2, keep_remote={"canada": 3})
    for hour in range(6):
        for i, vd in enumerate(vm.vdisks):
            write_block(vd, hour, 100 * i + hour + 1)
        (run,) = c.run_schedules()
        assert run.ok, run
        assert run.replicated == ("canada",)
        assert _count(pd, sched) == min(hour + 1, 2)
        if hour >= 3:
            assert len(run.pruned_remote["canada"]) == 2  # one per member vDisk
        clock.advance(HOUR)
    names = [s.name for s in pd.snapshots()]
    newest = pd.snapshots()[-1]
    assert newest.replicated_to() == ["canada"]
    canada.stop()
    t = make_cluster.open(canada.path)
    replicas = {r.source_vdisk: r for r in t.replicas()}
    assert set(replicas) == {"pd-v0", "pd-v1"}
    for i, name in enumerate(("pd-v0", "pd-v1")):
        snaps = replicas[name].snapshots
        assert len(snaps) == 3
        assert [s.name for s in snaps][-2:] == names
        assert [read_block(snaps[-1], h) for h in range(6)] == [100 * i + h + 1 for h in range(6)]
    assert os.path.isdir(canada.path)


def test_two_schedules_to_one_site_keep_their_own_remote_counts(make_cluster, clock, canada):
    """Hourly keep_remote 2 and two-hourly keep_remote 3 to one site, both keeping fewer
    here than there, ad-hoc snapshots there too, and an outage of the site midway: every
    run prunes exactly the schedule's own copies beyond its count (none while the site
    is down), and the site ends with 2 + 3 scheduled copies and the ad-hoc ones."""
    c = _france(make_cluster, clock, canada)
    pd, vm = _pd(c)
    vdisks = [vd.name for vd in vm.vdisks]
    hourly = pd.add_schedule(every=timedelta(hours=1), keep_local=1, keep_remote={"canada": 2})
    two_hourly = pd.add_schedule(every=timedelta(hours=2), keep_local=2, keep_remote={"canada": 3})
    keep = {hourly.id: 2, two_hourly.id: 3}
    there: dict[int, list[str]] = {hourly.id: [], two_hourly.id: []}  # the model
    adhoc = [pd.snapshot(replicate_to=["canada"], name="adhoc-0").name]
    for hour in range(16):
        down = 7 <= hour < 10
        if hour == 7:
            canada.stop()
        if hour == 10:
            canada.start()
        if hour == 12:
            adhoc.append(pd.snapshot(replicate_to=["canada"], name="adhoc-1").name)
        for i, vd in enumerate(vm.vdisks):
            write_block(vd, hour, 100 * i + hour + 1)
        runs = c.run_schedules()
        assert sorted(r.schedule_id for r in runs) == sorted(
            [hourly.id] + ([two_hourly.id] if hour % 2 == 0 else []))
        for run in runs:
            assert run.snapshot
            if down:
                assert "canada" in run.replication_errors and run.pruned_remote == {}
                continue
            assert run.ok, run.summary()
            n = keep[run.schedule_id]
            mine = [*there[run.schedule_id], run.snapshot]
            doomed, there[run.schedule_id] = mine[:-n], mine[-n:]
            assert sorted(run.pruned_remote["canada"]) == sorted(
                f"{vd}@{name}" for vd in vdisks for name in doomed)
        clock.advance(HOUR)
    assert [len(v) for v in there.values()] == [2, 3]
    assert _count(pd, hourly) == 1 and _count(pd, two_hourly) == 2
    canada.stop()
    t = make_cluster.open(canada.path)
    replicas = {r.source_vdisk: r for r in t.replicas()}
    assert set(replicas) == set(vdisks)
    expected = set(adhoc) | set(there[hourly.id]) | set(there[two_hourly.id])
    for i, name in enumerate(vdisks):
        snaps = replicas[name].snapshots
        assert {s.name for s in snaps} == expected and len(snaps) == 7
        assert [read_block(snaps[-1], h) for h in range(16)] == [100 * i + h + 1 for h in range(16)]


def test_removed_schedule_forgets_its_remote_copies(make_cluster, clock, canada):
    """A removed schedule's copies stay at the site, counted by no one; the remaining
    schedule's retention never touches them."""
    c = _france(make_cluster, clock, canada)
    pd, _ = _pd(c, n=1)
    old = pd.add_schedule(every=timedelta(hours=1), keep_local=1, keep_remote={"canada": 1})
    kept = []
    for _ in range(2):
        (run,) = c.run_schedules()
        assert run.ok
        kept.append(run.snapshot)
        clock.advance(HOUR)
    pd.remove_schedule(old)
    new = pd.add_schedule(every=timedelta(hours=1), keep_local=1, keep_remote={"canada": 1})
    news = []
    for _ in range(3):
        (run,) = c.run_schedules()
        assert run.ok and run.schedule_id == new.id
        assert run.pruned_remote == {"canada": tuple(f"pd-v0@{n}" for n in news[-1:])}
        news.append(run.snapshot)
        clock.advance(HOUR)
    canada.stop()
    (replica,) = make_cluster.open(canada.path).replicas()
    assert [s.name for s in replica.snapshots] == [kept[1], news[-1]]


def test_remote_retention_against_an_older_build_fails_clearly_then_catches_up(
        make_cluster, clock, canada, monkeypatch):
    """While the site speaks only protocol version 2 (an older build: no prune by name),
    snapshots still replicate and the run says why retention failed there; the copies
    stay recorded, and the first run that can prune deletes all of them beyond the count."""
    from nxstore.replication import auth
    from nxstore.replication.transport import tcp

    c = _france(make_cluster, clock, canada)
    pd, _ = _pd(c, n=1)
    pd.add_schedule(every=timedelta(hours=1), keep_local=1, keep_remote={"canada": 1})
    names = []
    with monkeypatch.context() as m:
        m.setattr(tcp, "client_handshake",
                  functools.partial(auth.client_handshake, versions=(2, 2)))
        for hour in range(3):
            (run,) = c.run_schedules()
            names.append(run.snapshot)
            assert run.replicated == ("canada",)
            assert run.pruned_remote == ({} if hour else {"canada": ()})
            if hour:
                assert re.fullmatch(
                    r"replicated, but remote retention failed: site 'canada' speaks "
                    r"replication protocol version 2; deleting replica snapshots by name "
                    r"needs version 3: upgrade nxstore there \(nothing was deleted\)",
                    run.replication_errors["canada"])
            clock.advance(HOUR)
    (run,) = c.run_schedules()
    assert run.ok
    assert sorted(run.pruned_remote["canada"]) == [f"pd-v0@{n}" for n in names]
    canada.stop()
    (replica,) = make_cluster.open(canada.path).replicas()
    assert [s.name for s in replica.snapshots] == [run.snapshot]
