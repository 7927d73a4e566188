"""The Metro mirror stream (nxstore.metro.mirror) between two clusters in this process: the
standby is served by a real ReplicationTarget on 127.0.0.1 (its own event-loop thread),
optionally behind a delay line that can also hold everything back (a stalled link)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import ssl
import threading
import time

import numpy as np
import pytest
from certs import self_signed  # tests/replication, on the path (conftest)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nxstore
from nxstore.constants import (
    OPLOG_BYPASS_BYTES,
    WIRE_FRAME_HEADER_BYTES,
    WIRE_METRO_BARRIER_VERSION,
    WIRE_MIN_PROTOCOL_VERSION,
)
from nxstore.errors import ConnectionClosed, InvalidArgument, LinkDown, MetroFenced, ProtocolError
from nxstore.metro import applier, mirror
from nxstore.metro.applier import Grant
from nxstore.metro.mirror import LinkMirror, MirrorLink, register
from nxstore.replication import auth, frames, messages
from nxstore.replication.auth import SiteIdentity
from nxstore.replication.messages import (
    Ack,
    MetroAccept,
    MetroFlushed,
    MetroOpen,
    MetroWrites,
    Ping,
    Pong,
)
from nxstore.replication.protocols import TargetProtocols
from nxstore.replication.sites import get_site
from nxstore.replication.source import open_session
from nxstore.replication.target import ReplicationTarget
from nxstore.replication.transport import (
    LoopStream,
    SocketStream,
    connect,
    detach,
    memory_pair,
    serve,
    tcp,
)

BS = 4096
DISK = 1 << 20
SECRET = "metro mirror test secret"


# -- helpers ---------------------------------------------------------------------------------
class Loop:
    """An asyncio event loop on a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Standby:
    """`cluster` served as a replication target with the mirror applier registered. Its
    accept() takes sessions in `epoch` only and counts the barriers its replicas sync."""

    def __init__(self, cluster: nxstore.Cluster, epoch: int = 1, ssl=None) -> None:  # noqa: ANN001
        self.cluster = cluster
        self.epoch = epoch
        self.opened: list[MetroOpen] = []
        protocols = TargetProtocols()  # only what these tests serve
        cluster.attach(protocols)
        register(protocols, cluster, self.accept)
        self.io = Loop()
        ident = SiteIdentity(cluster.id, cluster.site_name)
        self.server = self.io.run(serve("127.0.0.1", 0, ReplicationTarget(cluster).handle,
                                        identity=ident, secret=SECRET, ssl=ssl))
        self.port = self.server.port

    def accept(self, peer_cluster: str, peer_site: str, msg: MetroOpen) -> Grant:
        self.opened.append(msg)
        if msg.epoch != self.epoch:
            raise InvalidArgument(f"mirror session in epoch {msg.epoch} refused: this standby "
                                  f"is in epoch {self.epoch}")
        return Grant({i: self.cluster.vdisk(v.replica) for i, v in enumerate(msg.vdisks)},
                     check=self.check)

    def check(self) -> None:
        """Fencing per barrier: a session opened in another epoch than the standby's now."""
        if self.opened and self.opened[-1].epoch != self.epoch:
            raise MetroFenced(f"this standby moved to epoch {self.epoch}")

    def close(self) -> None:
        if self.io.thread.is_alive():
            self.io.run(self.server.close())
            self.io.stop()


