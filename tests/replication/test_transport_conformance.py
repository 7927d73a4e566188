"""One conformance suite for every Transport implementation.

Backends: in-memory pair, in-memory with the FaultyWriter wrapper flipping / cutting, TCP
loopback, TLS loopback, TCP through tests/replication/tcp_proxy.py passing bytes through,
flipping one byte, or cutting the connection. The contract checked everywhere: what
`recv` returns is exactly what was sent, in order (a prefix of it); on a clean backend it
is all of it; on a faulty backend the damage is detected (ProtocolError: FrameCorruption,
ConnectionClosed…) and nothing after it is returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from conftest import run
from tcp_proxy import FaultProxy, Faults

from nxstore.errors import ConnectionClosed, ProtocolError
from nxstore.replication import (
    Ack,
    AckBatcher,
    BeginTransfer,
    Blocks,
    Commit,
    Committed,
    Error,
    GetSnapshots,
    HaveFingerprints,
    MapEntries,
    Missing,
    Ping,
    Pong,
    SendWindow,
    SiteIdentity,
    SnapshotInfo,
    Snapshots,
    StreamTransport,
    client_handshake,
    connect,
    inject_faults,
    memory_pair,
    serve,
    server_handshake,
)

SRV = SiteIdentity("c-srv", "canada")
CLI = SiteIdentity("c-cli", "paris")
SECRET = b"conformance-secret-0123456789"
FAULT_OFFSET = 300_000  # bytes after the handshake, in the a -> b direction
CLEAN = ["memory", "tcp", "tls", "proxy"]
FAULTY = ["memory-flip", "memory-cut", "proxy-flip", "proxy-cut"]
BACKENDS = CLEAN + FAULTY


@dataclass
class Pair:
    a: StreamTransport  # the client side
    b: StreamTransport  # the server side
    faulty: bool
    closers: list = field(default_factory=list)

    async def aclose(self) -> None:
        await self.a.close()
        await self.b.close()
        for c in reversed(self.closers):
            await c()


async def make_pair(kind: str, tmp_path=None) -> Pair:
    if kind.startswith("memory"):
        a, b = memory_pair()
        await asyncio.gather(client_handshake(a, CLI, SECRET), server_handshake(b, SRV, SECRET))
        if kind == "memory-flip":
            inject_faults(a, flip_at=FAULT_OFFSET)
        elif kind == "memory-cut":
            inject_faults(a, cut_at=FAULT_OFFSET)
        return Pair(a, b, kind != "memory")
    accepted: asyncio.Queue = asyncio.Queue()
    release = asyncio.Event()

    async def handler(t):
        await accepted.put(t)
        await release.wait()

    ssl_s = ssl_c = None
    if kind == "tls":
        from test_handshake import _tls_contexts

        ssl_s, ssl_c = _tls_contexts(tmp_path)
    srv = await serve("127.0.0.1", 0, handler, identity=SRV, secret=SECRET, ssl=ssl_s)
    port, proxy = srv.port, None
    if kind.startswith("proxy"):
        proxy = await FaultProxy.start("127.0.0.1", srv.port)
        port = proxy.port
    a = await connect(
        "127.0.0.1",
        port,
        identity=CLI,
        secret=SECRET,
        ssl=ssl_c,
        server_hostname="localhost" if ssl_c else None,
    )
    b = await accepted.get()
    if proxy is not None and kind != "proxy":
        at = proxy.passed("up") + FAULT_OFFSET
        proxy.faults["up"] = Faults(flip_at=at) if kind == "proxy-flip" else Faults(cut_at=at)

    async def stop():
        release.set()
        if proxy is not None:
            await proxy.close()
        await srv.close()

    return Pair(a, b, kind != "tcp" and kind != "tls" and kind != "proxy", [stop])


def with_pair(kind, fn, tmp_path=None, timeout=30.0):
    async def body():
        p = await make_pair(kind, tmp_path)
        try:
            return await fn(p)
        finally:
            await p.aclose()

    return run(body(), timeout)


def sample_messages(n_rounds: int = 6) -> list:
    rng = np.random.default_rng(1)
    out: list = []
    rid = 0
    for r in range(n_rounds):
        fps = rng.integers(0, 256, (64, 16), dtype=np.uint8)
        rid += 1
        out.append(HaveFingerprints(fps, req_id=rid))
        rnd = rng.integers(0, 256, 64 * 4096, dtype=np.uint8)
        text = np.frombuffer((b"block of text %d " % r) * (64 * 4096 // 16), np.uint8)[: 64 * 4096]
        rid += 1
        out.append(Blocks(4096, fps, rnd, req_id=rid))
        rid += 1
        out.append(Blocks(4096, fps, text, req_id=rid))  # compressed on the wire
        rid += 1
        out.append(MapEntries(np.arange(64, dtype=np.uint64) + 64 * r, fps, req_id=rid))
        out.append(Ping(r, req_id=rid))
        out.append(
            BeginTransfer(os.urandom(16), "paris", "vd", "ctr", f"s{r}", 1.5, 1 << 30, 4096, None)
        )
        out.append(Snapshots((SnapshotInfo("s", 2.0, 4096, 4096),)))
    return out


async def deliver(p: Pair, msgs: list, src=None, dst=None):
    """Send `msgs` src -> dst concurrently with receiving; return (received, error)."""
    src, dst = src or p.a, dst or p.b
    got: list = []

    async def sender():
        try:
            for m in msgs:
                await src.send(m)
        except ConnectionClosed:
            pass

    async def receiver():
        try:
            while len(got) < len(msgs):
                got.append(await asyncio.wait_for(dst.recv(), 10))
        except ProtocolError as e:
            return e
        return None

    _, err = await asyncio.gather(sender(), receiver())
    return got, err


def check_contract(p: Pair, msgs, got, err):
    assert got == msgs[: len(got)], "received something that was not sent"
    if p.faulty:
        assert err is not None, "damage on the wire went undetected"
        assert len(got) < len(msgs)
    else:
        assert err is None and len(got) == len(msgs)


# --- the suite -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
def test_stream_is_exact_or_damage_detected(kind, tmp_path):
    async def fn(p: Pair):
        msgs = sample_messages()
        sent0, recv0 = p.a.bytes_sent, p.b.bytes_received
        got, err = await deliver(p, msgs)
        check_contract(p, msgs, got, err)
        if not p.faulty:
            assert p.a.bytes_sent - sent0 == p.b.bytes_received - recv0
            raw = sum(m.data.nbytes for m in msgs if isinstance(m, Blocks))
            assert p.a.bytes_sent - sent0 < raw  # the text blocks were compressed
        else:
            if "flip" in kind:
                assert isinstance(err, ProtocolError)  # FrameCorruption, bad header, closed
            else:
                assert isinstance(err, ConnectionClosed)
            with pytest.raises(ProtocolError):  # unusable afterwards
                await p.b.recv()

    with_pair(kind, fn, tmp_path)


@pytest.mark.parametrize("kind", BACKENDS)
def test_full_duplex(kind, tmp_path):
    async def fn(p: Pair):
        up = sample_messages(4)
        down = [Pong(i, req_id=i) for i in range(200)] + [
            Blocks(4096, np.zeros((8, 16), np.uint8), os.urandom(8 * 4096), req_id=7)
        ]
        (g1, e1), (g2, e2) = await asyncio.gather(
            deliver(p, up), deliver(p, down, src=p.b, dst=p.a)
        )
        check_contract(p, up, g1, e1)
        assert g2 == down[: len(g2)]
        if not p.faulty:
            assert e2 is None and len(g2) == len(down)

    with_pair(kind, fn, tmp_path)


@pytest.mark.parametrize("kind", BACKENDS)
def test_peer_identity(kind, tmp_path):
    async def fn(p: Pair):
        assert p.a.peer == SRV and p.b.peer == CLI
        assert p.a.bytes_sent > 0 and p.a.bytes_received > 0

    with_pair(kind, fn, tmp_path)


@pytest.mark.parametrize("kind", BACKENDS)
def test_close_contract(kind, tmp_path):
    async def fn(p: Pair):
        waiting = asyncio.create_task(p.b.recv())
        await asyncio.sleep(0.01)
        await p.a.close()
        await p.a.close()  # idempotent
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(ConnectionClosed):
            await p.a.send(Ping(1))
        with pytest.raises(ConnectionClosed):
            await p.a.recv()
        # a local close wakes a local recv() too
        pending = asyncio.create_task(p.b.recv())
        await asyncio.sleep(0.01)
        await p.b.close()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(pending, 5)

    with_pair(kind, fn, tmp_path)


@pytest.mark.parametrize("kind", BACKENDS)
def test_concurrent_senders_never_interleave(kind, tmp_path):
    async def fn(p: Pair):
        async def one(k):
            for i in range(20):
                data = bytes([k]) * (3 * 4096)
                await p.a.send(
                    Blocks(4096, np.full((3, 16), k, np.uint8), data, req_id=k * 100 + i)
                )

        msgs_expected = 4 * 20
        got: list = []

        async def rx():
            try:
                while len(got) < msgs_expected:
                    got.append(await asyncio.wait_for(p.b.recv(), 10))
            except ProtocolError as e:
                return e

        results = await asyncio.gather(*(one(k) for k in range(1, 5)), rx(), return_exceptions=True)
        for m in got:
            k = m.req_id // 100
            assert (m.data == k).all() and (m.fingerprints == k).all()
        if not p.faulty:
            assert len(got) == msgs_expected and results[-1] is None
            assert sorted(m.req_id for m in got) == sorted(
                k * 100 + i for k in range(1, 5) for i in range(20)
            )

    with_pair(kind, fn, tmp_path)


@pytest.mark.parametrize("kind", BACKENDS)
def test_pipelined_transfer_with_window_and_batched_acks(kind, tmp_path):
    """A miniature source/target exchange: credits, MISSING replies, batched ACKs, COMMIT."""
    n_batches = 60

    async def target(t: StreamTransport):
        try:
            return await target_loop(t)
        except ProtocolError as e:  # what a real target does: report, close, give up
            with contextlib.suppress(ProtocolError):
                await t.send(Error.from_exception(e))
            await t.close()
            raise

    async def target_loop(t: StreamTransport):
        acks = AckBatcher(every=4)
        stored = 0
        while True:
            m = await t.recv()
            if isinstance(m, HaveFingerprints):
                await t.send(Missing(np.arange(len(m.fingerprints)) % 2 == 0, req_id=m.req_id))
            elif isinstance(m, (Blocks, MapEntries)):
                stored += isinstance(m, Blocks)
                a = acks.done(m.req_id)
                if a:
                    await t.send(a)
            elif isinstance(m, Commit):
                a = acks.flush()
                if a:
                    await t.send(a)
                await t.send(Committed(m.transfer_id, f"stored {stored}", req_id=m.req_id))
                return stored, acks

    async def source(t: StreamTransport):
        win = SendWindow(window=8)
        missing: dict[int, np.ndarray] = {}
        acks_seen = 0
        committed = asyncio.get_running_loop().create_future()
        committed.add_done_callback(lambda f: f.cancelled() or f.exception())

        async def rx():
            nonlocal acks_seen
            try:
                while True:
                    m = await t.recv()
                    if isinstance(m, Missing):
                        missing[m.req_id] = m.missing
                        win.complete(m.req_id)
                    elif isinstance(m, Ack):
                        acks_seen += 1
                        win.ack(m.upto)
                    elif isinstance(m, Committed):
                        committed.set_result(m)
                        return
                    elif isinstance(m, Error):
                        raise m.to_exception()
            except BaseException as e:
                win.fail(e)
                if not committed.done():
                    committed.set_exception(e)

        task = asyncio.create_task(rx())
        fps = np.arange(64 * 16, dtype=np.uint8).reshape(64, 16)
        for _ in range(n_batches):
            rid = await win.acquire()
            await t.send(HaveFingerprints(fps, req_id=rid))
            rid = await win.acquire()
            await t.send(Blocks(1024, fps[:8], os.urandom(8 * 1024), req_id=rid))
            assert win.in_flight <= 8
        await win.wait_idle()
        await t.send(Commit(b"t" * 16, 0, req_id=10_000))
        res = await asyncio.wait_for(committed, 10)
        await task
        return res, acks_seen, missing

    async def fn(p: Pair):
        r = await asyncio.gather(source(p.a), target(p.b), return_exceptions=True)
        if p.faulty:
            assert isinstance(r[0], ProtocolError) or isinstance(r[1], ProtocolError)
            return
        (committed, acks_seen, missing), (stored, _) = r
        assert committed.snapshot == f"stored {n_batches}" and stored == n_batches
        assert len(missing) == n_batches
        assert all(v.sum() == 32 for v in missing.values())
        assert acks_seen <= n_batches // 4 + 1  # batched: one ACK per 4 BLOCKS

    with_pair(kind, fn, tmp_path)


@pytest.mark.parametrize("kind", ["memory", "tcp"])
def test_bandwidth_limit_within_10_percent(kind, tmp_path):
    """200 KB/s for ~3 s: the rate over the whole run and over every 2 s window stays
    within 10% of the limit (the design asks for any 5 s window)."""
    limit = 200_000
    duration = 3.0

    async def fn(p: Pair):
        p.a.bandwidth_limit = limit
        assert p.a.bandwidth_limit == limit
        samples: list[tuple[float, int]] = []
        stop = asyncio.Event()

        async def tx():
            fps = np.zeros((4, 16), np.uint8)
            t0 = time.monotonic()
            while time.monotonic() - t0 < duration:
                await p.a.send(Blocks(4096, fps, os.urandom(4 * 4096)))
            stop.set()

        async def rx():
            base = p.b.bytes_received
            t0 = time.monotonic()
            samples.append((0.0, 0))
            while not (stop.is_set() and p.b.bytes_received - base >= p.a_sent()):
                try:
                    await asyncio.wait_for(p.b.recv(), 0.5)
                except asyncio.TimeoutError:
                    break
                samples.append((time.monotonic() - t0, p.b.bytes_received - base))

        sent0 = p.a.bytes_sent
        p.a_sent = lambda: p.a.bytes_sent - sent0
        await asyncio.gather(tx(), rx())
        t_end, total = samples[-1]
        rate = total / t_end
        assert 0.9 * limit <= rate <= 1.1 * limit, rate
        for t_i, b_i in samples:  # every 2 s window starting at a sample
            ends = [b for t, b in samples if t <= t_i + 2.0]
            if t_i + 2.0 <= t_end:
                assert ends[-1] - b_i <= 1.1 * limit * 2.0 + 20_000

    with_pair(kind, fn, tmp_path, timeout=20)


def test_token_bucket_unit():
    from nxstore.replication import TokenBucket

    async def body():
        b = TokenBucket(1_000_000)
        t0 = time.monotonic()
        for _ in range(20):
            await b.take(25_000)  # 500 KB at 1 MB/s, 100 KB burst -> ~0.4 s
        dt = time.monotonic() - t0
        assert 0.35 <= dt <= 0.6, dt

    run(body())


def test_faulty_writer_stall_is_silent():
    async def body():
        a, b = memory_pair()
        fw = inject_faults(a, stall_at=10)
        await a.send(Ping(1))
        assert fw.stalled
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.recv(), 0.2)

    run(body())


def test_get_snapshots_request_reply_over_memory():
    async def body():
        a, b = memory_pair()
        await a.send(GetSnapshots("paris", "vd1", "default", req_id=1))
        req = await b.recv()
        await b.send(Snapshots((SnapshotInfo("daily-1", 1.0, 8192, 4096),), req_id=req.req_id))
        rep = await a.recv()
        assert rep.req_id == 1 and rep.snapshots[0].name == "daily-1"

    run(body())
