"""In-memory transports and fault injection, for tests: `memory_pair` connects two
`StreamTransport`s through an in-memory pipe (same framing code as TCP), and
`inject_faults` puts a `FaultyWriter` under a transport to flip a byte, stall or cut the
outgoing stream at a chosen offset."""

from __future__ import annotations

import asyncio

from ...constants import WIRE_HANDSHAKE_MAX_PAYLOAD, WIRE_WRITE_HIGH_WATER
from .reader import PayloadStreamReader
from .stream import StreamTransport

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