class DelayLine:
    """A TCP relay on 127.0.0.1 to `port` that holds every chunk `delay` seconds each way (a
    pipelined delay line: throughput stays) and, while `hold()` is in force, forwards
    nothing (the connection stays open; `release()` lets the held bytes go)."""

    def __init__(self, port: int, delay: float = 0.0) -> None:
        self.delay = delay
        self.target = port
        self.writers: list[asyncio.StreamWriter] = []
        self.io = Loop()
        self.flowing = self.io.run(self._event())
        self.server = self.io.run(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]

    @staticmethod
    async def _event() -> asyncio.Event:
        e = asyncio.Event()
        e.set()
        return e

    def hold(self) -> None:
        self.io.loop.call_soon_threadsafe(self.flowing.clear)

    def release(self) -> None:
        self.io.loop.call_soon_threadsafe(self.flowing.set)

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers += [cw, sw]
        await asyncio.gather(self._pipe(cr, sw), self._pipe(sr, cw), return_exceptions=True)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        line: asyncio.Queue = asyncio.Queue()

        async def forward() -> None:
            while (item := await line.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - loop.time()))
                await self.flowing.wait()
                dst.write(data)
                await dst.drain()

        out = asyncio.ensure_future(forward())
        try:
            while data := await src.read(1 << 16):
                line.put_nowait((loop.time() + self.delay, data))
        finally:
            line.put_nowait(None)
            await asyncio.gather(out, return_exceptions=True)
            dst.close()

    async def _shutdown(self) -> None:
        self.flowing.set()
        self.server.close()
        for w in self.writers:
            w.close()

    def close(self) -> None:
        self.io.run(self._shutdown())
        self.io.stop()


class Pair:
    """Source `paris` and standby `tokyo` (each a 4 KiB-block cluster), vDisks vol0.. seeded
    to `tokyo` by snapshot replication, and a link factory."""

    def __init__(self, tmp_path, vdisks: int = 1, delay: float | None = None,
                 tls: bool = False) -> None:
        tmp_path.mkdir()
        self.paris = nxstore.Cluster.create(str(tmp_path / "paris"), block_size=BS,
                                            background=False)
        self.tokyo = nxstore.Cluster.create(str(tmp_path / "tokyo"), block_size=BS,
                                            background=False)
        cert = server_ssl = None
        if tls:
            cert, key = self_signed(tmp_path)
            server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server_ssl.load_cert_chain(cert, key)
        self.standby = Standby(self.tokyo, ssl=server_ssl)
        self.line = DelayLine(self.standby.port, delay) if delay is not None else None
        port = self.line.port if self.line else self.standby.port
        self.paris.add_remote_site("tokyo", f"127.0.0.1:{port}", SECRET, tls_ca=cert)
        self.names = [f"vol{i}" for i in range(vdisks)]
        for name in self.names:
            vd = self.paris.create_vdisk(name, DISK)
            vd.write(0, os.urandom(3 * BS))
            self.paris.replicate(vd.snapshot("seed"), "tokyo")
        self.links: list[MirrorLink] = []

    def link(self, epoch: int = 1, install: bool = True, **kw) -> MirrorLink:
        link = MirrorLink(self.paris, get_site(self.paris.ctx.catalog, "tokyo"), "pair-1",
                          epoch, {n: f"paris:{n}" for n in self.names}, **kw)
        self.links.append(link)
        link.open()
        if install:
            for name in self.names:
                self.paris.set_mirror(name, LinkMirror(link))
        return link

    def assert_identical(self) -> None:
        for name in self.names:
            src = self.paris.vdisk(name).read(0, DISK)
            rep = self.tokyo.vdisk(f"paris:{name}").read(0, DISK)
            assert src == rep, f"replica of {name} differs at byte {_first_diff(src, rep)}"

    def close(self) -> None:
        for link in self.links:
            link.close()
        if self.line:
            self.line.close()
        self.standby.close()
        self.paris.close()
        self.tokyo.close()


def _first_diff(a: bytes, b: bytes) -> int:
    x, y = np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)
    return int(np.flatnonzero(x != y)[0])


