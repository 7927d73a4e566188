"""Replication over TCP (optionally TLS): `connect` opens an authenticated connection,
`serve` listens and runs a handler per authenticated connection, `Server` is the listening
endpoint with its connection limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as _ssl
from collections.abc import Awaitable, Callable

from ...constants import (
    WIRE_HANDSHAKE_MAX_PAYLOAD,
    WIRE_HANDSHAKE_TIMEOUT_S,
    WIRE_MAX_CONNECTIONS,
    WIRE_MAX_UNAUTHENTICATED,
    WIRE_WRITE_HIGH_WATER,
)
from ...errors import ConnectionClosed, InvalidArgument
from ..auth import SiteIdentity, client_handshake, server_handshake
from .reader import BufferedStreamProtocol, PayloadStreamReader
from .stream import StreamTransport

log = logging.getLogger("nxstore.replication")


def _tune(writer: asyncio.StreamWriter) -> None:
    writer.transport.set_write_buffer_limits(high=WIRE_WRITE_HIGH_WATER)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _open_connection(host: str, port: int, **kwargs
                           ) -> tuple[PayloadStreamReader, asyncio.StreamWriter]:
    """asyncio.open_connection with a PayloadStreamReader and BufferedStreamProtocol."""
    loop = asyncio.get_running_loop()
    reader = PayloadStreamReader(limit=WIRE_HANDSHAKE_MAX_PAYLOAD, loop=loop)
    protocol = BufferedStreamProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port, **kwargs)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def connect(
    host: str,
    port: int,
    *,
    identity: SiteIdentity,
    secret: bytes | str,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = WIRE_HANDSHAKE_TIMEOUT_S,
    bandwidth_limit: float | None = None,
) -> StreamTransport:
    """Open a TCP (or TLS, with `ssl`) connection and run the client handshake.

    Returns an authenticated StreamTransport (`peer` is the server's identity). Raises
    OSError if the address cannot be reached, ConnectionClosed if connecting times out,
    and what `auth.client_handshake` raises (the transport is then closed)."""
    try:
        reader, writer = await asyncio.wait_for(
            _open_connection(host, port, ssl=ssl,
                             server_hostname=server_hostname if ssl else None),
            timeout,
        )
    except asyncio.TimeoutError:
        raise ConnectionClosed(
            f"connecting to {host}:{port} timed out after {timeout:g} s"
        ) from None
    _tune(writer)
    t = StreamTransport(reader, writer, bandwidth_limit=bandwidth_limit, label=f"{host}:{port}")
    await client_handshake(t, identity, secret, timeout=timeout)
    return t


Handler = Callable[[StreamTransport], Awaitable[None]]


class Server:
    """A listening replication endpoint (from `serve`). `port` is the bound port (useful
    with port 0). `await close()` stops listening and closes live connections.

    Counters: `handshake_failures` (including connections closed to make room),
    `evicted` (closed while in the handshake to make room), `refused` (closed at once:
    every slot held by an authenticated peer)."""

    def __init__(self, max_connections: int, max_unauthenticated: int) -> None:
        if not 1 <= max_unauthenticated <= max_connections:
            raise InvalidArgument(
                f"need 1 <= max_unauthenticated ({max_unauthenticated}) <= max_connections "
                f"({max_connections})")
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._transports: set[StreamTransport] = set()
        self._pending: dict[StreamTransport, None] = {}  # in the handshake, oldest first
        self._authenticated = 0
        self.max_connections = max_connections
        self.max_unauthenticated = max_unauthenticated
        self.handshake_failures = 0
        self.evicted = 0
        self.refused = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def sockets(self):
        assert self._server is not None
        return self._server.sockets

    def _make_room(self, label: str) -> bool:
        """Room for a new connection from `label`? At either limit the oldest connection
        still in the handshake is closed (idle or slow peers cannot keep a real one
        out); False when every connection is authenticated (close the new one)."""
        pending = len(self._pending)
        if pending < self.max_unauthenticated and \
                pending + self._authenticated < self.max_connections:
            return True
        if not pending:
            self.refused += 1
            log.warning("refused connection from %s: %d authenticated connections (the limit)",
                        label, self._authenticated)
            return False
        oldest = next(iter(self._pending))
        del self._pending[oldest]
        self.evicted += 1
        log.warning("closed connection from %s still in the handshake to make room for %s "
                    "(limits: %d unauthenticated, %d connections)", oldest.label, label,
                    self.max_unauthenticated, self.max_connections)
        oldest.abort()
        return True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._transports):
            await t.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def serve(
    host: str,
    port: int,
    handler: Handler,
    *,
    identity: SiteIdentity,
    secret: bytes | str,
    ssl: _ssl.SSLContext | None = None,
    timeout: float = WIRE_HANDSHAKE_TIMEOUT_S,
    bandwidth_limit: float | None = None,
    max_connections: int = WIRE_MAX_CONNECTIONS,
    max_unauthenticated: int = WIRE_MAX_UNAUTHENTICATED,
) -> Server:
    """Listen on host:port. Each connection runs the server handshake (at most `timeout`
    seconds, however slowly the peer sends); on success `await handler(transport)` runs
    with the authenticated transport, which is closed when the handler returns or raises
    (a handler exception is logged, not propagated). A failed handshake is logged
    (auth.py), counted in `handshake_failures`, and the connection closed; the server
    keeps serving. At most `max_connections` connections, of them at most
    `max_unauthenticated` in the handshake (`Server._make_room`). Raises InvalidArgument
    (limits), OSError (cannot listen)."""
    srv = Server(max_connections, max_unauthenticated)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        label = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not srv._make_room(label):
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        srv._tasks.add(task)
        _tune(writer)
        t = StreamTransport(reader, writer, bandwidth_limit=bandwidth_limit, label=label)
        srv._transports.add(t)
        srv._pending[t] = None
        try:
            try:
                await server_handshake(t, identity, secret, timeout=timeout)
            except Exception:
                srv.handshake_failures += 1
                return
            finally:
                srv._pending.pop(t, None)
            srv._authenticated += 1
            try:
                await handler(t)
            except Exception:
                log.exception("replication handler for %s (%s) failed", t.peer, label)
            finally:
                srv._authenticated -= 1
        except asyncio.CancelledError:
            pass  # Server.close(): end quietly (asyncio logs a cancelled connection task)
        finally:
            await t.close()
            srv._transports.discard(t)
            srv._tasks.discard(task)

    loop = asyncio.get_running_loop()

    def factory() -> BufferedStreamProtocol:
        reader = PayloadStreamReader(limit=WIRE_HANDSHAKE_MAX_PAYLOAD, loop=loop)
        return BufferedStreamProtocol(reader, on_connect, loop=loop)

    # A TLS handshake comes before on_connect (and its limits): bound it by `timeout` too.
    srv._server = await loop.create_server(factory, host, port, ssl=ssl,
                                           ssl_handshake_timeout=timeout if ssl else None)
    return srv
