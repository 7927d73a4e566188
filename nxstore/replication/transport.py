"""Replication transport: one narrow interface, two implementations, one fault injector.

`Transport` is what the replication source and target talk through. Its contract:

- `await send(msg)` frames `msg` (checksum, lz4 when it pays, the MAC once the handshake
  has keyed this direction) and writes it. Returns once the frame is handed to the OS (or
  the in-memory pipe) and the write buffer is below its high-water mark; that is not a
  delivery guarantee: only a reply proves delivery. Honours the bandwidth limit. Safe to
  call from several tasks (frames are never interleaved). Raises ConnectionClosed if the
  connection is closed or breaks, InvalidArgument for a malformed message. A send
  cancelled after it has begun breaks the sending side (the MAC's frame counter moved on).
- `await recv()` returns the next message, verified (checksum, then MAC, before anything
  is decompressed or parsed). Raises ConnectionClosed (peer closed; also after
  `close()`), FrameCorruption (a byte changed on the wire; "frame authentication failed"
  when the MAC does not match: a frame forged, changed, dropped, replayed or reordered),
  VersionMismatch, ProtocolError (garbage / bad message; a frame over the limit: 8 KiB
  and never compressed until the peer is authenticated, 16 MiB after). After any of
  these the transport is unusable: later calls raise again; close it. One receiving task
  at a time. Cancelling a recv() that waits for a frame header is safe; cancelling it
  inside a frame breaks the stream. ERROR messages are returned like any message, not
  raised.
- `await close()` closes both directions; idempotent; never raises (`abort()`: the same
  without waiting).
- `peer` is the authenticated SiteIdentity of the other side (None before the handshake).
- `bytes_sent` / `bytes_received` count frame bytes (headers + payloads as sent), the
  `bytes_on_wire` of a replication (TLS record overhead not included).
- `bandwidth_limit` (bytes/s or None, settable at any time) caps what `send` writes: a
  token bucket with a burst of 0.1 s of the rate, so any 5 s window carries at most 2%
  over the limit; big frames are paced in WIRE_BANDWIDTH_CHUNK pieces.

`StreamTransport` implements it over an asyncio StreamReader + writer: TCP (`connect`,
`serve`, optional TLS with a stdlib ssl.SSLContext) and the in-memory `memory_pair()` share
every line of the framing code. `serve` caps its connections (WIRE_MAX_CONNECTIONS, of
them WIRE_MAX_UNAUTHENTICATED still in the handshake: the oldest of those is closed to make
room). Before the peer is authenticated a connection buffers at most a few KiB (small
reader limit and receive buffer). Both read through a `PayloadStreamReader`: large frame
payloads land in a fresh buffer of their own, over TCP/TLS straight from the socket
(`_BufferedStreamProtocol`, recv_into), not through StreamReader's copies. `inject_faults` puts a `FaultyWriter` under a transport to
flip a byte, stall or cut the outgoing stream at a chosen offset (tests).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import socket
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable

import numpy as np

from ..constants import (
    WIRE_BANDWIDTH_CHUNK,
    WIRE_FRAME_HEADER_BYTES,
    WIRE_HANDSHAKE_MAX_PAYLOAD,
    WIRE_HANDSHAKE_TIMEOUT_S,
    WIRE_MAX_CONNECTIONS,
    WIRE_MAX_UNAUTHENTICATED,
    WIRE_MIN_PROTOCOL_VERSION,
    WIRE_READ_LIMIT,
    WIRE_WRITE_HIGH_WATER,
)
from ..errors import ConnectionClosed, InvalidArgument, ProtocolError
from .auth import SiteIdentity, client_handshake, server_handshake
from .frames import Frame, FrameKey, open_payload, parse_header, seal
from .messages import Message, decode, encode

log = logging.getLogger("nxstore.replication")

_SMALL_FRAME = 64 * 1024  # frames below this are joined into one write


class Transport(abc.ABC):
    """The narrow interface; contracts in the module docstring."""

    @abc.abstractmethod
    async def send(self, msg: Message) -> None: ...

    @abc.abstractmethod
    async def recv(self) -> Message: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def peer(self) -> SiteIdentity | None: ...

    @property
    @abc.abstractmethod
    def bytes_sent(self) -> int: ...

    @property
    @abc.abstractmethod
    def bytes_received(self) -> int: ...

    bandwidth_limit: float | None


class TokenBucket:
    """Token bucket in bytes/s. `await take(n)` returns when n bytes may go; a take larger
    than the bucket runs it into debt (the next take waits), so any frame size works."""

    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic) -> None:
        if rate <= 0:
            raise InvalidArgument(f"bandwidth limit must be > 0 bytes/s, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else self.rate * 0.1
        self.tokens = self.burst
        self._clock = clock
        self._t = clock()

    async def take(self, n: int) -> None:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._t) * self.rate)
        self._t = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)

    def chunk(self) -> int:
        """Piece size for pacing: at most 1/20 s of the rate, at least 1 KiB."""
        return int(min(WIRE_BANDWIDTH_CHUNK, max(1024, self.rate / 20)))


class PayloadStreamReader(asyncio.StreamReader):
    """A StreamReader that can read a large frame payload straight into its own buffer.

    `await read_payload(n)` returns a read-only memoryview of n new bytes: what is
    already buffered is moved into a fresh buffer of n bytes, and the rest is written
    there as it arrives (by `feed_data`, or by `_BufferedStreamProtocol` receiving from
    the socket directly into it), instead of StreamReader's buffer-append,
    copy-out and buffer-shift per byte. The buffer is never reused, so views of it
    (decoded numpy arrays) stay valid. Raises IncompleteReadError at EOF, like
    readexactly. One reader at a time; cancelling it loses the bytes read so far."""

    _dest: memoryview | None = None
    _dest_pos = 0

    @property
    def limit(self) -> int:
        """Reading from the socket pauses while more than twice this is buffered."""
        return self._limit

    def set_limit(self, limit: int) -> None:
        self._limit = limit
        self._maybe_resume_transport()

    def dest_room(self) -> memoryview | None:
        """Where incoming bytes go next if a payload read is waiting (else None)."""
        d = self._dest
        if d is None or self._buffer or self._dest_pos >= len(d):
            return None  # full: the reader has not run yet; never hand out 0 bytes
        return d[self._dest_pos:]

    def dest_filled(self, n: int) -> None:
        """`n` bytes were written at the start of `dest_room()`."""
        assert self._dest is not None
        self._dest_pos += n
        if self._dest_pos >= len(self._dest):
            self._wakeup_waiter()

    def feed_data(self, data) -> None:
        room = self.dest_room()
        if room is not None and len(data):
            mv = memoryview(data).cast("B")
            k = min(len(room), len(mv))
            room[:k] = mv[:k]
            self.dest_filled(k)
            if k == len(mv):
                return
            data = mv[k:]
        super().feed_data(data)

    async def read_payload(self, n: int) -> memoryview:
        if self._exception is not None:
            raise self._exception
        if self._dest is not None:
            raise RuntimeError("read_payload() called while another coroutine is reading")
        # Not bytearray(n): that zero-fills (calloc), a memset of the whole payload.
        dest = memoryview(np.empty(n, np.uint8))
        buf = self._buffer
        k = min(len(buf), n)
        dest[:k] = memoryview(buf)[:k]
        del buf[:k]
        self._dest, self._dest_pos = dest, k
        try:
            while self._dest_pos < n:
                if self._exception is not None:
                    raise self._exception
                if self._eof:
                    raise asyncio.IncompleteReadError(bytes(dest[: self._dest_pos]), n)
                await self._wait_for_data("read_payload")
        finally:
            self._dest = None
            self._maybe_resume_transport()
        return dest.toreadonly()


class _BufferedStreamProtocol(asyncio.StreamReaderProtocol, asyncio.BufferedProtocol):
    """StreamReaderProtocol that receives with recv_into: into the waiting payload
    buffer of its PayloadStreamReader when there is one (no copy at all), else into a
    staging buffer fed to the reader, no larger than the reader's limit (a few KiB
    until the peer is authenticated)."""

    _STAGING = 256 * 1024

    def __init__(self, reader: PayloadStreamReader, *args, **kwargs) -> None:
        super().__init__(reader, *args, **kwargs)
        self._staging = memoryview(b"")
        self._direct = False

    def get_buffer(self, sizehint: int) -> memoryview:
        reader = self._stream_reader
        room = reader.dest_room() if reader is not None else None
        self._direct = room is not None
        if room is not None:
            return room
        size = min(self._STAGING, reader.limit) if reader is not None else 4096
        if len(self._staging) != size:
            self._staging = memoryview(bytearray(size))
        return self._staging

    def buffer_updated(self, nbytes: int) -> None:
        reader = self._stream_reader
        if reader is None:
            return
        if self._direct:
            reader.dest_filled(nbytes)
        else:
            reader.feed_data(self._staging[:nbytes])


class StreamTransport(Transport):
    """A Transport over an asyncio StreamReader and a writer with write/drain/close."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer,
        *,
        bandwidth_limit: float | None = None,
        compress: bool = True,
        label: str = "",
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._send_lock = asyncio.Lock()
        self._recv_lock = asyncio.Lock()
        self._sent = 0
        self._received = 0
        self._peer: SiteIdentity | None = None
        self._closed = False
        self._send_broken: BaseException | None = None
        self._recv_broken: BaseException | None = None
        self._bucket: TokenBucket | None = None
        self._send_key: FrameKey | None = None  # set by the handshake (auth.py)
        self._recv_key: FrameKey | None = None
        self.bandwidth_limit = bandwidth_limit
        self.compress = compress  # False: never lz4 (e.g. data known incompressible)
        self.version = WIRE_MIN_PROTOCOL_VERSION  # negotiated by the handshake
        self.label = label or "peer"

    # --- Transport -----------------------------------------------------------------

    @property
    def peer(self) -> SiteIdentity | None:
        return self._peer

    @property
    def bytes_sent(self) -> int:
        return self._sent

    @property
    def bytes_received(self) -> int:
        return self._received

    @property
    def bandwidth_limit(self) -> float | None:
        return self._bucket.rate if self._bucket else None

    @bandwidth_limit.setter
    def bandwidth_limit(self, rate: float | None) -> None:
        self._bucket = TokenBucket(rate) if rate else None

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, msg: Message) -> None:
        if self._closed:
            raise ConnectionClosed(f"send on a closed transport ({self.label})")
        bufs = encode(msg, version=self.version, compress=self.compress)
        size = sum(len(b) for b in bufs)
        async with self._send_lock:
            if self._send_broken is not None:
                raise ConnectionClosed(f"connection to {self.label} is broken") from (
                    self._send_broken
                )
            done = 0
            if self._send_key is not None:
                seal(bufs, self._send_key)  # in write order: the lock orders the frames
            try:
                if self._bucket is not None:
                    step = self._bucket.chunk()
                    for b in bufs:
                        mv = memoryview(b)
                        for i in range(0, len(mv), step):
                            piece = mv[i : i + step]
                            await self._bucket.take(len(piece))
                            self._writer.write(piece)
                            done += len(piece)
                            self._sent += len(piece)
                            await self._writer.drain()
                else:
                    if size <= _SMALL_FRAME:
                        self._writer.write(b"".join(bufs))
                    else:
                        for b in bufs:
                            self._writer.write(b)
                    done = size
                    self._sent += size
                    await self._writer.drain()
            except asyncio.CancelledError as e:
                if done < size and (done or self._send_key is not None):
                    self._send_broken = e
                raise
            except (OSError, RuntimeError, ConnectionClosed) as e:
                self._send_broken = e
                raise ConnectionClosed(f"connection to {self.label} lost while sending: {e}") from e

    async def recv(self) -> Message:
        if self._closed:
            raise ConnectionClosed(f"recv on a closed transport ({self.label})")
        async with self._recv_lock:
            if self._recv_broken is not None:
                raise ConnectionClosed(
                    f"connection to {self.label} is unusable after: {self._recv_broken}"
                ) from self._recv_broken
            try:
                frame = await self._read_frame()
                self._received += frame.wire_bytes
                return decode(frame)
            except ProtocolError as e:
                self._recv_broken = e
                raise
            except asyncio.CancelledError as e:
                self._recv_broken = self._recv_broken or (e if self._inside_frame else None)
                raise
            except (OSError, RuntimeError) as e:
                self._recv_broken = e
                raise ConnectionClosed(f"connection to {self.label} lost: {e}") from e

    async def _read_frame(self) -> Frame:
        self._inside_frame = False
        r = self._reader
        try:
            head = await r.readexactly(WIRE_FRAME_HEADER_BYTES)
        except asyncio.IncompleteReadError as e:
            if self._closed:
                raise ConnectionClosed(f"transport to {self.label} closed") from None
            if not e.partial:
                raise ConnectionClosed(f"connection closed by {self.label}") from None
            raise ConnectionClosed(
                f"connection to {self.label} closed inside a frame header "
                f"({len(e.partial)} of {WIRE_FRAME_HEADER_BYTES} bytes)"
            ) from None
        self._inside_frame = True
        key = self._recv_key
        h = parse_header(head, keyed=key is not None)
        payload: bytes | memoryview = b""
        if h.length:
            try:
                if h.length >= _SMALL_FRAME and isinstance(r, PayloadStreamReader):
                    payload = await r.read_payload(h.length)
                else:
                    payload = await r.readexactly(h.length)
            except asyncio.IncompleteReadError as e:
                raise ConnectionClosed(
                    f"connection to {self.label} closed inside a frame payload "
                    f"({len(e.partial)} of {h.length} bytes)"
                ) from None
        data = open_payload(head, h, payload, key)
        self._inside_frame = False
        return Frame(h.version, h.type, h.req_id, data, WIRE_FRAME_HEADER_BYTES + h.length)

    _inside_frame = False

    def abort(self) -> None:
        """Close both directions now, without waiting for the socket to close."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self._reader.feed_eof()  # wake a recv() waiting in another task

    async def close(self) -> None:
        if self._closed:
            return
        self.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    # --- for auth.py ---------------------------------------------------------------

    def _key_send(self, key: FrameKey) -> None:
        """Every frame sent from now on carries a MAC under `key`."""
        self._send_key = key

    def _key_recv(self, key: FrameKey) -> None:
        """Every frame received from now on must carry a MAC under `key`; the peer is
        authenticated, so frames up to the full limit are accepted."""
        self._recv_key = key
        if isinstance(self._reader, PayloadStreamReader):
            self._reader.set_limit(WIRE_READ_LIMIT)

    def _authenticated(self, peer: SiteIdentity, version: int) -> None:
        self._peer = peer
        self.version = version

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.label} peer={self._peer} "
            f"sent={self._sent} received={self._received}>"
        )


# --- in-memory pipe ------------------------------------------------------------------


class _MemoryWriter:
    """Writer half of an in-memory pipe: bytes go straight into the peer's StreamReader.
    `drain` waits while the peer holds more than WIRE_WRITE_HIGH_WATER unread bytes."""

    def __init__(self, peer_reader: asyncio.StreamReader, own_reader: asyncio.StreamReader):
        self._peer = peer_reader
        self._own = own_reader
        self._closed = False

    def write(self, data) -> None:
        if self._closed or self._peer._eof:
            raise ConnectionResetError("in-memory pipe closed")
        self._peer.feed_data(data)

    async def drain(self) -> None:
        # StreamReader has no public "consumed" signal; poll its buffer (tests only).
        while not self._closed and len(self._peer._buffer) > WIRE_WRITE_HIGH_WATER:
            await asyncio.sleep(0.0005)
        if self._closed:
            raise ConnectionResetError("in-memory pipe closed")

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._peer.feed_eof()
            self._own.feed_eof()

    async def wait_closed(self) -> None:
        return None


def memory_pair(
    *, label_a: str = "memory-a", label_b: str = "memory-b"
) -> tuple[StreamTransport, StreamTransport]:
    """Two connected, unauthenticated in-memory transports (run the handshake with
    auth.client_handshake / server_handshake, or use them raw in tests). Must be called
    with a running event loop."""
    ra = PayloadStreamReader(limit=WIRE_HANDSHAKE_MAX_PAYLOAD)
    rb = PayloadStreamReader(limit=WIRE_HANDSHAKE_MAX_PAYLOAD)
    wa, wb = _MemoryWriter(rb, ra), _MemoryWriter(ra, rb)
    return StreamTransport(ra, wa, label=label_b), StreamTransport(rb, wb, label=label_a)


# --- fault injection -----------------------------------------------------------------


class FaultyWriter:
    """Wraps a writer and damages the byte stream at offsets counted from its creation:
    `flip_at` XORs that byte with 0xFF; `stall_at` silently drops that byte and all later
    ones (the peer sees a stall); `cut_at` writes the bytes before it, then closes the
    connection and raises ConnectionResetError (the sender sees the cut, the peer an EOF
    inside a frame)."""

    def __init__(
        self,
        inner,
        *,
        flip_at: int | None = None,
        stall_at: int | None = None,
        cut_at: int | None = None,
    ) -> None:
        self.inner = inner
        self.flip_at, self.stall_at, self.cut_at = flip_at, stall_at, cut_at
        self.pos = 0
        self.flipped = self.stalled = self.cut = False

    def write(self, data) -> None:
        mv = memoryview(data).cast("B")
        start, end = self.pos, self.pos + len(mv)
        self.pos = end
        if self.cut:
            raise ConnectionResetError("fault injection: connection cut")
        if self.stalled:
            return
        if self.cut_at is not None and start <= self.cut_at < end:
            self.inner.write(mv[: self.cut_at - start])
            self.cut = True
            self.inner.close()
            raise ConnectionResetError("fault injection: connection cut")
        if self.stall_at is not None and start <= self.stall_at < end:
            self.inner.write(mv[: self.stall_at - start])
            self.stalled = True
            return
        if self.flip_at is not None and start <= self.flip_at < end:
            b = bytearray(mv)
            b[self.flip_at - start] ^= 0xFF
            self.flipped = True
            mv = memoryview(b)
        self.inner.write(mv)

    async def drain(self) -> None:
        await self.inner.drain()

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def close(self) -> None:
        self.inner.close()

    async def wait_closed(self) -> None:
        await self.inner.wait_closed()


def inject_faults(
    t: StreamTransport,
    *,
    flip_at: int | None = None,
    stall_at: int | None = None,
    cut_at: int | None = None,
) -> FaultyWriter:
    """Damage what `t` sends from now on; offsets count bytes from this call (so a test
    can inject after the handshake). Returns the FaultyWriter (its flags tell what
    happened)."""
    fw = FaultyWriter(t._writer, flip_at=flip_at, stall_at=stall_at, cut_at=cut_at)
    t._writer = fw
    return fw


# --- TCP -----------------------------------------------------------------------------


def _tune(writer: asyncio.StreamWriter) -> None:
    writer.transport.set_write_buffer_limits(high=WIRE_WRITE_HIGH_WATER)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _open_connection(host: str, port: int, **kwargs
                           ) -> tuple[PayloadStreamReader, asyncio.StreamWriter]:
    """asyncio.open_connection with a PayloadStreamReader and _BufferedStreamProtocol."""
    loop = asyncio.get_running_loop()
    reader = PayloadStreamReader(limit=WIRE_HANDSHAKE_MAX_PAYLOAD, loop=loop)
    protocol = _BufferedStreamProtocol(reader, loop=loop)
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

    def factory() -> _BufferedStreamProtocol:
        reader = PayloadStreamReader(limit=WIRE_HANDSHAKE_MAX_PAYLOAD, loop=loop)
        return _BufferedStreamProtocol(reader, on_connect, loop=loop)

    # A TLS handshake comes before on_connect (and its limits): bound it by `timeout` too.
    srv._server = await loop.create_server(factory, host, port, ssl=ssl,
                                           ssl_handshake_timeout=timeout if ssl else None)
    return srv