@pytest.fixture
def pair(tmp_path):
    made: list[Pair] = []

    def make(**kw) -> Pair:
        p = Pair(tmp_path / f"p{len(made)}", **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


# -- the replica follows the source ----------------------------------------------------------
OP = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2), st.integers(0, DISK - 1),
              st.sampled_from([1, 513, BS, 3 * BS + 7, OPLOG_BYPASS_BYTES + BS])),
    st.tuples(st.just("trim"), st.integers(0, 2), st.integers(0, DISK - 1),
              st.sampled_from([1, BS + 1, 5 * BS])),
    st.tuples(st.just("flush"), st.integers(0, 2), st.just(0), st.just(0)),
)


def test_replica_is_byte_identical_at_every_returned_flush(pair):
    p = pair(vdisks=3)
    link = p.link(batch_bytes=64 * 1024)  # large writes go as several batches
    rng = np.random.default_rng(3)
    flushes = 0

    @settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(OP, min_size=1, max_size=30))
    def run(ops):
        nonlocal flushes
        for kind, i, offset, length in ops:
            vd = p.paris.vdisk(p.names[i])
            length = min(length, DISK - offset)
            if kind == "write":
                vd.write(offset, rng.bytes(length))
            elif kind == "trim":
                vd.trim(offset, length)
            else:
                vd.flush()
                flushes += 1
                p.assert_identical()
        p.paris.vdisk(p.names[0]).flush()
        p.assert_identical()
        assert link.unacked_blocks() == {}

    run()
    assert link.alive and link.barriers <= flushes + 25


def test_bypass_writes_and_trims_arrive_exactly(pair):
    p = pair()
    p.link()
    vd = p.paris.vdisk("vol0")
    big = os.urandom(OPLOG_BYPASS_BYTES + 2 * BS + 100)
    vd.write(BS - 50, big)  # logged head and tail, extents in between
    vd.trim(3 * BS + 1, 2 * BS)
    vd.write(DISK - 7, b"7 bytes")
    vd.flush()
    p.assert_identical()


def test_flush_returns_only_once_the_standby_synced(pair, monkeypatch):
    p = pair()
    synced: list[int] = []
    sync = applier._Applier.sync

    def slow_sync(self) -> None:
        time.sleep(0.3)  # a slow disk at the standby
        sync(self)
        synced.append(p.tokyo.ctx.oplog.durable_seq)

    monkeypatch.setattr(applier._Applier, "sync", slow_sync)
    p.link()
    vd = p.paris.vdisk("vol0")
    for i in range(3):
        vd.write(i * 100, os.urandom(5000))
        vd.flush()
        assert len(synced) == i + 1
        assert synced[-1] >= p.tokyo.vdisk("paris:vol0")._last_seq
    p.assert_identical()


# -- group commit and pipelining -----------------------------------------------------------------
def test_concurrent_flushes_share_barriers(pair):
    p = pair(vdisks=2, delay=0.01)  # a 20 ms round trip: flushers pile up behind a barrier
    link = p.link()
    threads, rounds = 16, 3
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def writer(n: int) -> None:
        try:
            vd = p.paris.vdisk(p.names[n % 2])
            start.wait(30)
            for r in range(rounds):
                vd.write((n * rounds + r) * BS, os.urandom(BS))
                vd.flush()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    assert not errors, errors
    flushes = threads * rounds
    assert link.barriers <= flushes // 4, (link.barriers, flushes)
    p.assert_identical()


@pytest.mark.parametrize("old", [False, True])
def test_a_barrier_rides_in_the_last_batch_unless_the_standby_is_older(pair, monkeypatch, old):
    """On a version 5 session a flush's barrier travels inside its last METRO_WRITES (one
    frame each way); a version 4 standby gets METRO_FLUSH frames. Both confirm every flush."""
    if old:
        monkeypatch.setattr(tcp, "server_handshake", functools.partial(
            auth.server_handshake, versions=(WIRE_MIN_PROTOCOL_VERSION, WIRE_METRO_BARRIER_VERSION - 1)))
    separate: list[int] = []
    real = mirror.MetroFlush
    monkeypatch.setattr(mirror, "MetroFlush", lambda b, **kw: separate.append(b) or real(b, **kw))
    p = pair()
    link = p.link()
    vd = p.paris.vdisk("vol0")
    for i in range(5):
        vd.write(i * BS, os.urandom(BS))
        vd.flush()
        p.assert_identical()
    assert link.barriers == 5
    assert separate == ([1, 2, 3, 4, 5] if old else [])


