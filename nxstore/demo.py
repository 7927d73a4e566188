"""`python -m nxstore.demo` (`make demo`): the two-site disaster-recovery scenario of
seeds 001/002, on loopback, checked byte for byte.

Two sites, "france" and "canada", each a cluster in ./demo-data/<site>. A site is
either served by its own `nxstore serve` process (a real daemon on 127.0.0.1, a
temporary shared secret) or open in this process: the operator's console, which
runs the workflows on a simulated clock (hours pass in milliseconds). A cluster is
opened by one process at a time, so "going to a site's console" stops its daemon,
and leaving it starts the daemon again.

    1. france protects three VMs (web, app, db; app+db a consistency group) in
       PD "pd-web": hourly snapshots, 2 kept at france and 2 at canada; data is
       written between snapshots for 3 hours.
    2. planned migration to canada (seed 001's six steps); canada runs 2 hours and
       replicates back to france; then the PD migrates home again.
    3. france runs 2 more hours, writes more after its last snapshot, and the
       operator moves to canada's console (france keeps serving).
    4. disaster: france's daemon is killed with SIGKILL. canada activates the PD:
       the VMs come up from the newest PD snapshot france replicated (the writes
       after it are lost: the RPO, at most one interval).
    5. france comes back (its daemon restarts after the crash). canada fails back:
       france learns it was activated elsewhere and demotes itself, only the
       blocks changed since the newest common snapshot cross the wire, and the PD
       migrates home.

Every step is checked (whole vDisk images against what was written); the report
says what happened. Exit status 1 on any mismatch. `--single-site` runs the older
single-site walkthrough (nxstore.demo_single_site).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np

from . import Cluster
from .errors import NotFound, NxError

MiB = 1 << 20
HOUR = 3600.0
SITES = ("france", "canada")
NETWORKS = {"france": {"VLAN50": "VLAN150"}, "canada": {"VLAN150": "VLAN50"}}
VDISKS = {"web-os": 8 * MiB, "app-os": 8 * MiB, "db-os": 8 * MiB, "db-data": 16 * MiB}
WRITE = 64 * 1024  # bytes per simulated guest write
_PORT_RE = re.compile(r"serving site (\S+) \(cluster (\w+)\) on 127\.0\.0\.1:(\d+)")


class Clock:
    """The simulated cluster clock (seconds), starting 2026-01-05 08:00 UTC."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc).timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def text(self, ts: float | None = None) -> str:
        return datetime.fromtimestamp(self.now if ts is None else ts, timezone.utc).strftime(
            "%a %H:%M")


class Mismatch(Exception):
    pass


