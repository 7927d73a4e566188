"""Structured reply chunks (doc/proto.md, "Structured reply chunk message"), built as lists
of byte parts that the transmission phase sends together with other replies.

Every function returns a complete reply to one request: its last chunk carries
NBD_REPLY_FLAG_DONE. Data is never copied into a chunk: a data chunk is a header part plus
a memoryview of the bytes read.
"""

from __future__ import annotations

import errno

from . import protocol as p

Parts = list[bytes | memoryview]
Run = tuple[int, int, bool]  # (offset, length, allocated), as Export.allocation returns them


def _chunk(cookie: int, reply_type: int, length: int, done: bool) -> bytes:
    flags = p.REPLY_FLAG_DONE if done else 0
    return p.CHUNK.pack(p.STRUCTURED_REPLY_MAGIC, flags, reply_type, cookie, length)


def done(cookie: int) -> Parts:
    """Success with no payload: one NBD_REPLY_TYPE_NONE chunk."""
    return [_chunk(cookie, p.REPLY_TYPE_NONE, 0, True)]


def error(cookie: int, code: int, message: str = "") -> Parts:
    """Failure: one NBD_REPLY_TYPE_ERROR chunk with the wire errno of `code` and a message
    for a human (cut to the protocol's string limit)."""
    text = message.encode(errors="replace")[:p.MAX_ERROR_MESSAGE].decode(errors="ignore").encode()
    return [_chunk(cookie, p.REPLY_TYPE_ERROR, p.ERROR_HEAD.size + len(text), True)
            + p.ERROR_HEAD.pack(p.wire_errno(code) or errno.EIO, len(text)) + text]


def read(cookie: int, offset: int, data: bytes, runs: list[Run] | None = None) -> Parts:
    """The reply to a successful read of `data` at `offset`. Without `runs`: one
    OFFSET_DATA chunk. With them (covering the read exactly, Export.allocation):
    OFFSET_HOLE chunks for the unallocated runs, OFFSET_DATA chunks (slices of `data`)
    for the rest, in order. The last chunk is marked DONE; a read of 0 bytes is NONE."""
    if not data:
        return done(cookie)
    runs = runs or [(offset, len(data), True)]
    view = memoryview(data)
    parts: Parts = []
    for i, (start, length, allocated) in enumerate(runs):
        last = i == len(runs) - 1
        if allocated:
            parts.append(_chunk(cookie, p.REPLY_TYPE_OFFSET_DATA, p.OFFSET.size + length, last)
                         + p.OFFSET.pack(start))
            parts.append(view[start - offset:start - offset + length])
        else:
            parts.append(_chunk(cookie, p.REPLY_TYPE_OFFSET_HOLE, p.HOLE.size, last)
                         + p.HOLE.pack(start, length))
    return parts


def block_status(cookie: int, context_id: int, runs: list[Run]) -> Parts:
    """One NBD_REPLY_TYPE_BLOCK_STATUS chunk (DONE) for base:allocation: a descriptor per
    run (at least one run, at most MAX_EXTENTS), HOLE|ZERO where unallocated, 0 where
    data."""
    body = b"".join(p.EXTENT.pack(length, 0 if allocated else p.STATE_HOLE | p.STATE_ZERO)
                    for _, length, allocated in runs[:p.MAX_EXTENTS])
    return [_chunk(cookie, p.REPLY_TYPE_BLOCK_STATUS, 4 + len(body), True)
            + context_id.to_bytes(4, "big") + body]
