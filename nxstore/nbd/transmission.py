"""The NBD transmission phase: requests in, simple replies out, one request at a time
(in order; replies to pipelined requests are sent together).

Every request gets a reply, errors included (the errno of nxstore.nbd.export.errno_of, in
the protocol's set): a failing vDisk never leaves a client hanging. A client that breaks
the framing (bad magic, a write longer than MAX_PAYLOAD) is disconnected, since the rest of
its stream can no longer be parsed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket

from ..errors import NxError, ProtocolError
from . import protocol as p
from .export import Export, errno_of
from .stream import ClientStream

log = logging.getLogger(__name__)

MAX_PENDING_REPLIES = 32  # replies held back at most before sending them
MAX_PENDING_BYTES = 4 << 20  # bytes of read data held back at most
_WRITE_FLAGS = p.CMD_FLAG_FUA
_ZERO_FLAGS = p.CMD_FLAG_FUA | p.CMD_FLAG_NO_HOLE | p.CMD_FLAG_FAST_ZERO


def send_parts(sock: socket.socket, *parts: bytes | memoryview) -> None:
    """Send every part, in order, in as few system calls as the kernel allows."""
    views = [memoryview(part).cast("B") for part in parts if len(part)]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def serve_requests(sock: socket.socket, stream: ClientStream, export: Export) -> None:
    """Answer requests until the client disconnects (NBD_CMD_DISC or EOF). Replies wait
    while more requests are already buffered (up to MAX_PENDING_REPLIES/BYTES) and go
    out together before the server would wait for the client (ClientStream.before_wait).
    Raises ProtocolError on a malformed request stream."""
    pending: list[bytes] = []
    held = 0  # bytes in pending

    def send_pending() -> None:
        nonlocal held
        if pending:
            send_parts(sock, *pending)
            pending.clear()
            held = 0

    stream.before_wait = send_pending
    try:
        while not stream.at_eof():  # a client may hang up without NBD_CMD_DISC
            magic, flags, command, cookie, offset, length = p.REQUEST.unpack(
                stream.read(p.REQUEST.size))
            if magic != p.REQUEST_MAGIC:
                raise ProtocolError(f"bad NBD request magic {magic:#x}")
            if command == p.CMD_DISC:
                return
            payload = None
            if command == p.CMD_WRITE:
                if length > p.MAX_PAYLOAD:
                    raise ProtocolError(f"NBD write of {length} bytes exceeds {p.MAX_PAYLOAD}")
                payload = bytearray(length)
                stream.readinto(payload)
            error, data = _execute(export, command, flags, offset, length, payload)
            pending.append(p.SIMPLE_REPLY.pack(p.SIMPLE_REPLY_MAGIC,
                                               p.wire_errno(error) if error else 0, cookie))
            if data:
                pending.append(data)
                held += len(data)
            if len(pending) >= MAX_PENDING_REPLIES or held >= MAX_PENDING_BYTES:
                send_pending()
    except ConnectionError:
        return
    finally:
        with contextlib.suppress(OSError):
            send_pending()


def _execute(export: Export, command: int, flags: int, offset: int, length: int,
             payload: bytearray | None) -> tuple[int, bytes]:
    """(errno, data to send) for one request; errno 0 on success."""
    end = offset + length
    try:
        if command == p.CMD_READ:
            if flags or length > p.MAX_PAYLOAD or end > export.size:
                return errno.EINVAL, b""
            return 0, export.pread(offset, length)
        if command == p.CMD_FLUSH:
            if flags or offset or length:
                return errno.EINVAL, b""
            export.flush()
            return 0, b""
        if command not in (p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES):
            return errno.EINVAL, b""
        if flags & ~(_ZERO_FLAGS if command == p.CMD_WRITE_ZEROES else _WRITE_FLAGS):
            return errno.EINVAL, b""
        if export.read_only:
            return errno.EPERM, b""
        if end > export.size:  # the protocol asks ENOSPC for writes past the end
            return (errno.EINVAL if command == p.CMD_TRIM else errno.ENOSPC), b""
        fua = bool(flags & p.CMD_FLAG_FUA)
        if command == p.CMD_WRITE:
            export.pwrite(offset, memoryview(payload), fua)
        elif command == p.CMD_TRIM:
            export.trim(offset, length, fua)
        else:
            export.zero(offset, length, fua)
        return 0, b""
    except (NxError, OSError) as exc:
        code = errno_of(exc)
        log.warning("NBD export %s: command %d at %d+%d failed (%s): %s", export.name,
                    command, offset, length, errno.errorcode.get(code, code), exc)
        return code, b""
    except Exception:  # a bug: the client still gets its reply
        log.exception("NBD export %s: command %d at %d+%d failed", export.name, command,
                      offset, length)
        return errno.EIO, b""
