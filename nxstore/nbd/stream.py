"""Buffered reading of a client's byte stream that knows when it is about to wait.

`before_wait` runs whenever a read needs more bytes than the buffer holds, just before the
blocking recv: the transmission phase sends its pending replies there. So replies to
pipelined requests (all already buffered) go out in one system call, and no reply is held
back while the server waits for the client.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from ..errors import ConnectionClosed

READ_BUFFER = 256 << 10  # bytes buffered from a client's request stream


class ClientStream:
    def __init__(self, sock: socket.socket, size: int = READ_BUFFER) -> None:
        self._sock = sock
        self._buf = bytearray(size)
        self._start = self._end = 0
        self.before_wait: Callable[[], None] = lambda: None

    @property
    def buffered(self) -> int:
        return self._end - self._start

    def at_eof(self) -> bool:
        """True if the client closed the stream at a message boundary (nothing buffered)."""
        return self.buffered == 0 and not self._fill()

    def read(self, n: int) -> bytes:
        """Exactly `n` bytes; ConnectionClosed if the client hangs up first."""
        if n > len(self._buf):
            out = bytearray(n)
            self.readinto(out)
            return bytes(out)
        while self.buffered < n:
            if not self._fill():
                raise ConnectionClosed("the NBD client closed the connection")
        data = bytes(self._buf[self._start:self._start + n])
        self._start += n
        return data

    def readinto(self, target: bytearray) -> None:
        """Fill `target` completely; ConnectionClosed if the client hangs up first."""
        view = memoryview(target)
        take = min(len(view), self.buffered)
        view[:take] = self._buf[self._start:self._start + take]
        self._start += take
        done = take
        if done < len(view):
            self.before_wait()
        while done < len(view):  # straight into the target, not through the buffer
            n = self._sock.recv_into(view[done:])
            if not n:
                raise ConnectionClosed("the NBD client closed the connection mid-request")
            done += n

    def _fill(self) -> bool:
        """One recv into the buffer (after before_wait); False at end of stream."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):  # move the partial message to the front
            kept = self.buffered
            self._buf[:kept] = self._buf[self._start:self._end]
            self._start, self._end = 0, kept
        self.before_wait()
        n = self._sock.recv_into(memoryview(self._buf)[self._end:])
        self._end += n
        return n > 0