def test_a_barrier_in_writes_on_an_older_session_is_refused(pair, monkeypatch):
    monkeypatch.setattr(tcp, "server_handshake", functools.partial(
        auth.server_handshake, versions=(WIRE_MIN_PROTOCOL_VERSION, WIRE_METRO_BARRIER_VERSION - 1)))
    p = pair()
    before = p.tokyo.vdisk("paris:vol0").read(0, DISK)

    async def forged() -> None:
        s = await open_session(p.paris, get_site(p.paris.ctx.catalog, "tokyo"))
        try:
            await s.request(lambda r: MetroOpen("pair-1", 1, [("vol0", "paris:vol0", DISK)],
                                                req_id=r), MetroAccept)
            await s.request(lambda r: MetroWrites([0], [0], [BS], [False], os.urandom(BS), 1,
                                                  req_id=r), MetroFlushed)
        finally:
            await s.close()

    with pytest.raises(ProtocolError, match="needs protocol version 5"):
        asyncio.run(forged())
    assert p.tokyo.vdisk("paris:vol0").read(0, DISK) == before


def test_writes_do_not_wait_for_round_trips(pair):
    delay = 0.005  # each way: a 10 ms round trip
    p = pair(vdisks=2, delay=delay)
    link = p.link()
    p.paris.set_mirror("vol1", None)  # vol1: the same work without the mirror
    rtt = min(link.rtt() for _ in range(3))
    assert rtt >= 2 * delay
    data = os.urandom(1000 * BS)

    def work(name: str) -> float:
        vd = p.paris.vdisk(name)
        started = time.perf_counter()
        for i in range(1000):
            vd.write(i * BS % DISK, data[i * BS: (i + 1) * BS])
        vd.flush()
        return time.perf_counter() - started

    local = work("vol1")
    barriers = link.barriers
    mirrored = work("vol0")
    # One write per round trip would take 1000 x rtt (10 s and more).
    assert mirrored < 3 * local + 50 * rtt, (mirrored, local, rtt)
    assert link.barriers == barriers + 1
    assert p.paris.vdisk("vol0").read(0, DISK) == p.tokyo.vdisk("paris:vol0").read(0, DISK)


