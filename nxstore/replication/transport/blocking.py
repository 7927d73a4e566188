"""Frames from threads: a connection whose handshake ran on asyncio, continued with blocking
calls, for streams whose latency is thread hops (the Metro mirror).

`FrameStream` is the contract: `send(*msgs)` frames, seals and writes messages in order
from any thread (one call's messages leave in one write when they are small); `recv()`
returns the next verified message (one receiving thread); `abort()` breaks both
directions at once from any thread (a blocked `recv` returns ConnectionClosed, later calls
raise it); `close()` aborts and releases the connection. Errors as `Transport`'s:
ConnectionClosed (closed, broken, timed out sending), FrameCorruption, ProtocolError.

- `detach(t)` (on `t`'s event loop) takes an authenticated plain-TCP `StreamTransport` off
  its loop: it waits until everything written is in the kernel, takes the bytes its reader
  buffered, duplicates the socket and closes the asyncio side, and returns a `SocketStream`
  that continues the same stream with blocking socket calls: same protocol version, same
  frame keys and frame counters, so the wire is unchanged (docs/format.md) and the peer
  cannot tell. Nothing may send or receive on `t` meanwhile or after. It returns None for
  what it cannot take: TLS (asyncio's TLS state lives in its transport), in-memory pipes,
  a transport with a bandwidth limit or before its handshake.
- `LoopStream(t, loop)` serves the same contract over a transport that stays on its loop
  (each call is a round trip to the loop's thread): what `detach` refused.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import socket
import struct
import threading
import time
from concurrent.futures import CancelledError as FutureCancelled

import numpy as np

from ...constants import WIRE_FRAME_HEADER_BYTES
from ...errors import ConnectionClosed, ProtocolError
from ..auth import SiteIdentity
from ..frames import Frame, FrameKey, open_payload, parse_header, seal
from ..messages import Message, decode, encode
from .stream import _SMALL_FRAME, StreamTransport

_RECV_BUFFER = 256 * 1024  # bytes read from the socket at once for small frames
_IOV_MAX = 1024  # buffers per sendmsg (Linux UIO_MAXIOV)


class FrameStream(abc.ABC):
    """Blocking frames over an authenticated connection (module docstring)."""

    version: int
    peer: SiteIdentity | None

    @abc.abstractmethod
    def send(self, *msgs: Message) -> None: ...

    @abc.abstractmethod
    def recv(self) -> Message: ...

    @abc.abstractmethod
    def readable(self) -> bool:
        """A hint: `recv` would find bytes (or the end of the stream) without waiting."""

    @abc.abstractmethod
    def linger(self, seconds: float) -> None:
        """After an ERROR was sent: read and discard what the peer still sends until it
        closes or `seconds` pass. Closing a socket with unread input makes the kernel send
        RST, which can destroy the ERROR in flight; the peer would not learn why."""

    @abc.abstractmethod
    def abort(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class SocketStream(FrameStream):
    """A detached connection on a blocking socket (`detach`). `send_timeout` (seconds)
    bounds one blocked `send` (the peer takes no data): it then raises ConnectionClosed
    and the stream is broken. `recv` waits as long as it takes."""

    def __init__(self, sock: socket.socket, *, version: int, peer: SiteIdentity,
                 send_key: FrameKey, recv_key: FrameKey, compress: bool, label: str,
                 buffered: bytes = b"", send_timeout: float | None = None) -> None:
        self.version = version
        self.peer = peer
        self.label = label
        self._sock = sock
        self._send_key = send_key
        self._recv_key = recv_key
        self._compress = compress
        self._send_lock = threading.Lock()  # frames are sealed and written in one order
        self._send_broken: BaseException | None = None
        self._closed = False
        self._buf = bytearray(max(_RECV_BUFFER, len(buffered)))
        self._buf[: len(buffered)] = buffered
        self._start, self._end = 0, len(buffered)
        self.bytes_sent = 0
        self.bytes_received = 0
        sock.setblocking(True)
        self.set_send_timeout(send_timeout)

    def set_send_timeout(self, seconds: float | None) -> None:
        """Bound each blocked send to `seconds` (None: no bound). The kernel's send timeout,
        so that `recv` on another thread keeps waiting without one."""
        sec = 0.0 if seconds is None else max(seconds, 0.001)
        tv = struct.pack("@ll", int(sec), int((sec - int(sec)) * 1e6))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)

    # -- sending ------------------------------------------------------------------------
    def send(self, *msgs: Message) -> None:
        frames = [encode(m, version=self.version, compress=self._compress) for m in msgs]
        with self._send_lock:
            if self._closed or self._send_broken is not None:
                raise ConnectionClosed(f"connection to {self.label} is closed or broken") \
                    from self._send_broken
            bufs: list = []
            for f in frames:
                seal(f, self._send_key)  # in write order: the lock orders the frames
                bufs += f
            size = sum(len(b) for b in bufs)
            try:
                if size <= _SMALL_FRAME:
                    self._sock.sendall(b"".join(bufs))
                else:
                    self._send_views([memoryview(b).cast("B") for b in bufs if len(b)])
            except OSError as exc:  # a sealed frame half sent: the stream cannot go on
                self._send_broken = exc
                raise ConnectionClosed(f"connection to {self.label} lost while sending: "
                                       f"{exc}") from exc
            self.bytes_sent += size

    def _send_views(self, views: list[memoryview]) -> None:
        while views:
            n = self._sock.sendmsg(views[:_IOV_MAX])
            while n:
                if n >= len(views[0]):
                    n -= len(views.pop(0))
                else:
                    views[0] = views[0][n:]
                    n = 0

    # -- receiving ------------------------------------------------------------------------
    def recv(self) -> Message:
        head = self._read_small(WIRE_FRAME_HEADER_BYTES, inside=False)
        h = parse_header(head, keyed=True)
        if h.length >= _SMALL_FRAME:
            payload: bytes | memoryview = self._read_large(h.length)
        else:
            payload = self._read_small(h.length, inside=True)
        data = open_payload(head, h, payload, self._recv_key)
        self.bytes_received += WIRE_FRAME_HEADER_BYTES + h.length
        return decode(Frame(h.version, h.type, h.req_id, data,
                            WIRE_FRAME_HEADER_BYTES + h.length))

    def _recv_into(self, view: memoryview, inside: bool) -> int:
        try:
            n = self._sock.recv_into(view)
        except OSError as exc:
            raise ConnectionClosed(f"connection to {self.label} lost: {exc}") from exc
        if n == 0:
            if self._closed:
                raise ConnectionClosed(f"connection to {self.label} closed")
            where = "inside a frame" if inside else "by"
            raise ConnectionClosed(f"connection closed {where} {self.label}")
        return n

    def _read_small(self, n: int, inside: bool) -> bytes:
        """The next `n` bytes (a copy: the buffer is reused)."""
        while self._end - self._start < n:
            if len(self._buf) - self._start < n:  # no room behind: move what is left down
                left = self._end - self._start
                self._buf[:left] = self._buf[self._start: self._end]
                self._start, self._end = 0, left
            self._end += self._recv_into(memoryview(self._buf)[self._end:],
                                         inside or self._end > self._start)
        out = bytes(self._buf[self._start: self._start + n])
        self._start += n
        if self._start == self._end:
            self._start = self._end = 0
        return out

    def _read_large(self, n: int) -> memoryview:
        """The next `n` bytes in a buffer of their own, read straight from the socket."""
        dest = memoryview(np.empty(n, np.uint8))  # not zero-filled: every byte is written
        k = min(n, self._end - self._start)
        dest[:k] = self._buf[self._start: self._start + k]
        self._start += k
        if self._start == self._end:
            self._start = self._end = 0
        while k < n:
            k += self._recv_into(dest[k:], True)
        return dest.toreadonly()

    def readable(self) -> bool:
        if self._end > self._start:
            return True
        try:
            self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True  # recv reports it
        return True

    # -- ending ---------------------------------------------------------------------------------
    def linger(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with contextlib.suppress(OSError):
            while (left := deadline - time.monotonic()) > 0:
                self._sock.settimeout(left)
                if not self._sock.recv(1 << 16):
                    return

    def abort(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked on another thread

    def close(self) -> None:
        """Abort and release the socket; call once no other thread receives. A send under
        way fails at once (aborted) and is waited for: a descriptor is never closed under
        a thread that still uses it."""
        self.abort()
        with self._send_lock:
            self._sock.close()


class LoopStream(FrameStream):
    """The contract over a `StreamTransport` that stays on `loop` (running on another
    thread): each call runs there and waits for it."""

    def __init__(self, t: StreamTransport, loop: asyncio.AbstractEventLoop) -> None:
        self.version = t.version
        self.peer = t.peer
        self._t = t
        self._loop = loop

    def _run(self, coro):  # noqa: ANN001, ANN202 - a coroutine of the transport
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError as exc:  # the loop is closed
            coro.close()
            raise ConnectionClosed(f"connection to {self._t.label} closed") from exc
        try:
            return fut.result()
        except FutureCancelled:
            raise ConnectionClosed(f"connection to {self._t.label} closed") from None

    async def _send(self, msgs: tuple[Message, ...]) -> None:
        for m in msgs:
            await self._t.send(m)

    def send(self, *msgs: Message) -> None:
        self._run(self._send(msgs))

    def recv(self) -> Message:
        return self._run(self._t.recv())

    def readable(self) -> bool:
        return bool(self._t._reader._buffer)  # a hint: read on another thread

    async def _linger(self, seconds: float) -> None:
        reader = self._t._reader
        with contextlib.suppress(Exception):
            async with asyncio.timeout(seconds):
                while await reader.read(1 << 16):
                    pass

    def linger(self, seconds: float) -> None:
        with contextlib.suppress(ConnectionClosed):
            self._run(self._linger(seconds))

    def abort(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: so is the transport
            self._loop.call_soon_threadsafe(self._t.abort)

    def close(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            self._run(self._t.close())


async def detach(t: StreamTransport, send_timeout: float | None = None) -> SocketStream | None:
    """Take authenticated plain-TCP `t` off its event loop (module docstring); None if it
    cannot be. `send_timeout` as `SocketStream`'s. Call on `t`'s loop while nothing sends
    or receives on it; `t` is closed afterwards (the connection lives on in the stream)."""
    writer = t._writer
    transport = getattr(writer, "transport", None)
    if (not isinstance(writer, asyncio.StreamWriter) or transport is None
            or transport.get_extra_info("ssl_object") is not None
            or t.bandwidth_limit is not None or t.closed or t.peer is None
            or t._send_key is None or t._recv_key is None):
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM:
        return None
    reader = t._reader
    take = getattr(reader, "take_buffered", None)
    if take is None:
        return None
    if getattr(reader, "_waiter", None) is not None:
        raise ProtocolError(f"connection to {t.label}: detached while a task reads it")
    # Every byte written must be in the kernel before the socket changes hands: with a
    # high-water mark of 0, drain() returns only once asyncio's buffer is empty.
    transport.set_write_buffer_limits(high=0)
    try:
        await writer.drain()
    except (OSError, RuntimeError) as exc:
        raise ConnectionClosed(f"connection to {t.label} lost: {exc}") from exc
    transport.pause_reading()
    buffered = take()
    if buffered is None:  # the peer closed, or a frame is half read
        raise ConnectionClosed(f"connection to {t.label} closed before it could be detached")
    stream = SocketStream(sock.dup(), version=t.version, peer=t.peer, send_key=t._send_key,
                          recv_key=t._recv_key, compress=t.compress, label=t.label,
                          buffered=buffered, send_timeout=send_timeout)
    t.abort()  # closes asyncio's descriptor only: no FIN, the duplicate keeps the connection
    return stream

