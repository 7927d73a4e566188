"""Metro with real processes: two `nxstore serve` sites and an `nxstore witness`, each of the
three links behind proxies the test controls (harness.World). In every scenario: every write
whose flush returned is present at the site that ends up active, at most one site
acknowledges writes in any epoch, and after the resync both sites read byte-identical.

Writes are `nxstore vdisk write` commands forwarded to a site's daemon (exit 0 = the flush
returned = acknowledged); the AckModel holds what was acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from harness import AckModel, Site, World, Writer, assert_identical

MiB = 1 << 20
SIZE = 4 * MiB
BREAK_S = 2.0  # break timeout of these pairs (the standby promotes after twice this)
WAIT_S = 90.0  # bound of every wait for a state (a busy machine, several transitions)


def status(site: Site, pd: str = "pd") -> dict:
    return json.loads(site.nx("pd", "metro", "status", site.path, pd, "--json").stdout)


def wait_state(site: Site, pred, what: str, timeout: float = WAIT_S) -> dict:
    """Poll `pd metro status` until pred(status) holds (bounded); the last status."""
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        try:
            last = status(site)
        except AssertionError:  # the site is restarting, or has no pair yet
            last = {}
        if last and pred(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"{site.name}: never {what}; last status {last}")


@contextlib.contextmanager
def junk_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that answers every connection with garbage."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"\xffNOT A WITNESS" * 64)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


class Metro:
    """Sites a (active) and b (standby) of PD `pd` (vDisk db), witness w."""

    def __init__(self, world: World, break_mode: str = "automatic") -> None:
        from sites_helper import NXSTORE
        from witness_helper import SECRET

        self.world = world
        secret = world.root / "witness.secret"
        secret.write_text(SECRET + "\n")
        secret.chmod(0o600)
        self.secret = secret
        self.w = world.start_process(
            "w", [*NXSTORE, "witness", "--listen", "127.0.0.1:0", "--secret-file", str(secret),
                  "--data", str(world.root / "witness-data")],
            r"on 127\.0\.0\.1:(?P<port>\d+)")
        self.a, self.b = world.site("a"), world.site("b")
        world.connect("a", "b")
        a = self.a
        a.nx("vdisk", "create", a.path, "db", SIZE)
        a.nx("pd", "create", a.path, "pd", "db")
        self.model = AckModel(SIZE)
        self.writer = Writer(a, "db", self.model, seed=1)
        for off in range(0, SIZE, MiB):
            assert self.writer.write(off, MiB).status == "acked"
        a.nx("pd", "metro", "enable", a.path, "pd", "b",
             "--witness", world.link("a", "w").address,
             "--peer-witness", world.link("b", "w").address,
             "--witness-secret-file", str(secret), "--break-mode", break_mode,
             "--break-timeout", str(BREAK_S), "--rtt-limit", "0.5")
        wait_state(a, lambda s: s["state"] == "synchronous", "synchronous")

    def cut(self, *pairs: tuple[str, str], mode: str = "drop") -> None:
        for src, dst in pairs:
            self.world.link(src, dst).set_mode(mode)

    def heal(self, *pairs: tuple[str, str]) -> None:
        for src, dst in pairs:
            self.world.link(src, dst).set_mode("pass")

    def replica(self) -> bytes:
        return self.b.read("a:db")


LINK = (("a", "b"), ("b", "a"))


@pytest.fixture
def metro(world: World) -> Metro:
    return Metro(world)


def test_every_returned_flush_is_at_both_sites(metro: Metro) -> None:
    for _ in range(6):
        w = metro.writer.random_write().wait(120)
        assert w is not None and w.status == "acked"
        metro.model.check(metro.replica(), "the standby after a returned flush")
    s = status(metro.a)
    assert s["role"] == "active" and s["epoch"] == 1 and s["since_sync_flush"] is not None
    assert status(metro.b)["role"] == "standby"
    assert_identical(metro.a.read("db"), metro.replica(), "a:db vs b's replica")


def test_link_cut_automatic_break_then_delta_resync(metro: Metro) -> None:
    metro.cut(*LINK)
    w = metro.writer.random_write().wait(120)  # stalls, then the witness lets a go alone
    assert w is not None and w.status == "acked", w
    s = wait_state(metro.a, lambda s: s["state"] == "broken", "broken")
    assert s["epoch"] == 2 and s["witness_view"]["active_site"] == "a"
    assert status(metro.b)["role"] == "standby"  # b lost the race: it never promoted
    for _ in range(3):
        assert metro.writer.random_write().wait(120).status == "acked"
    metro.heal(*LINK)
    wait_state(metro.a, lambda s: s["state"] == "synchronous" and s["epoch"] == 2,
               "synchronous again")
    metro.model.check(metro.a.read("db"), "a")
    assert_identical(metro.a.read("db"), metro.replica(), "after the resync")


def test_one_direction_stalled_active_breaks_standby_stays(metro: Metro) -> None:
    """Only the active site's data stops reaching the standby (replies and the standby's
    requests still flow): the active site breaks, the standby sees it alive and never
    promotes, and the delta resync after the heal makes them identical."""
    metro.world.link("a", "b").set_mode("stall", direction="up")
    w = metro.writer.random_write().wait(120)
    assert w is not None and w.status == "acked", w
    s = wait_state(metro.a, lambda s: s["state"] == "broken", "broken")
    assert s["epoch"] == 2
    assert status(metro.b)["role"] == "standby"
    metro.heal(("a", "b"))
    wait_state(metro.a, lambda s: s["state"] == "synchronous", "synchronous again")
    metro.model.check(metro.a.read("db"), "a")
    assert_identical(metro.a.read("db"), metro.replica(), "after the one-way stall")


def test_link_cut_manual_break_waits_for_the_operator(world: World) -> None:
    m = Metro(world, break_mode="manual")
    m.cut(*LINK)
    pending = m.writer.random_write()
    assert pending.wait(3 * BREAK_S) is None  # stalled well past the break timeout
    assert status(m.a)["state"] in ("stalled", "suspended")
    out = json.loads(m.a.nx("pd", "metro", "break", m.a.path, "pd", "--json").stdout)
    assert out["state"] == "broken" and out["epoch"] == 2
    w = pending.wait(120)
    assert w is not None and w.status == "acked"
    m.heal(*LINK)
    assert status(m.a)["state"] == "broken"  # manual: no resync until resume
    out = json.loads(m.a.nx("pd", "metro", "resume", m.a.path, "pd", "--json").stdout)
    assert out["state"] == "synchronous"
    assert_identical(m.a.read("db"), m.replica(), "after resume")


def test_active_killed_mid_write_standby_takes_over(metro: Metro) -> None:
    metro.writer.start()
    metro.writer.wait_acked(3)
    metro.a.kill()
    metro.writer.stop()
    s = wait_state(metro.b, lambda s: s["role"] == "active", "promoted")
    assert s["epoch"] == 2
    metro.model.check(metro.b.read("db"), "b after the promotion (RPO 0)")
    # b runs the PD now; a comes back, is fenced, demoted, and resynced from b.
    writer_b = Writer(metro.b, "db", metro.model, seed=7)
    assert writer_b.random_write().wait(120).status == "acked"
    metro.a.start()
    s = wait_state(metro.a, lambda s: s["role"] == "standby", "demoted")
    wait_state(metro.b, lambda s: s["state"] == "synchronous", "synchronous from b")
    assert_identical(metro.b.read("db"), metro.a.read("db"), "a resynced from b")


def test_standby_killed_active_continues_alone_then_resyncs(metro: Metro) -> None:
    metro.b.kill()
    w = metro.writer.random_write().wait(120)
    assert w is not None and w.status == "acked"
    assert wait_state(metro.a, lambda s: s["state"] == "broken", "broken")["epoch"] == 2
    metro.b.start()
    wait_state(metro.a, lambda s: s["state"] == "synchronous", "synchronous again")
    assert_identical(metro.a.read("db"), metro.replica(), "after b came back")


def test_witness_down_metro_runs_but_no_role_changes(metro: Metro) -> None:
    metro.w.kill()
    assert metro.writer.random_write().wait(120).status == "acked"  # sites see each other
    assert status(metro.a)["witness_view"]["reachable"] is False
    metro.cut(*LINK)
    pending = metro.writer.random_write()
    wait_state(metro.a, lambda s: s["state"] == "suspended", "suspended")
    assert pending.wait(0.5) is None  # neither peer nor witness: never acknowledged alone
    assert status(metro.b)["role"] == "standby"
    metro.heal(*LINK)
    w = pending.wait(120)
    assert w is not None and w.status == "acked"
    s = wait_state(metro.a, lambda s: s["state"] == "synchronous", "synchronous again")
    assert s["epoch"] == 1  # no role change was possible
    assert_identical(metro.a.read("db"), metro.replica(), "after the link returned")


def test_isolated_active_is_fenced_and_its_unacknowledged_writes_discarded(
        metro: Metro) -> None:
    metro.cut(*LINK, ("a", "w"))
    pending = metro.writer.random_write()
    s = wait_state(metro.b, lambda s: s["role"] == "active", "promoted")
    assert s["epoch"] == 2
    assert pending.wait(0.5) is None  # a never acknowledged it
    metro.model.check(metro.b.read("db"), "b")
    metro.heal(*LINK, ("a", "w"))
    s = wait_state(metro.a, lambda s: s["role"] == "standby", "demoted")
    assert "discarded" in s["note"]
    w = pending.wait(120)
    assert w is not None and w.status == "failed"
    wait_state(metro.b, lambda s: s["state"] == "synchronous", "synchronous from b")
    assert_identical(metro.b.read("db"), metro.a.read("db"), "after the demotion")


def test_flapping_link(metro: Metro) -> None:
    for i in range(4):
        metro.cut(*LINK)
        assert metro.writer.random_write().wait(120).status == "acked"
        metro.heal(*LINK)
        assert metro.writer.random_write().wait(120).status == "acked", i
    wait_state(metro.a, lambda s: s["state"] == "synchronous", "synchronous at the end")
    metro.model.check(metro.a.read("db"), "a")
    assert_identical(metro.a.read("db"), metro.replica(), "after flapping")


def test_both_sites_restarted(metro: Metro) -> None:
    assert metro.writer.random_write().wait(120).status == "acked"
    metro.world.restart("a")
    metro.world.restart("b")
    wait_state(metro.a, lambda s: s["state"] == "synchronous", "synchronous after restarts")
    assert metro.writer.random_write().wait(120).status == "acked"
    metro.model.check(metro.a.read("db"), "a")
    assert_identical(metro.a.read("db"), metro.replica(), "after both restarted")


def test_bad_input_leaves_the_pd_unchanged(metro: Metro) -> None:
    a = metro.a
    again = a.nx("pd", "metro", "enable", a.path, "pd", "b", "--witness",
                 metro.world.link("a", "w").address, "--witness-secret-file", str(metro.secret),
                 rc=1)
    assert "already" in again.error
    a.nx("vdisk", "create", a.path, "other", MiB)
    a.nx("pd", "create", a.path, "pd2", "other")
    unknown = a.nx("pd", "metro", "enable", a.path, "pd2", "nowhere", "--witness",
                   metro.world.link("a", "w").address, "--witness-secret-file",
                   str(metro.secret), rc=1)
    assert "nowhere" in unknown.error
    wrong = a.scratch_file("wrong.secret")
    wrong.write_text("a different secret of enough length\n")
    wrong.chmod(0o600)
    bad = a.nx("pd", "metro", "enable", a.path, "pd2", "b", "--witness",
               metro.world.link("a", "w").address, "--witness-secret-file", str(wrong), rc=1)
    assert "authentic" in bad.error.lower() or "secret" in bad.error.lower()
    with junk_server() as port:
        garbage = a.nx("pd", "metro", "enable", a.path, "pd2", "b", "--witness",
                       f"127.0.0.1:{port}", "--witness-secret-file", str(metro.secret), rc=1)
    assert garbage.error and "Traceback" not in garbage.stderr
    assert a.nx("pd", "metro", "status", a.path, "pd2", rc=1).error
    assert status(a)["state"] == "synchronous"


def test_disable_leaves_the_standby_an_ordinary_replica(metro: Metro) -> None:
    assert metro.writer.random_write().wait(120).status == "acked"
    at_disable = metro.a.read("db")
    metro.a.nx("pd", "metro", "disable", metro.a.path, "pd")
    assert "no Metro peer" in metro.a.nx("pd", "metro", "status", metro.a.path, "pd",
                                         rc=1).error
    assert "no Metro peer" in metro.b.nx("pd", "metro", "status", metro.b.path, "pd",
                                         rc=1).error
    metro.cut(*LINK)  # no peer to wait for: writes are acknowledged locally at once
    assert metro.writer.random_write().wait(30).status == "acked"
    assert_identical(at_disable, metro.replica(), "the replica keeps what it had")
    # the witness's record is closed: the old standby can never be promoted for the pair
    assert metro.b.nx("pd", "metro", "promote", metro.b.path, "pd", rc=1).error


def test_manual_mode_promote_at_the_standby(world: World) -> None:
    """Manual break mode: nothing changes roles by itself; an operator promotes the
    standby through the witness (RPO 0); the old active, back, is fenced and demoted."""
    m = Metro(world, break_mode="manual")
    for _ in range(3):
        assert m.writer.random_write().wait(120).status == "acked"
    m.a.kill()
    assert status(m.b)["role"] == "standby"
    out = json.loads(m.b.nx("pd", "metro", "promote", m.b.path, "pd", "--json").stdout)
    assert out["role"] == "active" and out["epoch"] == 2
    m.model.check(m.b.read("db"), "b after the promotion (RPO 0)")
    assert Writer(m.b, "db", m.model, seed=9).random_write().wait(120).status == "acked"
    m.a.start()
    wait_state(m.a, lambda s: s["role"] == "standby" and s["epoch"] == 2, "demoted")
    m.b.nx("pd", "metro", "resume", m.b.path, "pd")
    assert_identical(m.b.read("db"), m.a.read("db"), "a resynced from b")


def test_promote_without_the_witness_needs_force(world: World) -> None:
    m = Metro(world, break_mode="manual")
    assert m.writer.random_write().wait(120).status == "acked"
    m.a.kill()
    m.w.kill()
    refused = m.b.nx("pd", "metro", "promote", m.b.path, "pd", rc=1)
    assert "witness" in refused.error
    assert status(m.b)["role"] == "standby"
    out = json.loads(m.b.nx("pd", "metro", "promote", m.b.path, "pd", "--force",
                            "--json").stdout)
    assert out["role"] == "active" and out["epoch"] == 2
    m.model.check(m.b.read("db"), "b after the forced promotion")
