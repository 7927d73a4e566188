"""Replication frame codec: one frame = a 48-byte header + a payload.

Byte layout (docs/format.md; all integers little-endian)::

    0   4  magic b"NXRP" (WIRE_MAGIC)
    4   1  protocol version (u8)
    5   1  message type (u8, messages.MessageType)
    6   2  flags (u16): bit 0 = payload is one lz4 block (no size prefix); others 0
    8   4  payload length as sent (u32) <= WIRE_MAX_FRAME_PAYLOAD
    12  4  uncompressed payload length (u32) <= WIRE_MAX_FRAME_PAYLOAD;
           equals the payload length when bit 0 is clear
    16  8  request id (u64): chosen by the requester, echoed by the reply; 0 = none
    24  8  checksum = XXH3-64(bytes 0..23, seed = XXH3-64(payload as sent))
    32  16 tag: 16 zero bytes in the handshake; once the direction is keyed, the MAC
           of (u64 frame number || bytes 0..31 || payload as sent) under the direction
           key (`FrameKey`): AES-256-GMAC with the frame number as nonce from protocol
           version 5 (WIRE_GMAC_VERSION), HMAC-SHA256 truncated to 16 bytes before
    48  …  payload

The checksum covers every header byte but the tag and the payload as it travels, so a
changed byte anywhere is detected before anything is decompressed or parsed; the tag
makes a change by anyone without the key (and a dropped, replayed, reordered or
reflected frame) detectable too, also before anything is decompressed or parsed.
Lengths are checked against the limit before any buffer is allocated: 16 MiB on a keyed
direction, WIRE_HANDSHAKE_MAX_PAYLOAD (and no compression) before.

This module does no I/O except `read_frame`, which reads one frame from an
`asyncio.StreamReader`; its only state is the frame counter inside each `FrameKey`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import struct
from collections.abc import Sequence
from typing import NamedTuple

import lz4.block
import xxhash

from ..constants import (
    COMPRESS_MIN_SAVING,
    WIRE_COMPRESS_MIN_PAYLOAD,
    WIRE_FRAME_HEADER_BYTES,
    WIRE_HANDSHAKE_MAX_PAYLOAD,
    WIRE_MAC_BYTES,
    WIRE_MAGIC,
    WIRE_MAX_FRAME_PAYLOAD,
    WIRE_MIN_PROTOCOL_VERSION,
    WIRE_PROTOCOL_VERSION,
)
from ..errors import (
    ConnectionClosed,
    FrameCorruption,
    InvalidArgument,
    ProtocolError,
    VersionMismatch,
)
from ..store.native import gmac_tag

FLAG_LZ4 = 0x0001
KNOWN_FLAGS = FLAG_LZ4

HEAD = struct.Struct("<4sBBHIIQ")  # the 24 bytes the checksum covers directly
_U64 = struct.Struct("<Q")
MACED = HEAD.size + 8  # header bytes the tag covers (all but the tag itself)
NO_TAG = bytes(WIRE_MAC_BYTES)  # the tag of a handshake frame
assert MACED + WIRE_MAC_BYTES == WIRE_FRAME_HEADER_BYTES

_xxh64 = xxhash.xxh3_64_intdigest

Buffer = bytes | bytearray | memoryview


class FrameHeader(NamedTuple):
    """A parsed, validated frame header (checksum and tag not verified yet)."""

    version: int
    type: int
    flags: int
    length: int  # payload bytes as sent
    raw_length: int  # payload bytes after decompression
    req_id: int
    checksum: int
    tag: bytes

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_LZ4)


class Frame(NamedTuple):
    """A decoded frame: header fields and the verified, decompressed payload."""

    version: int
    type: int
    req_id: int
    payload: bytes | memoryview
    wire_bytes: int  # header + payload as sent


class FrameKey:
    """The MAC key of one direction of one connection, and its frame counter.

    `tag(head, payload)` returns the tag of the n-th frame (from 0) keyed in this
    direction and advances n: with `gmac` (protocol version 5 on), AES-256-GMAC(key,
    nonce n, u64 n || head || payload), whose nonce never repeats under a key because the
    handshake keys every direction of every connection afresh; else HMAC-SHA256(key,
    u64 n || head || payload)[:16]. The sender and the receiver of a direction each hold
    a FrameKey made from the same key and call `tag` once per frame in stream order, so a
    frame that is changed, dropped, replayed, reordered, or reflected from the other
    direction (other key) gets a tag that does not match. Not thread-safe (one per
    direction and side)."""

    __slots__ = ("_gmac_key", "_mac", "frames")

    def __init__(self, key: bytes, *, gmac: bool = False) -> None:
        self._gmac_key = key if gmac else None
        # OpenSSL HMAC, copied per frame
        self._mac = None if gmac else hmac.new(key, digestmod=hashlib.sha256)
        self.frames = 0

    def tag(self, head: Buffer, payload: Sequence[Buffer]) -> bytes:
        n = self.frames
        self.frames += 1
        if self._mac is None:
            assert self._gmac_key is not None
            return gmac_tag(self._gmac_key, n, [_U64.pack(n), head, *payload])
        m = self._mac.copy()
        m.update(_U64.pack(n))
        m.update(head)
        for p in payload:
            m.update(p)
        return m.digest()[:WIRE_MAC_BYTES]


def seal(frame: list[Buffer], key: FrameKey) -> None:
    """Put the tag of the next frame of `key`'s direction into `frame` ([header,
    *payload] from `encode_frame`, in place). Seal frames in the order they are sent."""
    head = bytes(frame[0][:MACED])
    frame[0] = head + key.tag(head, frame[1:])


def _byte_view(p: Buffer) -> memoryview | bytes:
    mv = memoryview(p)
    if mv.nbytes == 0:
        return b""
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


def _payload_hash(parts: Sequence[Buffer]) -> int:
    if len(parts) == 1:
        return _xxh64(parts[0])
    h = xxhash.xxh3_64()
    for p in parts:
        h.update(p)
    return h.intdigest()


def maybe_compress(payload: Buffer) -> bytes | None:
    """The lz4 block of `payload` if it saves at least 1/COMPRESS_MIN_SAVING, else None
    (the extent store's rule)."""
    n = len(payload)
    if n < WIRE_COMPRESS_MIN_PAYLOAD:
        return None
    c = lz4.block.compress(payload, store_size=False)
    return c if len(c) <= n - n // COMPRESS_MIN_SAVING else None


_PROBE_MIN = 256 * 1024  # payloads at least this large are probed before compressing
_PROBE_BYTES = 16 * 1024  # three probes of this size: start, middle, end of the largest part


def worth_compressing(parts: Sequence[Buffer]) -> bool:
    """Cheap guess whether lz4 can pay on a large payload: compress three 16 KiB samples
    of its largest part; False if they save less than half the required 1/8. Costs ~5% of
    compressing 1 MiB, saves ~95% on incompressible data (the common replication case)."""
    big = max(parts, key=len)
    n = len(big)
    if n < _PROBE_MIN:
        return True
    mv = memoryview(big)
    saved = total = 0
    for off in (0, n // 2, n - _PROBE_BYTES):
        piece = mv[off : off + _PROBE_BYTES]
        saved += len(piece) - len(lz4.block.compress(piece, store_size=False))
        total += len(piece)
    return saved * COMPRESS_MIN_SAVING * 2 >= total


def encode_frame(
    msg_type: int,
    parts: Sequence[Buffer],
    *,
    req_id: int = 0,
    compress: bool = False,
    version: int = WIRE_PROTOCOL_VERSION,
) -> list[Buffer]:
    """Frame a payload given as buffers (joined logically, never copied unless compressed).

    `parts` are bytes-like objects (C-contiguous; numpy arrays are sent as their raw bytes).
    Returns [header, *payload parts]: write them in order; the header's tag is zero (a
    handshake frame) until `seal` sets it. With `compress`, the payload is
    sent as an lz4 block when that saves >= 1/8 of it (payloads of 256 KiB or more are
    first probed by `worth_compressing`). Raises InvalidArgument if the payload
    exceeds WIRE_MAX_FRAME_PAYLOAD or a header field is out of range (nothing is sent).
    """
    parts = [p if isinstance(p, bytes) else _byte_view(p) for p in parts]
    raw_length = sum(len(p) for p in parts)
    if raw_length > WIRE_MAX_FRAME_PAYLOAD:
        raise InvalidArgument(
            f"frame payload of {raw_length} bytes exceeds the limit of {WIRE_MAX_FRAME_PAYLOAD}"
        )
    if not 0 <= msg_type <= 0xFF or not 0 <= req_id < 1 << 64:
        raise InvalidArgument(f"frame type {msg_type} or request id {req_id} out of range")
    flags = 0
    if compress and raw_length >= WIRE_COMPRESS_MIN_PAYLOAD and worth_compressing(parts):
        joined = parts[0] if len(parts) == 1 else b"".join(parts)
        c = maybe_compress(joined)
        if c is not None:
            parts, flags = [c], FLAG_LZ4
    length = len(parts[0]) if flags else raw_length
    head = HEAD.pack(WIRE_MAGIC, version, msg_type, flags, length, raw_length, req_id)
    checksum = _xxh64(head, seed=_payload_hash(parts) if length else 0)
    return [head + _U64.pack(checksum) + NO_TAG, *parts]


def parse_header(buf: Buffer, *, keyed: bool = True) -> FrameHeader:
    """Validate the 48 header bytes. `keyed=False` for a frame read before its direction
    has a key (the handshake): then at most WIRE_HANDSHAKE_MAX_PAYLOAD bytes and never
    compressed. Raises ProtocolError (bad magic, unknown flags, oversize, inconsistent
    lengths) or VersionMismatch (unknown version)."""
    if len(buf) != WIRE_FRAME_HEADER_BYTES:
        raise ProtocolError(f"frame header of {len(buf)} bytes, need {WIRE_FRAME_HEADER_BYTES}")
    magic, version, mtype, flags, length, raw_length, req_id = HEAD.unpack_from(buf)
    (checksum,) = _U64.unpack_from(buf, HEAD.size)
    tag = bytes(buf[MACED:WIRE_FRAME_HEADER_BYTES])
    if magic != WIRE_MAGIC:
        raise ProtocolError(f"bad frame magic {bytes(magic)!r} (expected {WIRE_MAGIC!r})")
    if not WIRE_MIN_PROTOCOL_VERSION <= version <= WIRE_PROTOCOL_VERSION:
        raise VersionMismatch(
            f"frame of protocol version {version}; this build speaks "
            f"{WIRE_MIN_PROTOCOL_VERSION}..{WIRE_PROTOCOL_VERSION}"
        )
    if flags & ~KNOWN_FLAGS:
        raise ProtocolError(f"unknown frame flags {flags:#06x}")
    if flags & FLAG_LZ4 and not keyed:
        raise ProtocolError("compressed frame before authentication")
    limit = WIRE_MAX_FRAME_PAYLOAD if keyed else WIRE_HANDSHAKE_MAX_PAYLOAD
    if length > limit or raw_length > limit:
        raise ProtocolError(
            f"frame payload of {max(length, raw_length)} bytes exceeds the limit of {limit}"
            + ("" if keyed else " before authentication")
        )
    if not flags & FLAG_LZ4 and raw_length != length:
        raise ProtocolError(f"uncompressed frame with lengths {length} != {raw_length}")
    return FrameHeader(version, mtype, flags, length, raw_length, req_id, checksum, tag)


def open_payload(
    header: Buffer, h: FrameHeader, payload: Buffer, key: FrameKey | None = None
) -> bytes | memoryview:
    """Verify the checksum, then the tag (with `key`, the receiving FrameKey of this
    direction; without, the tag must be zero) of a frame whose header bytes and payload
    (as sent) are given; only then decompress. Returns the payload. Raises FrameCorruption
    (checksum; "frame authentication failed" for a wrong tag; decompression) or
    ProtocolError (a tag where none may be)."""
    ck = _xxh64(header[: HEAD.size], seed=_xxh64(payload) if h.length else 0)
    if ck != h.checksum:
        raise FrameCorruption(
            f"frame checksum mismatch (type {h.type}, request {h.req_id}, {h.length} bytes): "
            f"{ck:#018x} != {h.checksum:#018x}"
        )
    if key is not None:
        n = key.frames
        if not hmac.compare_digest(key.tag(header[:MACED], (payload,)), h.tag):
            raise FrameCorruption(
                f"frame authentication failed (type {h.type}, request {h.req_id}, frame {n} "
                "of this direction): it was forged, changed, dropped, replayed or reordered "
                "on the way"
            )
    elif h.tag != NO_TAG:
        raise ProtocolError(f"frame (type {h.type}) carries a tag before keys were agreed")
    if not h.compressed:
        return payload
    try:
        raw = lz4.block.decompress(payload, uncompressed_size=h.raw_length)
    except lz4.block.LZ4BlockError as e:
        raise FrameCorruption(f"frame payload (type {h.type}) does not decompress: {e}") from e
    if len(raw) != h.raw_length:
        raise FrameCorruption(
            f"frame payload (type {h.type}) decompresses to {len(raw)} bytes, "
            f"header says {h.raw_length}"
        )
    return raw


def decode_frame(buf: Buffer, offset: int = 0, key: FrameKey | None = None) -> Frame:
    """Decode the one frame starting at `offset` of an in-memory buffer (a keyed one with
    `key`). Raises ProtocolError (bad header; ConnectionClosed if `buf` ends inside the
    frame), VersionMismatch, FrameCorruption. Used by tests and tools; connections use
    the transport."""
    mv = memoryview(buf).cast("B")
    head = bytes(mv[offset : offset + WIRE_FRAME_HEADER_BYTES])
    if len(head) < WIRE_FRAME_HEADER_BYTES:
        raise ConnectionClosed(
            f"truncated frame: {len(head)} header bytes of {WIRE_FRAME_HEADER_BYTES}"
        )
    h = parse_header(head)
    start = offset + WIRE_FRAME_HEADER_BYTES
    payload = mv[start : start + h.length]
    if len(payload) < h.length:
        raise ConnectionClosed(f"truncated frame: {len(payload)} payload bytes of {h.length}")
    data = open_payload(head, h, payload, key)
    return Frame(h.version, h.type, h.req_id, data, WIRE_FRAME_HEADER_BYTES + h.length)


async def read_frame(reader: asyncio.StreamReader, key: FrameKey | None = None) -> Frame:
    """Read exactly one frame (a keyed one with `key`). Raises ConnectionClosed (EOF
    before or inside the frame; the message says which), ProtocolError, VersionMismatch,
    FrameCorruption. Nothing beyond the header is allocated before the header has been
    validated. Used by tests and tools; connections use the transport."""
    try:
        head = await reader.readexactly(WIRE_FRAME_HEADER_BYTES)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise ConnectionClosed("connection closed by peer") from None
        raise ConnectionClosed(
            f"connection closed inside a frame header ({len(e.partial)} of "
            f"{WIRE_FRAME_HEADER_BYTES} bytes)"
        ) from None
    h = parse_header(head)
    if h.length:
        try:
            payload = await reader.readexactly(h.length)
        except asyncio.IncompleteReadError as e:
            raise ConnectionClosed(
                f"connection closed inside a frame payload ({len(e.partial)} of {h.length} bytes)"
            ) from None
    else:
        payload = b""
    data = open_payload(head, h, payload, key)
    return Frame(h.version, h.type, h.req_id, data, WIRE_FRAME_HEADER_BYTES + h.length)
