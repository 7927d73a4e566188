"""The NBD transmission phase: requests in, replies out, one request at a time (in order;
replies to pipelined requests are sent together).

Replies are simple ones unless the client negotiated structured replies (Session); then
every reply is structured (nxstore.nbd.replies): READ as OFFSET_DATA chunks, with
OFFSET_HOLE chunks for unallocated runs of reads of at least READ_HOLE_MIN bytes,
BLOCK_STATUS as one base:allocation chunk, the rest as NONE, errors as ERROR chunks.

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
from collections.abc import Callable
from typing import TypeVar

from ..errors import NxError, ProtocolError
from . import protocol as p
from . import replies
from .export import Export, errno_of
from .session import Session
from .stream import ClientStream

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_PENDING_REPLIES = 32  # replies held back at most before sending them
MAX_PENDING_BYTES = 4 << 20  # bytes of read data held back at most
_WRITE_FLAGS = p.CMD_FLAG_FUA
_ZERO_FLAGS = p.CMD_FLAG_FUA | p.CMD_FLAG_NO_HOLE | p.CMD_FLAG_FAST_ZERO
# Reads shorter than this get one data chunk without a look at the block map: a guest's
# small reads stay one lookup, and a hole saves bytes on the wire only in longer reads.
READ_HOLE_MIN = 64 << 10
# BLOCK_STATUS looks at this many blocks at most per request (8 bytes of lookup result
# each); the spec lets the reply cover less than asked, and clients ask on from its end.
STATUS_MAX_BLOCKS = 1 << 19


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


def serve_requests(sock: socket.socket, stream: ClientStream, export: Export,
                   session: Session | None = None) -> None:
    """Answer requests until the client disconnects (NBD_CMD_DISC or EOF). Replies wait
    while more requests are already buffered (up to MAX_PENDING_REPLIES/BYTES) and go
    out together before the server would wait for the client (ClientStream.before_wait).
    Raises ProtocolError on a malformed request stream."""
    session = session or Session()
    pending: replies.Parts = []
    held = held_replies = 0  # bytes and replies in pending

    def send_pending() -> None:
        nonlocal held, held_replies
        if pending:
            send_parts(sock, *pending)
            pending.clear()
            held = held_replies = 0

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
            if session.structured:
                parts = _structured(export, session, cookie, command, flags, offset, length,
                                    payload)
            else:
                error, data = _execute(export, command, flags, offset, length, payload)
                parts = [p.SIMPLE_REPLY.pack(p.SIMPLE_REPLY_MAGIC,
                                             p.wire_errno(error) if error else 0, cookie)]
                if data:
                    parts.append(data)
            pending.extend(parts)
            held += sum(len(part) for part in parts)
            held_replies += 1
            if held_replies >= MAX_PENDING_REPLIES or held >= MAX_PENDING_BYTES:
                send_pending()
    except ConnectionError:
        return
    finally:
        with contextlib.suppress(OSError):
            send_pending()


def _structured(export: Export, session: Session, cookie: int, command: int, flags: int,
                offset: int, length: int, payload: bytearray | None) -> replies.Parts:
    """The structured reply to one request (see the module docstring)."""
    if command == p.CMD_READ:
        if flags & ~p.CMD_FLAG_DF:
            return replies.error(cookie, errno.EINVAL, "unsupported READ flags")
        if length > p.MAX_PAYLOAD or offset + length > export.size:
            return replies.error(cookie, errno.EINVAL, "read beyond the end or too long")

        def read() -> replies.Parts:
            data = export.pread(offset, length)
            # The map is asked after the read: a block written or trimmed in between is
            # sent as either its old or its new state, as for any concurrent request.
            runs = None
            if length >= READ_HOLE_MIN and not flags & p.CMD_FLAG_DF:
                runs = export.allocation(offset, length)
            return replies.read(cookie, offset, data, runs)

        return _attempt(export, command, offset, length, read, cookie)
    if command == p.CMD_BLOCK_STATUS:
        return _block_status(export, session, cookie, flags, offset, length)
    error, _ = _execute(export, command, flags, offset, length, payload)
    if error:
        return replies.error(cookie, error, errno.errorcode.get(error, ""))
    return replies.done(cookie)


def _block_status(export: Export, session: Session, cookie: int, flags: int, offset: int,
                  length: int) -> replies.Parts:
    """One BLOCK_STATUS chunk per selected context (there is only base:allocation)."""
    if not session.contexts:
        return replies.error(cookie, errno.EINVAL, "no meta context was selected")
    if flags & ~(p.CMD_FLAG_REQ_ONE | p.CMD_FLAG_FUA):  # FUA: the spec has servers ignore it
        return replies.error(cookie, errno.EINVAL, "unsupported BLOCK_STATUS flags")
    if not length or offset + length > export.size:
        return replies.error(cookie, errno.EINVAL, "empty range or beyond the end")
    bs = export.block_size
    span = min(length, STATUS_MAX_BLOCKS * bs - offset % bs)

    def status() -> replies.Parts:
        runs = export.allocation(offset, span)
        if flags & p.CMD_FLAG_REQ_ONE:
            runs = runs[:1]
        parts: replies.Parts = []
        for context_id in session.contexts:
            parts += replies.block_status(cookie, context_id, runs)
        return parts

    return _attempt(export, p.CMD_BLOCK_STATUS, offset, length, status, cookie)


def _attempt(export: Export, command: int, offset: int, length: int,
             action: Callable[[], replies.Parts], cookie: int) -> replies.Parts:
    """`action()`, or an error chunk if the engine fails (logged like _execute does)."""
    code, parts = _guarded(export, command, offset, length, action)
    return replies.error(cookie, code, errno.errorcode.get(code, "")) if code else parts


def _guarded(export: Export, command: int, offset: int, length: int,
             action: Callable[[], T]) -> tuple[int, T | None]:
    """(0, action()) or (errno, None) if it raised: engine errors map through errno_of
    and are logged as warnings; anything else is a bug, logged with its traceback, and
    EIO: the client still gets its reply."""
    try:
        return 0, action()
    except (NxError, OSError) as exc:
        code = errno_of(exc)
        log.warning("NBD export %s: command %d at %d+%d failed (%s): %s", export.name,
                    command, offset, length, errno.errorcode.get(code, code), exc)
        return code, None
    except Exception:
        log.exception("NBD export %s: command %d at %d+%d failed", export.name, command,
                      offset, length)
        return errno.EIO, None


def _execute(export: Export, command: int, flags: int, offset: int, length: int,
             payload: bytearray | None) -> tuple[int, bytes]:
    """(errno, data to send) for one request; errno 0 on success."""
    code, data = _guarded(export, command, offset, length,
                          lambda: _run(export, command, flags, offset, length, payload))
    return (code, b"") if code else data  # type: ignore[return-value]


def _run(export: Export, command: int, flags: int, offset: int, length: int,
         payload: bytearray | None) -> tuple[int, bytes]:
    """(errno, data) of a request whose own checks may fail; engine errors raise."""
    end = offset + length
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
