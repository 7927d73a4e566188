"""Handshake: success, wrong secret, unknown version, garbage, early close, silence.

Every failure must give a clear nxstore exception on both sides, a log line, and happen
within the timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest
from certs import self_signed
from conftest import run

from nxstore.constants import WIRE_GMAC_VERSION, WIRE_NONCE_BYTES, WIRE_PROTOCOL_VERSION
from nxstore.errors import (
    AuthenticationError,
    ConnectionClosed,
    FrameCorruption,
    ProtocolError,
    VersionMismatch,
)
from nxstore.replication import (
    AuthOk,
    Error,
    ErrorCode,
    Hello,
    Ping,
    SiteIdentity,
    client_handshake,
    connect,
    decode,
    decode_frame,
    encode,
    memory_pair,
    read_frame,
    serve,
    server_handshake,
)
from nxstore.replication.auth import proof, transcript
from nxstore.replication.frames import FrameKey

SRV = SiteIdentity("c-srv-0001", "canada")
CLI = SiteIdentity("c-cli-0002", "paris")
SECRET = b"correct horse battery staple 123"
LOG = "nxstore.replication"


async def _idle(t):
    await asyncio.sleep(30)


def _wire(msg) -> bytes:
    return b"".join(bytes(p) for p in encode(msg))


# --- success -------------------------------------------------------------------------


def test_memory_handshake_exchanges_identities():
    async def body():
        a, b = memory_pair()
        got = await asyncio.gather(
            client_handshake(a, CLI, SECRET), server_handshake(b, SRV, SECRET)
        )
        assert got == [SRV, CLI] and a.peer == SRV and b.peer == CLI
        assert a.version == b.version == WIRE_PROTOCOL_VERSION == 5
        await a.close()
        await b.close()

    run(body())


@pytest.mark.parametrize("client_max", [WIRE_GMAC_VERSION - 1, WIRE_GMAC_VERSION])
def test_frames_carry_gmac_tags_from_version_5_and_hmac_before(client_max):
    """Both sides key the negotiated version's MAC: keyed frames pass both ways, and a
    frame tagged with the other MAC is refused as forged."""
    async def body():
        a, b = memory_pair()
        await asyncio.gather(client_handshake(a, CLI, SECRET, versions=(2, client_max)),
                             server_handshake(b, SRV, SECRET))
        assert a.version == b.version == client_max
        gmac = client_max >= WIRE_GMAC_VERSION
        assert (a._send_key._mac is None) == (b._recv_key._mac is None) == gmac
        for _ in range(3):
            await a.send(Ping(1))
            assert isinstance(await b.recv(), Ping)
            await b.send(Ping(2))
            assert isinstance(await a.recv(), Ping)
        # A MAC of the other kind makes tags that b rejects as forged.
        wrong = FrameKey(a._send_key._gmac_key or bytes(32), gmac=not gmac)
        wrong.frames = a._send_key.frames
        a._send_key = wrong
        await a.send(Ping(3))
        with pytest.raises(FrameCorruption, match="authentication failed"):
            await b.recv()
        await a.close()
        await b.close()

    run(body())


def test_tcp_handshake_and_str_secret():
    async def body():
        peers = []

        async def handler(t):
            peers.append(t.peer)
            await t.send(Ping(42, req_id=9))

        async with await serve("127.0.0.1", 0, handler, identity=SRV, secret="s3cret") as srv:
            t = await connect("127.0.0.1", srv.port, identity=CLI, secret="s3cret")
            assert t.peer == SRV
            assert await t.recv() == Ping(42, req_id=9)
            await t.close()
        assert peers == [CLI]

    run(body())


def test_secret_never_sent():
    class Recorder:
        def __init__(self, inner):
            self.inner, self.data = inner, bytearray()

        def write(self, d):
            self.data += bytes(d)
            self.inner.write(d)

        async def drain(self):
            await self.inner.drain()

        def close(self):
            self.inner.close()

        async def wait_closed(self):
            await self.inner.wait_closed()

    async def body():
        a, b = memory_pair()
        ra, rb = Recorder(a._writer), Recorder(b._writer)
        a._writer, b._writer = ra, rb
        await asyncio.gather(client_handshake(a, CLI, SECRET), server_handshake(b, SRV, SECRET))
        for rec in (ra, rb):
            assert SECRET not in rec.data and SECRET[:8] not in rec.data

    run(body())


def test_proofs_bind_everything():
    n1, n2 = os.urandom(WIRE_NONCE_BYTES), os.urandom(WIRE_NONCE_BYTES)
    base = transcript(1, 1, 1, CLI, n1, SRV, n2)
    variants = [
        transcript(1, 2, 1, CLI, n1, SRV, n2),
        transcript(1, 1, 1, SiteIdentity("x", "paris"), n1, SRV, n2),
        transcript(1, 1, 1, CLI, n2, SRV, n2),
        transcript(1, 1, 1, CLI, n1, SiteIdentity("c-srv-0001", "canadA"), n2),
        transcript(1, 1, 1, CLI, n1, SRV, n1),
        transcript(1, 1, 1, SRV, n1, CLI, n2),  # roles swapped
    ]
    p = proof(SECRET, b"client", base)
    assert p != proof(SECRET, b"server", base)  # no reflection
    assert p != proof(SECRET + b"x", b"client", base)
    assert all(proof(SECRET, b"client", v) != p for v in variants)


# --- failures on both sides ------------------------------------------------------------


def test_wrong_secret_both_sides_memory(caplog):
    async def body():
        a, b = memory_pair()
        ra, rb = await asyncio.gather(
            client_handshake(a, CLI, SECRET),
            server_handshake(b, SRV, b"another secret"),
            return_exceptions=True,
        )
        assert isinstance(ra, AuthenticationError) and "wrong shared secret" in str(ra)
        assert isinstance(rb, AuthenticationError)
        assert a.closed and b.closed and a.peer is None and b.peer is None

    with caplog.at_level(logging.INFO, logger=LOG):
        run(body())
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOG]
    # The client's caller reports the error (INFO here, no second warning); the server warns.
    assert any(lv == logging.INFO and "client side" in m and "AuthenticationError" in m
               for lv, m in lines)
    assert any(lv == logging.WARNING and "server side" in m and "AuthenticationError" in m
               for lv, m in lines)


def test_wrong_secret_tcp(caplog):
    async def body():
        async with await serve("127.0.0.1", 0, _idle, identity=SRV, secret=SECRET) as srv:
            t0 = time.monotonic()
            with pytest.raises(AuthenticationError):
                await connect("127.0.0.1", srv.port, identity=CLI, secret=b"wrong")
            for _ in range(100):
                if srv.handshake_failures:
                    break
                await asyncio.sleep(0.01)
            assert srv.handshake_failures == 1
            assert time.monotonic() - t0 < 2
            # the server keeps serving good clients
            t = await connect("127.0.0.1", srv.port, identity=CLI, secret=SECRET)
            assert t.peer == SRV
            await t.close()

    with caplog.at_level(logging.INFO, logger=LOG):
        run(body())
    assert sum("AuthenticationError" in r.getMessage() for r in caplog.records) >= 2


def test_no_common_version_both_sides(caplog):
    async def body():
        a, b = memory_pair()
        ra, rb = await asyncio.gather(
            client_handshake(a, CLI, SECRET, versions=(WIRE_PROTOCOL_VERSION + 1, WIRE_PROTOCOL_VERSION + 2)),
            server_handshake(b, SRV, SECRET),
            return_exceptions=True,
        )
        assert isinstance(ra, VersionMismatch) and f"2..{WIRE_PROTOCOL_VERSION}" in str(ra)
        newer = f"{WIRE_PROTOCOL_VERSION + 1}..{WIRE_PROTOCOL_VERSION + 2}"
        assert isinstance(rb, VersionMismatch) and newer in str(rb)

    with caplog.at_level(logging.INFO, logger=LOG):
        run(body())
    assert sum("VersionMismatch" in r.getMessage() for r in caplog.records) == 2


def test_newer_frame_version_gets_version_error_back():
    async def body():
        async with await serve("127.0.0.1", 0, _idle, identity=SRV, secret=SECRET) as srv:
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            hello = Hello(7, 7, "c-new", "future", os.urandom(32))
            w.write(
                b"".join(bytes(p) for p in encode(hello, version=2)).replace(
                    b"NXRP\x02", b"NXRP\x07", 1
                )
            )
            reply = decode(await read_frame(r))
            assert isinstance(reply, Error) and reply.code == ErrorCode.VERSION
            assert isinstance(reply.to_exception(), VersionMismatch)
            w.close()

    run(body())


def test_garbage_client(caplog):
    async def body():
        async with await serve("127.0.0.1", 0, _idle, identity=SRV, secret=SECRET) as srv:
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(os.urandom(200))
            reply = await asyncio.wait_for(r.read(), 5)  # an ERROR frame, then EOF
            if reply:
                err = decode(decode_frame(reply))
                assert isinstance(err, Error) and err.code == ErrorCode.PROTOCOL
            w.close()
            assert srv.handshake_failures == 1

    with caplog.at_level(logging.INFO, logger=LOG):
        run(body())
    assert any(
        "ProtocolError" in r.getMessage() and "magic" in r.getMessage() for r in caplog.records
    )


async def _raw_server(behaviour):
    async def on(r, w):
        await behaviour(r, w)

    return await asyncio.start_server(on, "127.0.0.1", 0)


@pytest.mark.parametrize(
    "kind,exc",
    [
        ("garbage", ProtocolError),
        ("close_at_once", ConnectionClosed),
        ("close_after_hello", ConnectionClosed),
        ("half_frame", ConnectionClosed),
        ("wrong_message", ProtocolError),
        ("silent", ProtocolError),
    ],
)
def test_bad_server(kind, exc, caplog):
    async def behaviour(r, w):
        if kind == "garbage":
            w.write(os.urandom(64))
        elif kind == "close_after_hello":
            await read_frame(r)
        elif kind == "half_frame":
            await read_frame(r)
            w.write(_wire(Ping(1))[:20])
        elif kind == "wrong_message":
            await read_frame(r)
            w.write(_wire(AuthOk()))
        elif kind == "silent":
            await asyncio.sleep(10)
        await w.drain()
        await asyncio.sleep(0.05)
        w.close()

    async def body():
        srv = await _raw_server(behaviour)
        port = srv.sockets[0].getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(exc) as ei:
            await connect("127.0.0.1", port, identity=CLI, secret=SECRET, timeout=0.5)
        assert time.monotonic() - t0 < 2
        srv.close()
        return ei.value

    with caplog.at_level(logging.INFO, logger=LOG):
        e = run(body())
    if kind == "silent":
        assert "timed out" in str(e)
    assert any("client side" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["close_at_once", "close_after_hello", "silent", "ping_first"])
def test_bad_client(kind, caplog):
    async def body():
        srv = await serve("127.0.0.1", 0, _idle, identity=SRV, secret=SECRET, timeout=0.5)
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        if kind == "close_after_hello":
            w.write(_wire(Hello(2, 2, "c", "s", os.urandom(32))))
            await read_frame(r)
        elif kind == "ping_first":
            w.write(_wire(Ping(1)))
            err = decode(await read_frame(r))
            assert isinstance(err, Error) and err.code == ErrorCode.PROTOCOL
        if kind != "silent":
            w.close()
        t0 = time.monotonic()
        while not srv.handshake_failures and time.monotonic() - t0 < 3:
            await asyncio.sleep(0.01)
        assert srv.handshake_failures == 1
        assert time.monotonic() - t0 < 2
        w.close()
        await srv.close()

    with caplog.at_level(logging.INFO, logger=LOG):
        run(body())
    msgs = [r.getMessage() for r in caplog.records if "server side" in r.getMessage()]
    assert msgs
    if kind == "silent":
        assert "timed out" in msgs[0]
    elif kind == "ping_first":
        assert "expected HELLO" in msgs[0]
    else:
        assert "ConnectionClosed" in msgs[0]


def test_server_side_errors_raise_directly():
    """server_handshake itself raises (serve() only logs)."""

    async def body():
        a, b = memory_pair()
        await a.send(Ping(3))
        with pytest.raises(ProtocolError, match="expected HELLO"):
            await server_handshake(b, SRV, SECRET)
        a2, b2 = memory_pair()
        await a2.close()
        with pytest.raises(ConnectionClosed):
            await server_handshake(b2, SRV, SECRET, timeout=1)
        a3, b3 = memory_pair()
        with pytest.raises(ProtocolError, match="timed out"):
            await server_handshake(b3, SRV, SECRET, timeout=0.2)

    run(body())


def test_tls_handshake(tmp_path):
    ssl = pytest.importorskip("ssl")
    ctx_s, ctx_c = _tls_contexts(tmp_path)

    async def body():
        async def handler(t):
            await t.send(await t.recv())

        async with await serve(
            "127.0.0.1", 0, handler, identity=SRV, secret=SECRET, ssl=ctx_s
        ) as srv:
            t = await connect(
                "127.0.0.1",
                srv.port,
                identity=CLI,
                secret=SECRET,
                ssl=ctx_c,
                server_hostname="localhost",
            )
            assert t.peer == SRV
            await t.send(Ping(5, req_id=1))
            assert await t.recv() == Ping(5, req_id=1)
            await t.close()

    assert ssl
    run(body())


def _tls_contexts(tmp_path):
    import ssl

    cert, key = self_signed(tmp_path)
    s = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    s.load_cert_chain(cert, key)
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.load_verify_locations(cert)
    return s, c