def test_without_flushes_the_link_sends_barriers_itself(pair):
    p = pair()
    link = p.link(batch_bytes=BS)  # one 4 KiB write per batch
    vd = p.paris.vdisk("vol0")
    batches = mirror.MIRROR_BARRIER_BATCHES
    for i in range(2 * batches + 10):
        vd.write(i % (DISK // BS) * BS, os.urandom(BS))
    assert link.barriers >= 1  # the remembered batches stay bounded
    deadline = time.monotonic() + 30
    while link.barriers < 2 and time.monotonic() < deadline:
        vd.write(0, os.urandom(BS))
    assert link.barriers >= 2


# -- the stream off the event loop ---------------------------------------------------------------
@pytest.mark.parametrize("tls", [False, True])
def test_a_plain_link_runs_on_threads_and_a_tls_link_through_its_loop(pair, caplog, tls):
    """After the handshake a plain TCP session continues on blocking sockets at both ends
    (SocketStream); TLS state lives in asyncio's transport, so a TLS session stays on the
    event loops (LoopStream). Both mirror exactly, group-commit, answer pings, fail as
    LinkDown."""
    caplog.set_level("INFO", logger="nxstore.metro")
    p = pair(vdisks=2, tls=tls)
    link = p.link(batch_bytes=16 * 1024)
    assert isinstance(link._stream, LoopStream if tls else SocketStream)
    accepted = [r.getMessage() for r in caplog.records if "accepted" in r.getMessage()]
    assert len(accepted) == 1 and ("through the event loop" in accepted[0]) == tls
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            vd = p.paris.vdisk(p.names[n % 2])
            for r in range(10):
                vd.write((n * 10 + r) * 5 * BS % (DISK - 5 * BS), os.urandom(5 * BS))
                vd.flush()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    assert not errors, errors
    p.assert_identical()
    assert link.unacked_blocks() == {} and 0 < link.barriers <= 40
    assert 0 < link.rtt() < 5
    p.standby.close()
    vd = p.paris.vdisk("vol0")
    with pytest.raises(LinkDown):
        vd.write(0, b"after")
        vd.flush()
    assert not link.alive


SRV, CLI = SiteIdentity("srv-cluster", "srv"), SiteIdentity("cli-cluster", "cli")


def test_a_detached_connection_continues_the_same_stream():
    """`detach` hands a connection's socket over mid-stream: what its reader buffered, the
    frame keys and their counters carry on (the peer, still on asyncio, cannot tell), small
    and large frames go both ways, `abort` wakes a blocked recv. What it cannot take (an
    in-memory pipe) it refuses with None."""
    big = MetroWrites([0, 1], [0, 4 * BS], [40 * BS, BS], [False, False],
                      os.urandom(41 * BS), 7, req_id=9)

    async def echo(t) -> None:  # noqa: ANN001
        with contextlib.suppress(ConnectionClosed):
            while True:
                msg = await t.recv()
                await t.send(msg)
                if isinstance(msg, Ping):
                    await t.send(Pong(msg.sent_ns, req_id=msg.req_id))  # a second frame

    async def body() -> None:
        a, _ = memory_pair()
        assert await detach(a) is None
        async with await serve("127.0.0.1", 0, echo, identity=SRV, secret=SECRET) as srv:
            t = await connect("127.0.0.1", srv.port, identity=CLI, secret=SECRET)
            await t.send(Ping(1, req_id=1))
            assert await t.recv() == Ping(1, req_id=1)
            while not t._reader._buffer:  # the PONG is in the reader, not read yet
                await t._reader._wait_for_data("test")
            stream = await detach(t, send_timeout=5)
            assert isinstance(stream, SocketStream) and t.closed and stream.peer == SRV

            def blocking() -> None:
                assert stream.recv() == Pong(1, req_id=1)
                stream.send(big, Ack(3))
                assert stream.recv() == big
                assert stream.recv() == Ack(3)
                stream.send(Ping(2, req_id=2))
                assert [stream.recv(), stream.recv()] == [Ping(2, req_id=2), Pong(2, req_id=2)]
                stuck: list[BaseException] = []
                reader = threading.Thread(target=lambda: stuck.append(
                    pytest.raises(ConnectionClosed, stream.recv).value))
                reader.start()
                stream.abort()
                reader.join(10)
                assert stuck and not reader.is_alive()
                with pytest.raises(ConnectionClosed):
                    stream.send(Ack(4))
                stream.close()

            await asyncio.to_thread(blocking)

    asyncio.run(body())


# -- failures --------------------------------------------------------------------------------------
def test_a_stalled_standby_makes_flush_raise_linkdown_never_succeed(pair):
    p = pair(delay=0.0)
    link = p.link(timeout=30)
    vd = p.paris.vdisk("vol0")
    vd.write(0, os.urandom(BS))
    vd.flush()
    assert link.unacked_blocks() == {}
    p.line.hold()
    vd.write(5 * BS + 10, os.urandom(2 * BS))  # blocks 5, 6, 7
    started = time.monotonic()
    with pytest.raises(LinkDown, match="did not confirm a flush within 0.5 s"):
        link.flush(timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 10
    assert not link.alive
    with pytest.raises(LinkDown):  # and through the vDisk
        vd.flush()
    with pytest.raises(LinkDown):
        vd.trim(20 * BS, BS)
    with pytest.raises(LinkDown):
        vd.write(DISK - BS, os.urandom(BS))
    p.line.release()  # the barrier's answer may come now: the link stays dead
    with pytest.raises(LinkDown):
        link.flush(timeout=5)
    blocks = link.unacked_blocks()
    assert list(blocks) == ["vol0"]
    assert blocks["vol0"].tolist() == [5, 6, 7, 20, DISK // BS - 1]


def test_a_standby_that_goes_away_fails_the_flush_at_once(pair):
    p = pair()
    link = p.link(timeout=60)
    vd = p.paris.vdisk("vol0")
    vd.write(0, b"x" * 100)
    vd.flush()
    p.standby.close()
    started = time.monotonic()
    with pytest.raises(LinkDown):  # the write if the link saw the close already, else the flush
        vd.write(0, b"y" * 100)
        vd.flush()
    assert time.monotonic() - started < 30  # not the 60 s timeout
    assert {k: v.tolist() for k, v in link.unacked_blocks().items()} == {"vol0": [0]}


def test_a_promoted_replica_takes_no_more_mirrored_writes(pair):
    p = pair()
    link = p.link()
    vd = p.paris.vdisk("vol0")
    vd.write(0, b"a" * 10)
    vd.flush()
    p.tokyo.promote_replica("paris:vol0")
    vd.write(0, b"b" * 10)
    with pytest.raises(LinkDown, match="writable"):
        vd.flush()
    assert not link.alive
    assert p.tokyo.vdisk("paris:vol0").read(0, 10) == b"a" * 10


def test_the_standby_refuses_another_epoch(pair):
    p = pair()
    p.standby.epoch = 2
    with pytest.raises(InvalidArgument, match="epoch 1 refused: this standby is in epoch 2"):
        p.link(epoch=1)
    assert [m.epoch for m in p.standby.opened] == [1]
    link = p.link(epoch=2)
    vd = p.paris.vdisk("vol0")
    vd.write(0, b"z" * 10)
    vd.flush()
    assert link.barriers == 1
    p.assert_identical()


def test_a_standby_in_a_newer_epoch_confirms_and_applies_nothing_more(pair):
    """Fencing per barrier: once the standby moved on (a break gave the epoch to another
    site), an open session of the old epoch gets no barrier confirmed, no write applied."""
    p = pair()
    link = p.link()
    vd = p.paris.vdisk("vol0")
    vd.write(0, b"a" * 10)
    vd.flush()
    p.standby.epoch = 2
    vd.write(0, b"b" * 10)
    with pytest.raises(LinkDown, match="epoch 2"):
        vd.flush()
    assert not link.alive
    assert p.tokyo.vdisk("paris:vol0").read(0, 10) == b"a" * 10


def test_the_standby_refuses_a_replica_of_another_size(pair):
    p = pair()
    p.tokyo.promote_replica("paris:vol0")
    with pytest.raises(InvalidArgument, match="writable"):
        p.link()
    p.tokyo.make_replica("paris:vol0", p.paris.id, "paris", "vol0")
    p.paris.vdisk("vol0").resize(2 * DISK)
    with pytest.raises(InvalidArgument, match="bytes"):
        p.link()


def test_a_mirrored_vdisk_refuses_restore_and_resize(pair):
    p = pair()
    p.link()
    vd = p.paris.vdisk("vol0")
    with pytest.raises(nxstore.errors.InUse, match="mirrored synchronously"):
        vd.restore(vd.snapshots()[0])
    with pytest.raises(nxstore.errors.InUse):
        vd.resize(2 * DISK)


def test_link_arguments_and_state(pair):
    p = pair()
    site = get_site(p.paris.ctx.catalog, "tokyo")
    with pytest.raises(InvalidArgument):
        MirrorLink(p.paris, site, "pair", 1, {})
    with pytest.raises(InvalidArgument):
        MirrorLink(p.paris, site, "pair", 1, {"vol0": "paris:vol0"}, window=2)
    link = MirrorLink(p.paris, site, "pair", 1, {"vol0": "paris:vol0"})
    with pytest.raises(LinkDown, match="not open"):
        link.flush()
    link.open()
    try:
        with pytest.raises(InvalidArgument, match="opened before"):
            link.open()
        other = p.paris.create_vdisk("other", DISK)
        with pytest.raises(InvalidArgument, match="not mirrored"):
            link.write(other, 0, memoryview(b"x"))
        assert 0 < link.rtt() < 5
    finally:
        link.close()
    with pytest.raises(LinkDown, match="closed"):
        link.flush()
    link.close()  # idempotent


# -- the messages -------------------------------------------------------------------------------
def _round_trip(msg):
    return messages.decode(frames.decode_frame(b"".join(bytes(b) for b in messages.encode(msg))))


@settings(max_examples=60)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
                          st.binary(max_size=300), st.booleans(), st.integers(0, 2**40)),
                max_size=20), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_metro_writes_round_trip(ops, req_id, barrier):
    data = b"".join(d for _, _, d, trim, _ in ops if not trim)
    msg = MetroWrites([o[0] for o in ops], [o[1] for o in ops],
                      [o[4] if o[3] else len(o[2]) for o in ops], [o[3] for o in ops], data,
                      barrier, req_id=req_id)
    got = _round_trip(msg)
    assert got == msg and got.req_id == req_id and got.nbytes == len(data)
    assert got.barrier == barrier


@given(st.text(max_size=40), st.integers(0, 2**64 - 1),
       st.lists(st.tuples(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20),
                          st.integers(0, 2**64 - 1)), max_size=5))
def test_metro_open_round_trip(pair_id, epoch, vdisks):
    msg = MetroOpen(pair_id, epoch, vdisks, req_id=3)
    assert _round_trip(msg) == msg


def test_metro_writes_that_do_not_add_up_are_refused():
    with pytest.raises(InvalidArgument):
        MetroWrites([0], [0], [5], [False], b"1234")
    with pytest.raises(InvalidArgument):
        MetroWrites([0], [0], [4], [True], b"1234")
    with pytest.raises(InvalidArgument):
        MetroWrites([0, 1], [0], [4], [False], b"1234")
    good = b"".join(bytes(b) for b in messages.encode(MetroWrites([0], [8], [4], [False], b"abcd")))
    payload = bytearray(good[WIRE_FRAME_HEADER_BYTES:])
    payload[8 + 8] = 9  # the write's length: 9 bytes, 4 in the payload
    bad = frames.encode_frame(int(MetroWrites.TYPE), [bytes(payload)])
    with pytest.raises(ProtocolError):
        messages.decode(frames.decode_frame(b"".join(bytes(b) for b in bad)))
    with pytest.raises(InvalidArgument, match="u64"):
        MetroWrites([0], [8], [4], [False], b"abcd", 2**64)


@pytest.mark.parametrize(("flags", "barrier", "error"), [
    (2, None, "unknown flags"), (3, 7, "unknown flags"), (1, 0, "barrier 0")])
def test_metro_writes_with_bad_barrier_fields_are_refused(flags, barrier, error):
    good = b"".join(bytes(b) for b in messages.encode(MetroWrites([0], [8], [4], [True], b"")))
    payload = bytearray(good[WIRE_FRAME_HEADER_BYTES:])
    payload[4:8] = flags.to_bytes(4, "little")
    if barrier is not None:
        payload[8:8] = barrier.to_bytes(8, "little")
    bad = frames.encode_frame(int(MetroWrites.TYPE), [bytes(payload)])
    with pytest.raises(ProtocolError, match=error):
        messages.decode(frames.decode_frame(b"".join(bytes(b) for b in bad)))
