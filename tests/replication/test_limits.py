"""Limits before and after authentication: frame size and compression before the peer is
authenticated, the handshake timeout against silent and trickling peers, the connection
caps of `serve`, keyed frames per direction, and version 1 peers refused."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time

import lz4.block
import pytest
import xxhash
from conftest import run

from nxstore.constants import WIRE_FRAME_HEADER_BYTES, WIRE_MAX_FRAME_PAYLOAD, WIRE_PROTOCOL_VERSION
from nxstore.errors import ConnectionClosed, FrameCorruption, ProtocolError, VersionMismatch
from nxstore.replication import (
    Error,
    ErrorCode,
    Hello,
    Ping,
    Pong,
    SiteIdentity,
    client_handshake,
    connect,
    decode,
    encode,
    memory_pair,
    read_frame,
    serve,
    server_handshake,
)

SRV = SiteIdentity("c-srv", "canada")
CLI = SiteIdentity("c-cli", "paris")
SECRET = b"limits-secret-0123456789abcdef"
H = WIRE_FRAME_HEADER_BYTES


def frame_header(length: int, raw: int, flags: int = 0, payload: bytes = b"",
                 version: int = 2) -> bytes:
    """A well-formed frame header (valid checksum over `payload`), as a hostile peer
    would send it: type HELLO, no tag."""
    head = struct.pack("<4sBBHIIQ", b"NXRP", version, 1, flags, length, raw, 0)
    seed = xxhash.xxh3_64_intdigest(payload) if payload else 0
    return head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head, seed=seed)) + bytes(16)


async def _idle(t):
    await asyncio.sleep(30)


async def _closed_by_server(r: asyncio.StreamReader, within: float) -> bytes:
    """Read until the server closes; returns what it sent (an ERROR frame, or nothing)."""
    got = b""
    try:
        while chunk := await asyncio.wait_for(r.read(65536), within):
            got += chunk
    except ConnectionResetError:
        pass
    return got


def test_big_frame_and_lz4_bomb_refused_before_authentication(caplog):
    """A 16 MiB frame header or an lz4 bomb before the handshake: refused at the header,
    nothing read or decompressed, the server keeps serving."""
    bomb = lz4.block.compress(bytes(WIRE_MAX_FRAME_PAYLOAD), store_size=False)

    async def body():
        async with await serve("127.0.0.1", 0, _idle, identity=SRV, secret=SECRET) as srv:
            for head, what in [
                (frame_header(WIRE_MAX_FRAME_PAYLOAD, WIRE_MAX_FRAME_PAYLOAD), "exceeds"),
                (frame_header(len(bomb), WIRE_MAX_FRAME_PAYLOAD, 1, bomb), "compressed"),
            ]:
                r, w = await asyncio.open_connection("127.0.0.1", srv.port)
                w.write(head)  # no payload follows: the server must not wait for it
                t0 = time.monotonic()
                reply = await _closed_by_server(r, 5)
                assert time.monotonic() - t0 < 3
                err = decode(await read_frame(_reader_of(reply)))
                assert isinstance(err, Error) and err.code == ErrorCode.PROTOCOL
                assert what in err.message and "before authentication" in err.message
                w.close()
            assert srv.handshake_failures == 2
            t = await connect("127.0.0.1", srv.port, identity=CLI, secret=SECRET)
            await t.close()

    with caplog.at_level(logging.WARNING, logger="nxstore.replication"):
        run(body())


def _reader_of(data: bytes) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    r.feed_eof()
    return r


def test_trickling_client_is_cut_at_the_handshake_timeout():
    """A client that sends one byte of HELLO every 50 ms never completes: the handshake
    timeout covers the whole handshake, not each read."""
    hello = b"".join(bytes(p) for p in encode(Hello(2, 2, "c", "s", os.urandom(32))))

    async def body():
        async with await serve("127.0.0.1", 0, _idle, identity=SRV, secret=SECRET,
                               timeout=0.5) as srv:
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)

            async def trickle() -> None:  # 150 bytes: 7.5 s if never cut
                for byte in hello:
                    w.write(bytes([byte]))
                    await w.drain()
                    await asyncio.sleep(0.05)

            t0 = time.monotonic()
            sender = asyncio.create_task(trickle())
            reply = await _closed_by_server(r, 5)
            assert time.monotonic() - t0 < 2.5 and not sender.done()
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            err = decode(await read_frame(_reader_of(reply)))
            assert isinstance(err, Error) and "timed out" in err.message
            assert srv.handshake_failures == 1
            w.close()

    run(body())


def test_connection_caps_evict_oldest_unauthenticated_and_refuse_excess(caplog):
    async def body():
        async def hold(t):  # an authenticated peer holds its slot until it leaves
            with contextlib.suppress(ProtocolError):
                await t.recv()

        async with await serve("127.0.0.1", 0, hold, identity=SRV, secret=SECRET,
                               max_connections=4, max_unauthenticated=2) as srv:
            idle = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(3)]
            # The third idle connection closed the first one (oldest still in handshake).
            assert await _closed_by_server(idle[0][0], 5) == b""
            assert srv.evicted == 1
            # A real client still gets in: it closes the oldest idle one.
            good = [await connect("127.0.0.1", srv.port, identity=CLI, secret=SECRET)]
            assert await _closed_by_server(idle[1][0], 5) == b""
            for _ in range(3):
                good.append(await connect("127.0.0.1", srv.port, identity=CLI, secret=SECRET))
            # Four authenticated connections: the last idle one was evicted on the way and
            # a fifth connection is refused at once.
            assert await _closed_by_server(idle[2][0], 5) == b""
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            assert await _closed_by_server(r, 5) == b""
            assert srv.refused == 1 and srv.evicted == 3
            with pytest.raises(ConnectionClosed):
                await connect("127.0.0.1", srv.port, identity=CLI, secret=SECRET, timeout=5)
            # Once one authenticated peer leaves, a new one is admitted.
            await good.pop().close()
            for _ in range(200):
                if srv._authenticated < 4:
                    break
                await asyncio.sleep(0.01)
            good.append(await connect("127.0.0.1", srv.port, identity=CLI, secret=SECRET))
            for t in good:
                await t.close()
            for _, wr in idle:
                wr.close()
            w.close()

    with caplog.at_level(logging.WARNING, logger="nxstore.replication"):
        run(body())
    msgs = [r.getMessage() for r in caplog.records]
    assert any("still in the handshake to make room" in m for m in msgs)
    assert any("refused connection" in m for m in msgs)


def test_version_1_client_is_refused():
    """A version 1 peer (32-byte headers, no frame MAC) gets ERROR(VERSION) and is closed."""
    payload = struct.pack("<BB", 1, 1) + struct.pack("<H", 2) + b"c1" + \
        struct.pack("<H", 2) + b"s1" + os.urandom(32)
    head = struct.pack("<4sBBHIIQ", b"NXRP", 1, 1, 0, len(payload), len(payload), 0)
    v1_hello = head + struct.pack(
        "<Q", xxhash.xxh3_64_intdigest(head, seed=xxhash.xxh3_64_intdigest(payload))) + payload

    async def body():
        async with await serve("127.0.0.1", 0, _idle, identity=SRV, secret=SECRET) as srv:
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(v1_hello)
            reply = await _closed_by_server(r, 5)
            err = decode(await read_frame(_reader_of(reply)))
            assert isinstance(err, Error) and err.code == ErrorCode.VERSION
            assert isinstance(err.to_exception(), VersionMismatch) and f"2..{WIRE_PROTOCOL_VERSION}" in err.message
            assert srv.handshake_failures == 1
            w.close()

    run(body())


def test_every_frame_after_the_handshake_is_keyed_per_direction():
    """Frames after the handshake carry a tag; a frame reflected back to its sender, or
    one from another connection with the same secret, fails authentication."""

    async def body():
        async def pair():
            a, b = memory_pair()
            await asyncio.gather(client_handshake(a, CLI, SECRET),
                                 server_handshake(b, SRV, SECRET))
            return a, b

        a, b = await pair()
        sent: list[bytes] = []
        real_write = b._writer.write
        b._writer.write = lambda d: (sent.append(bytes(d)), real_write(d))[1]
        await b.send(Pong(1, req_id=1))
        assert await a.recv() == Pong(1, req_id=1)
        (frame,) = sent
        assert frame[32:H] != bytes(16)  # tagged
        b._reader.feed_data(frame)  # reflected: b reads its own frame
        with pytest.raises(FrameCorruption, match="authentication failed"):
            await b.recv()
        a2, b2 = await pair()
        b2._reader.feed_data(frame)  # same secret, another connection: other keys
        with pytest.raises(FrameCorruption, match="authentication failed"):
            await b2.recv()
        # Keyed traffic still works both ways on a fresh pair.
        await a2.send(Ping(7, req_id=3))
        for t in (a, b, a2, b2):
            await t.close()

    run(body())
