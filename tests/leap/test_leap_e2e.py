"""The seed's Leap scenario end to end: zones canada, france and uk as real `nxstore serve`
processes on 127.0.0.1, on a simulated clock (`--clock-file`) their own schedulers run,
driven only through the `nxstore` command line (forwarded into the daemons).

Canada protects db, web1 and web2 (category replicated-vm:from-canada) to france, and app
(replicated-vm:to-uk) to uk, with app-consistent snapshots every 15 minutes (the seed's NearSync schedule; every hour,
PD snapshots only, in `make torture`); plan ca-plan brings db up
first, then the web tier, on FR-VLAN50 (tests on FR-VLAN51); plan uk-plan brings app up at
uk. Steps: test failover and cleanup (at france and uk), planned failover, reverse,
unplanned failover after SIGKILL of france, france back, failback. At every step each
vDisk (read with `nxstore export`) is byte-identical to the model of what was written up
to the expected point, and the VMs power on in stage order on the mapped networks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))  # test_cli_leap (conftest: sites_helper)
from sites_helper import NXSTORE, Daemon  # noqa: E402
from test_cli_leap import nx  # noqa: E402

BS = 4096
SIZE = 16 * BS
SECRET = "leap end to end test secret"
START = 1_800_000_000.0  # the simulated clock's epoch seconds at the start
WAIT_S = 60.0  # bound of every wait for a daemon to have done something
SCHEDULE_INTERVAL = "0.1"  # real seconds between the daemons' scheduler passes
FRANCE_VMS = {"db": ["db-os", "db-data"], "web1": ["web1-os"], "web2": ["web2-os"]}
UK_VMS = {"app": ["app-os"]}
TIERS = {"db": "db", "web1": "web", "web2": "web", "app": "app"}
STAGE_ORDER = ["db", "web1", "web2"]


class World:
    """The three zones' directories, daemons and clock file, and a model of every vDisk's
    bytes (what was written to it, wherever it runs now)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.secret = tmp / "secret"
        self.secret.write_text(SECRET + "\n")
        self.secret.chmod(0o600)
        self.clock_file = tmp / "clock"
        self.now = START
        self._write_clock()
        self.daemons: dict[str, Daemon] = {}
        self.model: dict[str, bytearray] = {}
        self.generation = 0

    def path(self, zone: str) -> Path:
        return self.tmp / zone

    def _write_clock(self) -> None:
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(repr(self.now))
        os.replace(tmp, self.clock_file)  # a daemon never reads half a number

    def advance(self, seconds: float) -> float:
        """Move the simulated clock; returns the new time."""
        self.now += seconds
        self._write_clock()
        return self.now

    def serve(self, zone: str, port: int = 0) -> Daemon:
        d = Daemon.start(str(self.path(zone)), str(self.secret), "--clock-file",
                         str(self.clock_file), "--schedule-interval", SCHEDULE_INTERVAL,
                         "--listen", f"127.0.0.1:{port}")  # the last --listen wins
        self.daemons[zone] = d
        return d

    def write(self, zone: str, vdisks: list[str]) -> None:
        """A new generation of data in blocks 1 and 2 of each vDisk (all different), at
        `zone` (`nxstore vdisk write`, one command per vDisk, side by side) and in the
        model."""
        self.generation += 1
        commands = []
        for name in vdisks:
            text = f"{name} generation {self.generation}|".encode()
            data = (text * (2 * BS // len(text) + 1))[:2 * BS]
            src = self.tmp / f"write-{name}"
            src.write_bytes(data)
            self.model[name][BS:3 * BS] = data
            commands.append(("vdisk", "write", self.path(zone), name, BS, src))
        run_all(commands)

    def expected(self, vdisks: list[str]) -> dict[str, bytes]:
        return {n: bytes(self.model[n]) for n in vdisks}

    def images(self, zone: str, vdisks: dict[str, str]) -> dict[str, bytes]:
        """{model name: bytes} of each vDisk (model name -> name at `zone`), read with
        `nxstore export` (side by side)."""
        targets = {m: self.tmp / f"export-{zone}-{n}.raw" for m, n in vdisks.items()}
        run_all([("export", self.path(zone), vdisks[m], t) for m, t in targets.items()])
        return {m: t.read_bytes() for m, t in targets.items()}

    def cleanup(self) -> None:
        for d in self.daemons.values():
            d.cleanup()


@pytest.fixture
def world(tmp_path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.cleanup()


def wait_for(what: str, probe: Callable[[], object]) -> object:
    """Poll `probe` until it returns something true (bounded by WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        got = probe()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def js(*args: object, rc: int = 0):
    return json.loads(nx(*args, "--json", rc=rc).stdout)


def vms(w: World, zone: str) -> dict[str, dict]:
    return {v["name"]: v for v in js("vm", "list", w.path(zone))}


def run_all(commands: list[tuple]) -> None:
    """Run `nxstore` command lines side by side (each must succeed)."""
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda args: nx(*args), commands))


def newest_points(w: World, zone: str, pds: list[str], nearsync: bool) -> dict[str, float]:
    """The time of the newest recovery point of each of `pds` at `zone` (0: none): its PD
    snapshots, and with `nearsync` also its NearSync restore points."""
    newest = {p["name"]: p["newest"] for p in js("pd", "list", w.path(zone))}
    taken = {s["name"]: s["created_at"] for s in js("snapshot", "list", w.path(zone))}
    found = {pd: taken.get(newest.get(pd) or "", 0.0) for pd in pds}
    for pd in pds if nearsync else ():
        lws = subprocess.run([*NXSTORE, "pd", "restore-points", str(w.path(zone)), pd,
                              "--json"], capture_output=True, text=True, timeout=180,
                             stdin=subprocess.DEVNULL)
        if lws.returncode == 0:  # else (1): no NearSync episode of it here yet
            found[pd] = max([found[pd], *(p["created_at"] for p in json.loads(lws.stdout))])
    return found


def wait_points(w: World, zone: str, pds: list[str], since: float, nearsync: bool) -> None:
    """Wait until `zone` holds a recovery point of every PD of `pds` taken at or after
    `since` (by the daemons' own schedulers)."""
    wait_for(f"recovery points of {pds} at {zone} from {since}",
             lambda: all(t >= since for t in newest_points(w, zone, pds, nearsync).values()))


def powered_on(report: dict) -> list[str]:
    """The VMs the report powered on, in order (steps `stage N: VM` with detail `on; ...`)."""
    return [s["name"].split(": ", 1)[1] for s in report["steps"]
            if s["name"].startswith("stage ") and s["detail"].startswith("on")]


def failover(w: World, zone: str, plan: str, kind: str) -> dict:
    report = js("plan", "failover", w.path(zone), plan, f"--{kind}", "--yes")
    assert report["status"] == "Succeeded", report
    return report


def check_vms(w: World, zone: str, names: dict[str, str], network: str,
              expected: dict[str, bytes]) -> None:
    """Each VM (model name -> name at `zone`) is on, on `network` only, and its vDisks
    read as `expected`."""
    found = vms(w, zone)
    disks = {}
    for model_name, name in names.items():
        vm = found[name]
        assert vm["power"] == "on", vm
        assert [n["network"] for n in vm["nics"]] == [network], vm
        own = FRANCE_VMS.get(model_name) or UK_VMS[model_name]
        assert len(vm["vdisks"]) == len(own), vm
        disks.update(zip(own, vm["vdisks"], strict=True))
    assert w.images(zone, disks) == {n: expected[n] for n in disks}


@pytest.mark.parametrize("every", [
    900,  # the seed's 15 minutes: NearSync (LWS episodes after the seed snapshot)
    pytest.param(3600, marks=pytest.mark.slow),  # PD snapshots only: `make torture`
], ids=["nearsync-15min", "hourly"])
def test_seed_scenario_three_served_zones(world, every):
    w = world
    slot = every + 1  # one schedule slot, and a second
    nearsync = every <= 900
    ca, fr, uk = w.path("canada"), w.path("france"), w.path("uk")
    for zone in ("canada", "france", "uk"):
        nx("create", w.path(zone), "--block-size", BS)
        w.serve(zone)
    for zone in ("france", "uk"):
        nx("zone", "add", ca, zone, w.daemons[zone].address, "--secret-file", w.secret)

    # canada: categories, vDisks with distinct data, VMs on VLAN50 tagged (with hooks:
    # app-consistent snapshots)
    nx("category", "create", ca, "replicated-vm", "from-canada", "to-uk")
    nx("category", "create", ca, "tier", "db", "web", "app")
    all_disks = [d for vm_disks in (*FRANCE_VMS.values(), *UK_VMS.values()) for d in vm_disks]
    for i, d in enumerate(all_disks):
        w.model[d] = bytearray(bytes([i + 1]) * SIZE)
        (w.tmp / d).write_bytes(w.model[d])
    run_all([("import", ca, d, w.tmp / d, "--create", "--format", "raw") for d in all_disks])
    run_all([("vm", "create", ca, vm, *[a for d in disks for a in ("--vdisk", d)],
              "--nic", "VLAN50", "--category", f"tier={TIERS[vm]}", "--power", "on")
             for vm, disks in {**FRANCE_VMS, **UK_VMS}.items()])
    run_all([cmd for vm in (*FRANCE_VMS, *UK_VMS) for cmd in (
        ("vm", "category", "add", ca, vm, "replicated-vm",
         "to-uk" if vm in UK_VMS else "from-canada"),
        ("vm", "hooks", "set", ca, vm, "--pre-freeze", "/bin/true", "--post-thaw", "/bin/true"))])

    # policies and plans (made at canada, delivered to the other zone)
    schedule = f"every={every},keep-local=4,keep-remote=4,app-consistent"
    nx("policy", "create", ca, "ca-to-fr", "--primary", "canada", "--recovery", "france",
       "--schedule", schedule, "--category", "replicated-vm:from-canada")
    nx("policy", "create", ca, "ca-to-uk", "--primary", "canada", "--recovery", "uk",
       "--schedule", schedule, "--category", "replicated-vm:to-uk")
    nx("plan", "create", ca, "ca-plan", "--primary", "canada", "--recovery", "france",
       "--stage", "vms=db", "--stage", "categories=tier:web",
       "--network", "VLAN50=FR-VLAN50,test=VLAN51=FR-VLAN51")
    nx("plan", "create", ca, "uk-plan", "--primary", "canada", "--recovery", "uk",
       "--stage", "vms=app", "--network", "VLAN50=UK-VLAN50,test=VLAN51=UK-VLAN51")
    fr_pds = [f"leap.{vm}" for vm in FRANCE_VMS]

    # the first slot runs at once, the next one a slot (simulated) later
    wait_points(w, "france", fr_pds, START, nearsync)
    wait_points(w, "uk", ["leap.app"], START, nearsync)
    w.write("canada", all_disks)
    point2 = w.expected(all_disks)
    t2 = w.advance(slot)
    wait_points(w, "france", fr_pds, t2, nearsync)
    wait_points(w, "uk", ["leap.app"], t2, nearsync)
    snaps = js("pd", "show", ca, "leap.db")["snapshot_list"]
    assert {s["consistency"] for s in snaps} == {"application"}, snaps
    assert js("plan", "validate", fr, "ca-plan")["status"] == "Succeeded"
    assert js("plan", "validate", uk, "uk-plan")["status"] == "Succeeded"

    # test failover at france (and uk): clones of the newest point on the test network;
    # production goes on changing meanwhile
    w.write("canada", all_disks)
    report = failover(w, "france", "ca-plan", "test")
    test_names = {vm: f"ca-plan-test-{vm}" for vm in FRANCE_VMS}
    assert powered_on(report) == [test_names[vm] for vm in STAGE_ORDER]
    check_vms(w, "france", test_names, "FR-VLAN51", point2)
    report = failover(w, "uk", "uk-plan", "test")
    assert powered_on(report) == ["uk-plan-test-app"]
    check_vms(w, "uk", {"app": "uk-plan-test-app"}, "UK-VLAN51", point2)
    for zone, plan in (("france", "ca-plan"), ("uk", "uk-plan")):
        assert js("plan", "cleanup", w.path(zone), plan)["status"] == "Succeeded"
        assert vms(w, zone) == {}
        assert not [v for v in js("vdisk", "list", w.path(zone))
                    if v["name"].startswith(f"{plan}-test-")]
    assert set(vms(w, "canada")) == {*FRANCE_VMS, *UK_VMS}

    # planned failover to france: canada's latest data, none of its VMs left there
    latest = w.expected(all_disks)
    report = failover(w, "france", "ca-plan", "planned")
    assert powered_on(report) == STAGE_ORDER
    check_vms(w, "france", {vm: vm for vm in FRANCE_VMS}, "FR-VLAN50", latest)
    assert set(vms(w, "canada")) == set(UK_VMS)

    # reverse: france replicates to canada now
    assert js("plan", "reverse", fr, "ca-plan")["status"] == "Succeeded"
    spec = js("plan", "show", ca, "ca-plan")
    assert (spec["primary"], spec["recovery"]) == ("france", "canada")
    assert js("policy", "show", ca, "ca-to-fr")["primary"] == "france"
    fr_disks = [d for disks in FRANCE_VMS.values() for d in disks]
    w.write("france", fr_disks)
    replicated = w.expected(fr_disks)
    t3 = w.advance(slot)
    wait_points(w, "canada", fr_pds, t3, nearsync)

    # unplanned failover to canada after SIGKILL of france: the last point canada holds
    w.write("france", fr_disks)  # lost with france
    france_port = w.daemons["france"].port
    w.daemons["france"].kill()
    report = failover(w, "canada", "ca-plan", "unplanned")
    assert [s["name"] for s in report["steps"] if s["name"].startswith("activate ")] == \
        [f"activate {pd}" for pd in fr_pds]
    assert powered_on(report) == STAGE_ORDER
    check_vms(w, "canada", {vm: vm for vm in FRANCE_VMS}, "VLAN50", replicated)
    for d in fr_disks:  # canada's data is the truth from here on
        w.model[d][:] = replicated[d]

    # france back (at its address), failback: reverse at canada, planned failover at france
    assert js("plan", "reverse", ca, "ca-plan")["status"] == "Succeeded"
    w.serve("france", port=france_port)
    w.write("canada", fr_disks)
    t4 = w.advance(slot)
    wait_points(w, "france", fr_pds, t4, nearsync)
    now = w.expected(fr_disks)
    report = failover(w, "france", "ca-plan", "planned")
    assert powered_on(report) == STAGE_ORDER
    check_vms(w, "france", {vm: vm for vm in FRANCE_VMS}, "FR-VLAN50", now)
    assert set(vms(w, "canada")) == set(UK_VMS)
    check_vms(w, "canada", {"app": "app"}, "VLAN50", w.expected(UK_VMS["app"]))
    assert js("plan", "validate", uk, "uk-plan")["status"] == "Succeeded"  # uk untouched
