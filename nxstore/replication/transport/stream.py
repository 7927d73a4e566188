"""`Transport`, the narrow interface the replication source and target talk through, and
`StreamTransport`, which implements it over an asyncio StreamReader + writer.

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

`StreamTransport` frames, checksums, MACs, paces and reads; where its bytes go is the
caller's: TCP/TLS (`tcp.connect`, `tcp.serve`) or an in-memory pipe (`fakes.memory_pair`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time

from ...constants import (
    WIRE_BANDWIDTH_CHUNK,
    WIRE_FRAME_HEADER_BYTES,
    WIRE_MIN_PROTOCOL_VERSION,
    WIRE_READ_LIMIT,
)
from ...errors import ConnectionClosed, InvalidArgument, ProtocolError
from ..auth import SiteIdentity
from ..frames import Frame, FrameKey, open_payload, parse_header, seal
from ..messages import Message, decode, encode
from .reader import PayloadStreamReader

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
