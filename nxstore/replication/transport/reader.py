"""Receiving large frame payloads without copies: `PayloadStreamReader` reads a payload
into a fresh buffer of its own, and `BufferedStreamProtocol` fills that buffer straight
from the socket (recv_into). Before the peer is authenticated the reader's small limit
keeps what a connection buffers to a few KiB."""

from __future__ import annotations

import asyncio

import numpy as np


class PayloadStreamReader(asyncio.StreamReader):
    """A StreamReader that can read a large frame payload straight into its own buffer.

    `await read_payload(n)` returns a read-only memoryview of n new bytes: what is
    already buffered is moved into a fresh buffer of n bytes, and the rest is written
    there as it arrives (by `feed_data`, or by `BufferedStreamProtocol` receiving from
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

    def take_buffered(self) -> bytes | None:
        """Remove and return what is buffered and not read yet, for a caller that takes
        the connection over (`blocking.detach`; reading paused first); None if the stream
        ended or failed, or a payload read is under way."""
        if self._eof or self._exception is not None or self._dest is not None:
            return None
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

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


class BufferedStreamProtocol(asyncio.StreamReaderProtocol, asyncio.BufferedProtocol):
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
