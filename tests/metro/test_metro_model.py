"""A hypothesis state machine over Metro's faults, with real processes (harness.World): two
`nxstore serve` sites and a witness, each link behind a proxy the machine controls.

Rules: writes to either site (a write at a site that may not acknowledge must fail), link
cuts in both or one direction, witness isolation, killing and restarting either site, and
time passing (breaks and promotions are timed). The
model (AckModel) holds what was acknowledged. After every rule: no acknowledged write is
missing at a site that says it is active and in step (RPO 0). At the end every fault is
healed: one site is active and synchronous, the other its standby, the active site holds
every acknowledged write and both read byte-identical.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from harness import AckModel, Pending, Site, World, Writer, assert_identical
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

MiB = 1 << 20
SIZE = 2 * MiB
BREAK_S = 1.5
WAIT_S = 120.0  # bound of every wait for convergence (a busy machine, several transitions)
SITES = ("a", "b")
LINKS = {"a-b both": [("a", "b", "both"), ("b", "a", "both")],
         "a->b data only": [("a", "b", "up")],
         "a-w": [("a", "w", "both")],
         "b-w": [("b", "w", "both")]}


def status(site: Site) -> dict:
    out = site.nx("pd", "metro", "status", site.path, "pd", "--json", rc=None)
    return json.loads(out.stdout) if out.rc == 0 else {}


class MetroFaults(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="nxstore-metro-model-"))
        self.world = World(self.root)
        self.model = AckModel(SIZE)
        self.writers: dict[str, Writer] = {}
        self.pending: dict[str, Pending] = {}
        self.cut: set[str] = set()
        self.down: set[str] = set()

    @initialize()
    def enable(self) -> None:
        from sites_helper import NXSTORE

        w = self.world
        self.w = w.start_process(
            "w", [*NXSTORE, "witness", "--listen", "127.0.0.1:0", "--secret-file",
                  str(w.secret_file), "--data", str(self.root / "witness-data")],
            r"on 127\.0\.0\.1:(?P<port>\d+)")
        a = w.site("a")
        w.site("b")
        w.connect("a", "b")
        a.nx("vdisk", "create", a.path, "db", SIZE)
        a.nx("pd", "create", a.path, "pd", "db")
        self.writers = {s: Writer(w[s], "db", self.model, seed=i + 1, max_grains=4)
                        for i, s in enumerate(SITES)}
        assert self.writers["a"].write(0, SIZE).status == "acked"
        a.nx("pd", "metro", "enable", a.path, "pd", "b", "--witness",
             w.link("a", "w").address, "--peer-witness", w.link("b", "w").address,
             "--witness-secret-file", str(w.secret_file), "--break-timeout", str(BREAK_S),
             "--rtt-limit", "0.5")

    # -- rules -------------------------------------------------------------------------------
    @precondition(lambda self: self.writers)
    @rule(site=st.sampled_from(SITES))
    def write(self, site: str) -> None:
        if site in self.down:
            return
        p = self.pending.get(site)
        if p is not None and p.wait(0) is None:
            return  # the site's previous write still waits (stalled or suspended)
        self.pending[site] = p = self.writers[site].random_write()
        p.wait(0.5)  # later rules race with it: a stalled write may settle any time

    @rule()
    def time_passes(self) -> None:
        """Long enough for a break (the active site) or a promotion (the standby)."""
        time.sleep(3 * BREAK_S)

    @precondition(lambda self: self.writers)
    @rule(link=st.sampled_from(sorted(LINKS)), mode=st.sampled_from(["drop", "stall"]))
    def cut_link(self, link: str, mode: str) -> None:

        for src, dst, direction in LINKS[link]:
            if direction == "both":
                self.world.link(src, dst).set_mode(mode)
            else:
                self.world.link(src, dst).set_mode("stall", direction=direction)
        self.cut.add(link)

    @precondition(lambda self: self.cut)
    @rule()
    def heal_links(self) -> None:

        self._heal_links()

    @precondition(lambda self: self.writers and len(self.down) < 2)
    @rule(site=st.sampled_from(SITES))
    def kill(self, site: str) -> None:

        if site not in self.down:
            self.world[site].kill()
            self.down.add(site)

    @precondition(lambda self: self.down)
    @rule()
    def restart(self) -> None:
        for site in sorted(self.down):
            self.world[site].start()
        self.down.clear()

    # -- what holds after every step --------------------------------------------------------
    @invariant()
    def active_in_step_holds_every_acknowledged_write(self) -> None:
        if not self.writers:
            return
        for site in SITES:
            if site in self.down:
                continue
            s = status(self.world[site])
            if s.get("role") == "active" and s.get("state") in ("synchronous", "broken"):
                self.model.check(self.world[site].read("db"), f"{site} ({s['state']})")

    def teardown(self) -> None:
        try:
            if self.writers:
                self._converge()
        finally:
            self.world.close()
            shutil.rmtree(self.root, ignore_errors=True)

    def _heal_links(self) -> None:
        for link in self.cut:
            for src, dst, _ in LINKS[link]:
                self.world.link(src, dst).set_mode("pass")
        self.cut.clear()

    def _converge(self) -> None:
        """Heal everything; then one active synchronous site, one standby, nothing lost."""
        self._heal_links()
        self.restart()
        deadline = time.monotonic() + WAIT_S
        seen: dict[str, dict] = {}
        while time.monotonic() < deadline:
            seen = {site: status(self.world[site]) for site in SITES}
            roles = sorted(s.get("role", "") for s in seen.values())
            if roles == ["active", "standby"] and any(
                    s["role"] == "active" and s["state"] == "synchronous"
                    for s in seen.values()):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"Metro never converged after healing: {seen}")
        for p in self.pending.values():
            assert p.wait(WAIT_S) is not None, "a write stayed pending after healing"
        active = next(s for s in SITES if seen[s]["role"] == "active")
        standby = next(s for s in SITES if s != active)
        image = self.world[active].read("db")
        self.model.check(image, f"{active}, active after healing")
        # the first standby holds "a:db"; a demoted site keeps its "db" as the replica
        names = self.world[standby].nx("vdisk", "list", self.world[standby].path).stdout
        replica = self.world[standby].read("db" if "a:db" not in names else "a:db")
        assert_identical(image, replica, f"{standby} (standby) after healing")


# Mostly waiting, little CPU: 4 runs in `make test`, 40 in `make torture` (NXSTORE_TORTURE=1).
TORTURE = os.environ.get("NXSTORE_TORTURE") == "1"
TestMetroFaults = MetroFaults.TestCase
TestMetroFaults.settings = settings(max_examples=40 if TORTURE else 4, stateful_step_count=12,
                                    deadline=None, suppress_health_check=list(HealthCheck))
