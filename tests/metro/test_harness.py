"""The Metro test harness proven on what exists: LinkProxy modes against an echo server, and
async replication between two real `nxstore serve` sites through the links (pass, drop,
stall, restart), the Writer and its model of acknowledged writes (including that the
checker fails when an acknowledged write is missing)."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from harness import AckModel, Result, Site, World, assert_identical
from harness import Writer as HarnessWriter
from link_proxy import LinkProxy, Mode

from nxstore.constants import WIRE_HANDSHAKE_TIMEOUT_S

MiB = 1 << 20
SIZE = 8 * MiB
G = 4096
ECHO_TIMEOUT_S = 30.0


# -- LinkProxy against an echo server -----------------------------------------------------
@pytest.fixture
def echo() -> Iterator[int]:
    """A threaded TCP echo server on 127.0.0.1; yields its port."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=pump, args=(conn,), daemon=True).start()

    def pump(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
                except OSError:
                    return

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


@pytest.fixture
def link(echo) -> Iterator[LinkProxy]:
    p = LinkProxy(echo, name="test")
    yield p
    p.close()


def dial(p: LinkProxy) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", p.port), timeout=ECHO_TIMEOUT_S)
    s.settimeout(ECHO_TIMEOUT_S)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, f"closed after {len(buf)} of {n} bytes"
        buf += chunk
    return buf


def closed(s: socket.socket) -> bool:
    """True when the peer closed or reset `s` (it reads EOF or fails)."""
    try:
        return s.recv(1) == b""
    except ConnectionError:
        return True


def ping_pong(s: socket.socket, rounds: int) -> float:
    t0 = time.monotonic()
    for i in range(rounds):
        s.sendall(bytes([i]))
        assert recv_exactly(s, 1) == bytes([i])
    return time.monotonic() - t0


def test_pass_forwards_and_counts(link):
    s = dial(link)
    msg = bytes(range(256)) * 1000
    s.sendall(msg)
    assert recv_exactly(s, len(msg)) == msg
    assert link.passed("up") == link.passed("down") == len(msg)
    assert link.connections == 1 and link.accepted == 1
    s.close()


def test_delay_slows_a_ping_pong_and_keeps_order(link):
    s = dial(link)
    fast = ping_pong(s, 10)
    link.set_mode("delay", seconds=0.05)
    slow = ping_pong(s, 10)
    assert slow >= 10 * 2 * 0.05 and slow > fast, (fast, slow)  # delayed up and down
    link.set_mode("pass", "down")  # one direction only
    assert (link.mode("up"), link.mode("down")) == (Mode("delay", 0.05), Mode("pass"))
    assert ping_pong(s, 10) >= 10 * 0.05
    # Pipelined messages under a delay arrive whole and in order.
    link.set_mode("delay", seconds=0.05)
    msgs = [i.to_bytes(4, "big") * 1000 for i in range(200)]
    for m in msgs:
        s.sendall(m)
    assert recv_exactly(s, sum(map(len, msgs))) == b"".join(msgs)
    # A mode change applies to queued data: a long delay, then pass, and it goes on at once.
    link.set_mode("delay", seconds=3600)
    s.sendall(b"queued")
    link.wait_queued("up", 6)
    link.set_mode("pass")
    assert recv_exactly(s, 6) == b"queued"


def test_stall_holds_everything_and_pass_releases_it_in_order(link):
    s = dial(link)
    link.set_mode("stall", "up")
    s.sendall(b"first ")
    s2 = dial(link)  # a new connection is accepted, and stalled too
    s2.sendall(b"other")
    s.sendall(b"second")
    link.wait_queued("up", 17)
    assert link.passed("up") == 0 and link.connections == 2
    link.set_mode("pass")
    assert recv_exactly(s, 12) == b"first second"
    assert recv_exactly(s2, 5) == b"other"
    # A stalled reply direction: the request goes up, the answer waits.
    link.set_mode("stall", "down")
    s.sendall(b"ask")
    link.wait_queued("down", 3)
    assert link.passed("up") == 20 and link.passed("down") == 17
    link.set_mode("pass", "down")
    assert recv_exactly(s, 3) == b"ask"


def test_drop_closes_every_connection_and_refuses_new_ones(link):
    socks = [dial(link) for _ in range(3)]
    for s in socks:
        s.sendall(b"x")
        assert recv_exactly(s, 1) == b"x"
    link.set_mode("drop", "up")  # either direction: connections are cut, not directions
    assert all(closed(s) for s in socks)
    assert link.connections == 0
    late = dial(link)  # accepted, then closed at once
    assert closed(late)
    assert link.accepted == 4
    link.set_mode("pass")
    s = dial(link)
    s.sendall(b"back")
    assert recv_exactly(s, 4) == b"back"


def test_at_byte_switches_mode_at_that_exact_byte(link):
    s = dial(link)
    link.set_mode("stall", "up", at_byte=1000)
    s.sendall(bytes(5000))
    link.wait_passed("up", 1000)
    link.wait_queued("up", 4000)
    assert link.passed("up") == 1000 and link.mode("up").kind == "stall"
    assert recv_exactly(s, 1000) == bytes(1000)
    link.set_mode("drop", "down", at_byte=1500)  # cut after 500 more bytes come back
    link.set_mode("pass", "up")
    assert recv_exactly(s, 500) == bytes(500)
    assert closed(s)
    assert link.passed("down") == 1500
    with pytest.raises(ValueError, match="already passed"):
        link.set_mode("stall", "up", at_byte=10)


def test_set_target_and_no_target(echo):
    p = LinkProxy(None, name="nowhere")
    try:
        s = dial(p)
        assert closed(s)  # no target: like a refused connection
        p.set_target(echo)
        s = dial(p)
        s.sendall(b"hi")
        assert recv_exactly(s, 2) == b"hi"
    finally:
        p.close()


# -- helper processes (the witness's hook) ------------------------------------------------
ECHO_SERVER = """
import socket, sys, threading
srv = socket.create_server(("127.0.0.1", 0))
print("listening on 127.0.0.1:%d" % srv.getsockname()[1], flush=True)
def pump(c):
    with c:
        while (data := c.recv(65536)):
            c.sendall(data)
while True:
    c, _ = srv.accept()
    threading.Thread(target=pump, args=(c,), daemon=True).start()
"""
READY = r"listening on 127\.0\.0\.1:(?P<port>\d+)"


def test_process_behind_links_follows_its_restarts(world):
    w = world.start_process("w", [sys.executable, "-c", ECHO_SERVER], READY)
    links = [world.link(src, "w") for src in ("a", "b")]  # one proxy per site
    assert {p.target_port for p in links} == {w.port}
    for p in links:
        s = dial(p)
        assert ping_pong(s, 3) >= 0
    w.kill()
    assert {p.target_port for p in links} == {None}
    assert closed(dial(links[0]))
    world.restart("w")
    assert {p.target_port for p in links} == {w.port}
    assert ping_pong(dial(links[1]), 3) >= 0
    assert w.stop() == -signal.SIGTERM  # it has no handler
    with pytest.raises(AssertionError, match="exited"):
        world.start_process("bad", [sys.executable, "-c", "print('no')"], READY)


# -- two real sites -------------------------------------------------------------------------
@pytest.fixture
def pair(world: World) -> tuple[Site, Site]:
    """Sites a and b, each the other's remote site through its link; vDisk db (8 MiB) at a."""
    a, b = world.site("a"), world.site("b")
    world.connect("a", "b")
    a.nx("vdisk", "create", a.path, "db", SIZE)
    return a, b


def replicate(a: Site, rc: int | None = 0) -> Result:
    return a.nx("replicate", a.path, "db", "b", rc=rc)


def fill(a: Site, model: AckModel, seed: int = 1) -> None:
    """One acknowledged write of the whole of db (random bytes)."""
    w = HarnessWriter(a, "db", model, seed=seed).write(0, SIZE)
    assert w.status == "acked", w.error


def test_replication_through_the_links(world, pair):
    a, b = pair
    model = AckModel(SIZE)
    fill(a, model)
    replicate(a)
    up = world.link("a", "b").passed("up")
    assert up > SIZE  # every block crossed the proxy (random data: no dedup)
    model.check(a.read("db"), "a")
    model.check(b.read("a:db"), "b")
    assert_identical(a.read("db"), b.read("a:db"), "a:db at b")
    assert world.link("b", "a").accepted == 0  # b never dialled a


def test_drop_fails_fast_and_pass_works_again(world, pair):
    a, _ = pair
    link = world.link("a", "b")
    fill(a, AckModel(SIZE))
    link.set_mode("drop")
    t0 = time.monotonic()
    r = replicate(a, rc=1)
    assert time.monotonic() - t0 < WIRE_HANDSHAKE_TIMEOUT_S  # fast: no timeout waited for
    assert link.address in r.error, r.stderr  # "connection closed by"/"lost": names the peer
    assert link.accepted >= 1
    # Cut in the middle of the transfer, at an exact byte.
    link.set_mode("pass")
    link.set_mode("drop", "up", at_byte=link.passed("up") + 2 * MiB)
    r = replicate(a, rc=1)
    assert r.error, r.stderr
    assert link.passed("up") >= 2 * MiB
    link.set_mode("pass")
    replicate(a)
    assert_identical(a.read("db"), pair[1].read("a:db"), "after the cuts")


def test_stall_mid_transfer_waits_for_the_link_then_finishes(world, pair):
    """The product has no timeout after the handshake: a replication over a stalled link
    waits (it does not fail) and finishes once the link passes again."""
    a, b = pair
    link = world.link("a", "b")
    fill(a, AckModel(SIZE))
    stall_at = link.passed("up") + MiB
    link.set_mode("stall", "up", at_byte=stall_at)
    box: list[Result] = []
    t = threading.Thread(target=lambda: box.append(replicate(a)), daemon=True)
    t.start()
    link.wait_passed("up", stall_at)
    link.wait_queued("up", 1)
    t.join(2.0)  # an observation window: nothing may finish while the link is stalled
    assert t.is_alive() and link.passed("up") == stall_at
    link.set_mode("pass")
    t.join(120)
    assert not t.is_alive() and box[0].rc == 0
    assert_identical(a.read("db"), b.read("a:db"), "after the stall")


def test_stall_before_the_handshake_fails_after_the_handshake_timeout(world, pair):
    a, _ = pair
    world.link("a", "b").set_mode("stall")
    t0 = time.monotonic()
    r = replicate(a, rc=1)
    elapsed = time.monotonic() - t0
    assert "handshake timed out" in r.error, r.stderr
    assert WIRE_HANDSHAKE_TIMEOUT_S <= elapsed < 6 * WIRE_HANDSHAKE_TIMEOUT_S


def test_forwarded_commands_run_side_by_side(world, pair):
    """A forwarded command that waits (a replication behind a stalled link) does not hold up
    another one sent to the same daemon: the admin socket runs them side by side."""
    a, _ = pair
    world.link("a", "b").set_mode("stall")
    waiting: list[Result] = []
    t = threading.Thread(target=lambda: waiting.append(replicate(a, rc=1)))
    t.start()
    assert world.link("a", "b").wait_queued("up", 1) > 0  # the replication is under way
    listed = a.nx("vdisk", "list", a.path)
    assert "db" in listed.stdout and t.is_alive()
    t.join(6 * WIRE_HANDSHAKE_TIMEOUT_S)
    assert waiting and "handshake timed out" in waiting[0].error


def test_kill_and_restart_repoint_the_links(world, pair):
    a, b = pair
    model = AckModel(SIZE)
    fill(a, model)
    old_port = b.port
    b.kill()
    assert world.link("a", "b").target_port is None
    assert replicate(a, rc=1).error
    world.restart("b")
    assert b.port != old_port and world.link("a", "b").target_port == b.port
    replicate(a)
    model.check(b.read("a:db"), "b after its restart")
    # A clean restart of a re-points b's link to a: b ships a vDisk of its own to a.
    world.restart("a")
    assert world.link("b", "a").target_port == a.port
    b.nx("vdisk", "create", b.path, "logs", MiB)
    b.nx("replicate", b.path, "logs", "a")
    assert a.read("b:logs") == bytes(MiB)
    assert any("serving site a" in x for x in a.log)  # the first run's lines are kept


# -- the Writer and the model --------------------------------------------------------------
def test_writer_acks_are_found_and_a_missing_one_is_caught(pair):
    a, b = pair
    model = AckModel(SIZE, grain=512)  # sub-block grains: writes through the OpLog too
    writer = HarnessWriter(a, "db", model, seed=7, max_grains=24)
    writer.start()
    writer.wait_acked(15)
    writer.stop()
    assert writer.stopped_by is None and all(w.status == "acked" for w in writer.writes)
    image = a.read("db")
    model.check(image, "a")
    replicate(a)
    model.check(b.read("a:db"), "b")
    # An acknowledged write that is not there must be caught.
    lost = model.issue("a", "db", 4096, 1024, seed=999)
    model.settle(lost, "acked")
    found = model.problems(image)
    assert len(found) == 2 and "grain 8 " in found[0] and "acked write" in found[0], found
    with pytest.raises(AssertionError, match="bad grains"):
        model.check(image, "a")


def test_failed_writes_are_recorded_with_their_error(pair):
    a, b = pair
    replicate(a)
    model = AckModel(SIZE)
    ro = HarnessWriter(b, "a:db", model).write(0, G)  # a read-only replica
    assert ro.status == "failed" and "read-only" in ro.error
    assert model.problems(bytes(SIZE)) == []  # a failed write need not be there
    a.nx("vdisk", "create", a.path, "small", G)
    big = HarnessWriter(a, "small", AckModel(2 * G)).write(0, 2 * G)
    assert big.status == "failed" and "outside" in big.error


def test_writer_against_a_site_killed_mid_write(pair):
    """SIGKILL while writes flow: the writer stops at the write that got no answer, and
    after a restart the site holds every acknowledged write (the engine's crash safety)."""
    a, _ = pair
    model = AckModel(SIZE)
    writer = HarnessWriter(a, "db", model, seed=3)
    writer.start()
    writer.wait_acked(5)
    a.kill()
    with pytest.raises(AssertionError, match="stopped by"):
        writer.wait_acked(10**6)
    assert writer.stopped_by is not None and writer.stopped_by.status in ("failed", "unsent")
    writer.stop()
    model.check(a.read("db"), "a after SIGKILL")  # the cluster opened by a subprocess
    a.start()
    model.check(a.read("db"), "a restarted")


def test_model_rules():
    m = AckModel(4 * G)
    old = bytes(4 * G)
    w1 = m.issue("a", "d", 0, 2 * G, seed=1)
    with_w1 = w1.data() + bytes(2 * G)
    assert m.problems(old) == m.problems(with_w1) == []  # pending: either
    m.settle(w1, "failed", "lost")
    assert m.problems(old) == m.problems(with_w1) == []  # failed: either
    w2 = m.issue("a", "d", G, G, seed=2)
    m.settle(w2, "acked")
    assert len(m.problems(old)) == 1  # grain 1 must hold w2 now
    with_w2 = old[:G] + w2.data() + old[2 * G:]
    assert m.problems(with_w2) == []  # grain 0 may still hold either
    assert len(m.problems(with_w1)) == 1
    torn = bytearray(with_w2)
    torn[G + 100] ^= 1
    assert "grain 1 " in m.problems(bytes(torn))[0]
    w3 = m.issue("a", "d", 3 * G, G, seed=3)
    m.settle(w3, "unsent")  # never reached a daemon: its bytes may not be there
    assert len(m.problems(with_w2[:3 * G] + w3.data())) == 1
    # Concurrent writes: one sent before the other was settled may land after it.
    c1 = m.issue("a", "d", 2 * G, G, seed=4)
    c2 = m.issue("a", "d", 2 * G, G, seed=5)
    m.settle(c2, "acked")
    m.settle(c1, "acked")
    for w in (c1, c2):
        assert m.problems(with_w2[:2 * G] + w.data() + old[3 * G:]) == []
    assert m.problems(b"short") == [f"image is 5 bytes, not {4 * G}"]