class Sites:
    """The two sites: daemons and the operator's console (see module docstring)."""

    def __init__(self, root: str, clock: Clock, secret_file: str, secret: str) -> None:
        self.root, self.clock = root, clock
        self.secret_file, self.secret = secret_file, secret
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.addr: dict[str, str] = {}
        self.console: dict[str, Cluster] = {}

    def path(self, site: str) -> str:
        return os.path.join(self.root, site)

    def _point(self, c: Cluster) -> None:
        for other in SITES:
            if other == c.site_name:
                continue
            with contextlib.suppress(NotFound):
                c.remove_remote_site(other)
            c.add_remote_site(other, self.addr.get(other, "127.0.0.1:1"), self.secret,
                              network_mapping=NETWORKS[c.site_name])

    def open(self, site: str) -> Cluster:
        """Go to `site`'s console (its daemon stops)."""
        if site in self.console:
            return self.console[site]
        self.stop(site)
        c = Cluster.open(self.path(site), background=False, clock=self.clock)
        self._point(c)
        self.console[site] = c
        return c

    def serve(self, site: str) -> None:
        """Leave `site`'s console (if open) and start its `nxstore serve`."""
        c = self.console.pop(site, None) or Cluster.open(self.path(site), background=False,
                                                          clock=self.clock)
        self._point(c)  # its peers, at their current addresses
        c.close()
        proc = subprocess.Popen(
            # The console runs the schedules on the simulated clock: the daemons only
            # answer their peers (their scheduler would read the real clock).
            [sys.executable, "-m", "nxstore.cli", "serve", self.path(site), "--listen",
             "127.0.0.1:0", "--secret-file", self.secret_file, "--schedule-interval", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                m = _PORT_RE.search(line)
                if m and not ready.is_set():
                    port.append(m.group(3))
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30):
            proc.kill()
            raise Mismatch(f"nxstore serve {site} did not start")
        self.procs[site] = proc
        self.addr[site] = f"127.0.0.1:{port[0]}"
        for c in self.console.values():
            self._point(c)

    def stop(self, site: str) -> None:
        proc = self.procs.pop(site, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if proc.wait(30) != 0:
                raise Mismatch(f"nxstore serve {site} exited with {proc.returncode}")

    def kill(self, site: str) -> int:
        proc = self.procs.pop(site)
        pid = proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return pid

    def close_all(self) -> None:
        for site in list(self.console):
            self.console.pop(site).close()
        for site in list(self.procs):
            proc = self.procs.pop(site)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# -- checks and report ---------------------------------------------------------------------------

class Report:
    def __init__(self) -> None:
        self.checks = 0
        self.t0 = time.perf_counter()

    def step(self, title: str) -> None:
        print(f"\n== {title}")

    def say(self, text: str) -> None:
        print(f"   {text}")

    def check(self, ok: bool, what: str) -> None:
        self.checks += 1
        print(f"   [{'ok' if ok else 'MISMATCH'}] {what}")
        if not ok:
            raise Mismatch(what)


def images(c: Cluster) -> dict[str, bytes]:
    return {n: c.vdisk(n).read(0, c.vdisk(n).size) for n in VDISKS}


def digest(imgs: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for n in sorted(imgs):
        h.update(imgs[n])
    return h.hexdigest()[:16]


def guest_writes(c: Cluster, rng: np.random.Generator, n: int) -> int:
    """`n` random 64 KiB writes over the VMs' vDisks (incompressible data)."""
    for _ in range(n):
        name = list(VDISKS)[int(rng.integers(len(VDISKS)))]
        off = int(rng.integers(VDISKS[name] // WRITE)) * WRITE
        c.vdisk(name).write(off, rng.integers(0, 256, WRITE, dtype=np.uint8).tobytes())
    return n * WRITE


def run_hours(c: Cluster, clock: Clock, rep: Report, rng: np.random.Generator, hours: int,
              expect_ok: bool = True) -> None:
    for _ in range(hours):
        clock.advance(HOUR)
        guest_writes(c, rng, 12)
        for run in c.run_schedules():
            sent = ", ".join(run.replicated) or "-"
            errs = "; ".join(f"{s}: {e[:70]}" for s, e in run.replication_errors.items())
            rep.say(f"{clock.text()} {c.site_name}: snapshot {run.snapshot} -> {sent}"
                    f"{'  pruned ' + ','.join(run.pruned_local) if run.pruned_local else ''}"
                    f"{'  FAILED ' + errs if errs else ''}")
            if expect_ok:
                rep.check(run.ok, f"schedule run at {clock.text()} replicated")


def check_site(rep: Report, c: Cluster, expect: dict[str, bytes], vms_on: set[str]) -> None:
    got = images(c)
    rep.check(got == expect, f"{c.site_name}: all {len(VDISKS)} vDisks byte for byte "
              f"(sha256 {digest(got)} == {digest(expect)})")
    rep.check({v.name for v in c.vms()} == {"web", "app", "db"},
              f"{c.site_name}: VMs web, app, db registered")
    rep.check({v.name for v in c.vms() if v.power_state == "on"} == vms_on,
              f"{c.site_name}: powered on: {', '.join(sorted(vms_on)) or 'none'}")
    nets = {n["network"] for n in c.vm("web").nics}
    rep.check(nets == ({"VLAN50"} if c.site_name == "france" else {"VLAN150"}),
              f"{c.site_name}: web's NIC on {', '.join(nets)} (network mapping)")


def owner_check(rep: Report, c: Cluster, state: str, epoch: int) -> None:
    pd = c.protection_domain("pd-web")
    rep.check(pd.state == state and pd.epoch == epoch,
              f"{c.site_name}: pd-web {pd.state}, owner {pd.owner_site}, epoch {pd.epoch}")


# -- the scenario ---------------------------------------------------------------------------------

def scenario(sites: Sites, clock: Clock, rep: Report, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for site in SITES:
        Cluster.create(sites.path(site), site_name=site, background=False).close()

    rep.step("1. france protects three VMs; hourly snapshots, 2 kept at france and 2 at canada")
    sites.serve("canada")
    fr = sites.open("france")
    rep.say(f"canada: nxstore serve on {sites.addr['canada']}; france: operator console")
    for name, size in VDISKS.items():
        fr.create_vdisk(name, size)
    guest_writes(fr, rng, 64)
    web = fr.create_vm("web", vdisks=["web-os"], nics=[{"network": "VLAN50"}],
                       categories={"app": "shop"})
    app = fr.create_vm("app", vdisks=["app-os"], nics=[{"network": "VLAN50"}])
    db = fr.create_vm("db", vdisks=["db-os", "db-data"], nics=[{"network": "VLAN50"}])
    pd = fr.create_protection_domain("pd-web", entities=[web, app, db])
    pd.add_consistency_group("app+db", [app, db])
    pd.add_schedule(every=timedelta(hours=1), keep_local=2, keep_remote={"canada": 2},
                    start=clock() + HOUR)
    rep.say("pd-web: web, app, db (CG app+db); every 1h, keep 2 local, keep 2 at canada")
    run_hours(fr, clock, rep, rng, 3)
    rep.check(len(pd.snapshots()) == 2, f"france keeps {len(pd.snapshots())} PD snapshots")
    on = {"web", "app", "db"}

    rep.step("2. planned migration to canada (stop VMs, final snapshot, remove, disable "
             "schedules, register at canada, reverse)")
    guest_writes(fr, rng, 8)  # after the last scheduled snapshot: migrate must not lose it
    expect = images(fr)
    t = time.perf_counter()
    res = pd.migrate("canada")
    rep.say(f"migrate: {' -> '.join(res.steps)} in {time.perf_counter() - t:.2f} s; "
            f"final snapshot {res.snapshot}; {res.replication.blocks_sent if res.replication else 0}"
            " blocks sent")
    rep.check(fr.vms() == [] and pd.state == "inactive",
              "france: VMs removed, pd-web inactive (vDisks kept as replicas)")
    sites.serve("france")
    ca = sites.open("canada")
    held = [s.name for s in ca.vdisk("db-data").snapshots()]
    rep.check(held == ["pd-web.000002", "pd-web.000003", res.snapshot],
              f"canada held 2 scheduled snapshots (remote retention) + the final one: "
              f"{', '.join(held)}")
    check_site(rep, ca, expect, set())  # a migrate leaves the VMs off unless power_on=True
    for vm in ca.vms():
        vm.power_on()
    rep.say("canada: the operator starts web, app, db (a migrate registers them powered off)")
    owner_check(rep, ca, "active", 2)
    rep.check(ca.protection_domain("pd-web").schedules()[0].keep_remote == {"france": 2},
              "canada's schedule now replicates to france")
    run_hours(ca, clock, rep, rng, 2)
    expect = images(ca)

    rep.step("   ... and home again: migrate canada -> france, powering the VMs on there")
    res = ca.protection_domain("pd-web").migrate("france", power_on=True)
    rep.say(f"migrate: final snapshot {res.snapshot}, "
            f"{res.replication.blocks_total if res.replication else 0} blocks changed since "
            f"{res.replication.base_snapshot if res.replication else '-'}")
    sites.serve("canada")
    fr = sites.open("france")
    check_site(rep, fr, expect, on)
    owner_check(rep, fr, "active", 3)

    rep.step("3. france runs on; the last writes come after its newest snapshot")
    run_hours(fr, clock, rep, rng, 2)
    pd = fr.protection_domain("pd-web")
    newest = pd.snapshots()[-1]
    at_newest = {m.snapshot.vdisk_name: m.snapshot.read(0, m.snapshot.size)
                 for m in newest.members()}
    clock.advance(40 * 60)
    lost = guest_writes(fr, rng, 10)
    rep.say(f"{clock.text()} france: {lost // 1024} KiB written since {newest.name} "
            f"({clock.text(newest.created_at)})")
    t_disaster = clock()
    sites.serve("france")  # the operator goes to canada; france keeps serving
    ca = sites.open("canada")

    rep.step("4. disaster: france is killed (SIGKILL); canada activates pd-web")
    pid = sites.kill("france")
    rep.say(f"kill -9 {pid} (france's nxstore serve)")
    act = ca.activate("pd-web")
    rpo = t_disaster - act.snapshot_created_at
    rep.say(f"activated from {act.snapshot} ({clock.text(act.snapshot_created_at)}), epoch "
            f"{act.epoch}; writes after it are lost: {rpo / 60:.0f} min of data")
    rep.check(act.snapshot == newest.name, "canada used france's newest replicated snapshot")
    rep.check(0 < rpo <= HOUR, "the data lost is at most one interval (RPO = 1 h)")
    check_site(rep, ca, at_newest, on)
    owner_check(rep, ca, "active", 4)
    run_hours(ca, clock, rep, rng, 1, expect_ok=False)  # france is down: replication fails

    rep.step("5. france returns; canada fails back (deltas only) and migrates home")
    sites.serve("france")
    rep.say(f"france: nxstore serve restarted after the crash on {sites.addr['france']}")
    guest_writes(ca, rng, 4)
    expect = images(ca)
    fb = ca.protection_domain("pd-web").failback(power_on=True)
    total_blocks = sum(VDISKS.values()) // ca.block_size
    rep.say(f"reprotect: {fb.reprotect.blocks_total} of {total_blocks} blocks changed since "
            f"{fb.reprotect.base_snapshot}, {fb.reprotect.bytes_on_wire // 1024} KiB on the wire")
    rep.check(fb.reprotect.base_snapshot is not None
              and fb.reprotect.blocks_total < total_blocks // 4,
              "failback replicated only the deltas since the newest common snapshot")
    owner_check(rep, ca, "inactive", 5)
    sites.serve("canada")
    fr = sites.open("france")
    check_site(rep, fr, expect, on)
    owner_check(rep, fr, "active", 5)
    js = fr.protection_domain("pd-web").journal()
    rep.say("france's journal: " + "; ".join(f"{j.kind}->{j.site} {j.status}" for j in js))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nxstore.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--path", default="demo-data", help="directory of the two sites "
                        "(default ./demo-data; removed first)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--single-site", action="store_true",
                        help="the single-site walkthrough instead")
    parser.add_argument("-v", "--verbose", action="store_true", help="show nxstore's log")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL,
                        format="   log: %(name)s: %(message)s")
    if args.single_site:
        from .demo_single_site import main as single

        return single(([] if args.path == "demo-data" else ["--path", args.path]) + rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    shutil.rmtree(args.path, ignore_errors=True)
    os.makedirs(args.path)
    clock, rep = Clock(), Report()
    secret = secrets.token_hex(16)
    with tempfile.NamedTemporaryFile("w", prefix="nxstore-demo-", suffix=".secret") as f:
        f.write(secret)
        f.flush()
        sites = Sites(args.path, clock, f.name, secret)
        print("nxstore two-site demo: france and canada on loopback "
              "(seeds 001/002: protection domains, migrate, disaster, failback)")
        try:
            scenario(sites, clock, rep, args.seed)
        except (Mismatch, NxError) as exc:
            print(f"\nFAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            sites.close_all()
    print(f"\nall {rep.checks} checks passed in {time.perf_counter() - rep.t0:.1f} s "
          f"(sites in {args.path}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
