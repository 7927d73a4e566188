"""Snapshot replication messages: which replica snapshots the target holds, shipping one
snapshot (BEGIN_TRANSFER .. COMMITTED, ABORT) and pruning old ones (nxstore.replication.source
and .target)."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from ...constants import FINGERPRINT_BYTES, WIRE_MAX_STRING_BYTES
from ...errors import InvalidArgument, ProtocolError
from ..codec import (
    U32,
    U64,
    PayloadReader,
    PayloadWriter,
    as_fingerprints,
    check_batch,
    check_len,
)
from ..frames import Buffer
from .base import TRANSFER_ID_BYTES, Message, MessageType, register

# snapshot discovery ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One replica snapshot the target holds (element of SNAPSHOTS)."""

    name: str
    created_at: float  # seconds since the epoch, as the source stamped it
    size: int  # bytes
    block_size: int  # bytes


@register
@dataclass(frozen=True, slots=True, eq=False)
class GetSnapshots(Message):
    """Source -> target: which replica snapshots of `vdisk` (from `source_site`, stored in
    `container`) do you hold? Reply: SNAPSHOTS (or ERROR)."""

    TYPE = MessageType.GET_SNAPSHOTS
    source_site: str
    vdisk: str
    container: str

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        o.string(self.source_site)
        o.string(self.vdisk)
        o.string(self.container)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> GetSnapshots:
        return cls(p.string(), p.string(), p.string(), req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class Snapshots(Message):
    """Target -> source: the replica snapshots held, oldest first (may be empty)."""

    TYPE = MessageType.SNAPSHOTS
    snapshots: tuple[SnapshotInfo, ...] = ()

    def encode_payload(self) -> list[Buffer]:
        check_batch(len(self.snapshots), "SNAPSHOTS")
        o = PayloadWriter()
        o.pack(U32, len(self.snapshots))
        for s in self.snapshots:
            o.string(s.name)
            o.pack(_SNAP, s.created_at, s.size, s.block_size)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Snapshots:
        n = p.count()
        out = []
        for _ in range(n):
            name = p.string()
            out.append(SnapshotInfo(name, *p.unpack(_SNAP)))
        return cls(tuple(out), req_id=req_id)


_SNAP = struct.Struct("<dQI")


# transfer ----------------------------------------------------------------------------


@register
@dataclass(frozen=True, slots=True, eq=False)
class BeginTransfer(Message):
    """Source -> target: start (or resume, same `transfer_id`) shipping snapshot
    `snapshot` of `vdisk` into `container`, incremental on `base_snapshot` (None = full
    seed). Reply: READY (or ERROR)."""

    TYPE = MessageType.BEGIN_TRANSFER
    transfer_id: bytes  # 16 bytes, random (uuid4), kept by the source across retries
    source_site: str
    vdisk: str
    container: str
    snapshot: str
    created_at: float  # seconds since the epoch
    size: int  # vDisk size in bytes
    block_size: int  # bytes
    base_snapshot: str | None = None

    def encode_payload(self) -> list[Buffer]:
        check_len(self.transfer_id, TRANSFER_ID_BYTES, "BEGIN_TRANSFER transfer_id")
        o = PayloadWriter()
        o.raw(self.transfer_id)
        for s in (self.source_site, self.vdisk, self.container, self.snapshot):
            o.string(s)
        o.pack(_SNAP, self.created_at, self.size, self.block_size)
        o.string(self.base_snapshot)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> BeginTransfer:
        tid = bytes(p.raw(TRANSFER_ID_BYTES))
        site, vdisk, container, snap = p.string(), p.string(), p.string(), p.string()
        created, size, bs = p.unpack(_SNAP)
        base = p.string(optional=True)
        return cls(tid, site, vdisk, container, snap, created, size, bs, base, req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class Ready(Message):
    """Target -> source, reply to BEGIN_TRANSFER: go ahead. `window` = data requests
    (HAVE_FINGERPRINTS, BLOCKS, MAP_ENTRIES) the source may have unanswered at once;
    `max_batch` = largest batch the target accepts."""

    TYPE = MessageType.READY
    window: int
    max_batch: int

    def encode_payload(self) -> list[Buffer]:
        return [U32.pack(self.window) + U32.pack(self.max_batch)]

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Ready:
        (w,) = p.unpack(U32)
        (b,) = p.unpack(U32)
        return cls(w, b, req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class HaveFingerprints(Message):
    """Source -> target: which of these blocks do you lack? Reply: MISSING (same req_id)."""

    TYPE = MessageType.HAVE_FINGERPRINTS
    fingerprints: np.ndarray  # (n, 16) uint8

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprints", as_fingerprints(self.fingerprints))

    def encode_payload(self) -> list[Buffer]:
        n = len(self.fingerprints)
        check_batch(n, "HAVE_FINGERPRINTS")
        o = PayloadWriter()
        o.pack(U32, n)
        o.big(self.fingerprints)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> HaveFingerprints:
        n = p.count()
        return cls(p.array(n * FINGERPRINT_BYTES, "u1", (n, FINGERPRINT_BYTES)), req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class Missing(Message):
    """Target -> source, reply to HAVE_FINGERPRINTS: `missing[i]` is True when the target
    lacks fingerprint i. On the wire a bitmap, bit i = byte i//8, bit i%8 (LSB first)."""

    TYPE = MessageType.MISSING
    missing: np.ndarray  # (n,) bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "missing", np.asarray(self.missing, dtype=bool).reshape(-1))

    def encode_payload(self) -> list[Buffer]:
        n = len(self.missing)
        check_batch(n, "MISSING")
        return [U32.pack(n) + np.packbits(self.missing, bitorder="little").tobytes()]

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Missing:
        n = p.count()
        bits = np.frombuffer(p.raw(math.ceil(n / 8)), np.uint8)
        return cls(np.unpackbits(bits, count=n, bitorder="little").astype(bool), req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class Blocks(Message):
    """Source -> target: n blocks of `block_size` bytes and their fingerprints (XXH3-128
    of the raw bytes, which the target must verify before storing). Sent lz4-compressed as
    a frame when that pays. Acknowledged by ACK (batched) or answered by ERROR."""

    TYPE = MessageType.BLOCKS
    COMPRESS = True
    block_size: int
    fingerprints: np.ndarray  # (n, 16) uint8
    data: np.ndarray  # (n, block_size) uint8

    def __post_init__(self) -> None:
        fps = as_fingerprints(self.fingerprints)
        d = self.data
        if isinstance(d, (bytes, bytearray, memoryview)):
            d = np.frombuffer(d, np.uint8)
        d = np.ascontiguousarray(np.asarray(d, np.uint8))
        n = len(fps)
        if self.block_size <= 0 or d.size != n * self.block_size:
            raise InvalidArgument(
                f"BLOCKS: {d.size} data bytes for {n} blocks of {self.block_size} bytes"
            )
        object.__setattr__(self, "fingerprints", fps)
        object.__setattr__(self, "data", d.reshape(n, self.block_size))

    def encode_payload(self) -> list[Buffer]:
        n = len(self.fingerprints)
        check_batch(n, "BLOCKS")
        o = PayloadWriter()
        o.pack(U32, n)
        o.pack(U32, self.block_size)
        o.raw(self.fingerprints.data)
        o.big(self.data)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Blocks:
        n = p.count()
        (bs,) = p.unpack(U32)
        if bs == 0 and n:
            raise ProtocolError("BLOCKS: block size 0")
        fps = p.array(n * FINGERPRINT_BYTES, "u1", (n, FINGERPRINT_BYTES))
        return cls(bs, fps, p.array(n * bs, "u1", (n, bs)), req_id=req_id)


STORED_FLAG_LZ4 = 0x01  # STORED_BLOCKS flags: the payload is an lz4 block (no size prefix)


@register
@dataclass(frozen=True, slots=True, eq=False)
class StoredBlocks(Message):
    """Source -> target (protocol version 4 on): n blocks of `block_size` bytes as the
    source's extent store holds them. Block i is payload bytes [sum(lengths[:i]),
    sum(lengths[:i+1])): an lz4 block (no size prefix) of the raw block where
    flags[i] & STORED_FLAG_LZ4, else the raw block (lengths[i] == block_size).
    `fingerprints` are XXH3-128 of the raw blocks, which the target verifies (after
    decompressing) before storing. Never lz4-compressed as a frame. Acknowledged by
    ACK (batched) or answered by ERROR."""

    TYPE = MessageType.STORED_BLOCKS
    block_size: int
    fingerprints: np.ndarray  # (n, 16) uint8
    flags: np.ndarray  # (n,) uint8
    lengths: np.ndarray  # (n,) uint32: payload bytes of each block
    payload: np.ndarray  # (sum(lengths),) uint8

    def __post_init__(self) -> None:
        fps = as_fingerprints(self.fingerprints)
        n, bs = len(fps), self.block_size
        flags = np.ascontiguousarray(np.asarray(self.flags, np.uint8).reshape(-1))
        lengths = np.ascontiguousarray(np.asarray(self.lengths, "<u4").reshape(-1))
        d = self.payload
        if isinstance(d, (bytes, bytearray, memoryview)):
            d = np.frombuffer(d, np.uint8)
        d = np.ascontiguousarray(np.asarray(d, np.uint8).reshape(-1))
        if len(flags) != n or len(lengths) != n:
            raise InvalidArgument(f"STORED_BLOCKS: {n} fingerprints, {len(flags)} flags, "
                                  f"{len(lengths)} lengths")
        if n and bs <= 0:
            raise InvalidArgument(f"STORED_BLOCKS: block size {bs}")
        if np.any(flags > STORED_FLAG_LZ4):
            raise InvalidArgument("STORED_BLOCKS: unknown block flags")
        raw = (flags & STORED_FLAG_LZ4) == 0
        if n and (int(lengths.min()) == 0 or int(lengths.max()) > bs
                  or bool(np.any(lengths[raw] != bs))):  # fmt: skip
            raise InvalidArgument(f"STORED_BLOCKS: a block length outside 1..{bs}, or a raw "
                                  "block that is not exactly the block size")
        if int(lengths.sum(dtype=np.int64)) != d.size:
            raise InvalidArgument(f"STORED_BLOCKS: {d.size} payload bytes, the lengths add up "
                                  f"to {int(lengths.sum(dtype=np.int64))}")
        object.__setattr__(self, "fingerprints", fps)
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "payload", d)

    def encode_payload(self) -> list[Buffer]:
        n = len(self.fingerprints)
        check_batch(n, "STORED_BLOCKS")
        o = PayloadWriter()
        o.pack(U32, n)
        o.pack(U32, self.block_size)
        o.raw(self.fingerprints.data)
        o.raw(self.flags.data)
        o.raw(self.lengths.data)
        o.big(self.payload)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> StoredBlocks:
        n = p.count()
        (bs,) = p.unpack(U32)
        fps = p.array(n * FINGERPRINT_BYTES, "u1", (n, FINGERPRINT_BYTES))
        flags = p.array(n, "u1", (n,))
        lengths = p.array(n, "<u4", (n,))
        rest = len(p.mv) - p.pos  # the payloads: __post_init__ checks the lengths add up
        return cls(bs, fps, flags, lengths, p.array(rest, "u1", (rest,)), req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class MapEntries(Message):
    """Source -> target: the new snapshot's block `indices[i]` holds the block of
    fingerprint `fingerprints[i]` (ZERO_FINGERPRINT: reads as zeros). Only changed blocks
    relative to the base are sent. Acknowledged by ACK (batched) or answered by ERROR."""

    TYPE = MessageType.MAP_ENTRIES
    indices: np.ndarray  # (n,) uint64
    fingerprints: np.ndarray  # (n, 16) uint8

    def __post_init__(self) -> None:
        idx = np.ascontiguousarray(np.asarray(self.indices, dtype="<u8").reshape(-1))
        fps = as_fingerprints(self.fingerprints)
        if len(idx) != len(fps):
            raise InvalidArgument(f"MAP_ENTRIES: {len(idx)} indices, {len(fps)} fingerprints")
        object.__setattr__(self, "indices", idx)
        object.__setattr__(self, "fingerprints", fps)

    def encode_payload(self) -> list[Buffer]:
        n = len(self.indices)
        check_batch(n, "MAP_ENTRIES")
        o = PayloadWriter()
        o.pack(U32, n)
        o.pack(U32, 0)  # reserved: keeps the u64 array 8-byte aligned
        o.raw(self.indices.data)
        o.raw(self.fingerprints.data)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> MapEntries:
        n = p.count()
        p.unpack(U32)
        idx = p.array(n, "<u8", (n,))
        return cls(idx, p.array(n * FINGERPRINT_BYTES, "u1", (n, FINGERPRINT_BYTES)), req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class Ack(Message):
    """Receiver -> sender: every data request with req_id <= `upto` has been processed
    (cumulative, batched: one ACK per WIRE_ACK_EVERY requests or when idle). `window`
    restates the credit (0 = unchanged)."""

    TYPE = MessageType.ACK
    upto: int
    window: int = 0

    def encode_payload(self) -> list[Buffer]:
        return [U64.pack(self.upto) + U32.pack(self.window)]

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Ack:
        (upto,) = p.unpack(U64)
        (w,) = p.unpack(U32)
        return cls(upto, w, req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class Commit(Message):
    """Source -> target: all data of `transfer_id` was sent; `map_entries` = total map
    entries sent. Apply the snapshot atomically. Reply: COMMITTED (or ERROR)."""

    TYPE = MessageType.COMMIT
    transfer_id: bytes
    map_entries: int

    def encode_payload(self) -> list[Buffer]:
        check_len(self.transfer_id, TRANSFER_ID_BYTES, "COMMIT transfer_id")
        return [self.transfer_id + U64.pack(self.map_entries)]

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Commit:
        tid = bytes(p.raw(TRANSFER_ID_BYTES))
        return cls(tid, p.unpack(U64)[0], req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class Committed(Message):
    """Target -> source: the replica snapshot `snapshot` is durable and visible."""

    TYPE = MessageType.COMMITTED
    transfer_id: bytes
    snapshot: str

    def encode_payload(self) -> list[Buffer]:
        check_len(self.transfer_id, TRANSFER_ID_BYTES, "COMMITTED transfer_id")
        o = PayloadWriter()
        o.raw(self.transfer_id)
        o.string(self.snapshot)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Committed:
        return cls(bytes(p.raw(TRANSFER_ID_BYTES)), p.string(), req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class Abort(Message):
    """Source -> target: abandon `transfer_id` (the target keeps blocks it stored, drops
    staged map entries; the previous replica snapshot stays as it was). No reply."""

    TYPE = MessageType.ABORT
    transfer_id: bytes
    reason: str = ""

    def encode_payload(self) -> list[Buffer]:
        check_len(self.transfer_id, TRANSFER_ID_BYTES, "ABORT transfer_id")
        o = PayloadWriter()
        o.raw(self.transfer_id)
        o.string(self.reason[: WIRE_MAX_STRING_BYTES // 4])
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Abort:
        return cls(bytes(p.raw(TRANSFER_ID_BYTES)), p.string(), req_id=req_id)


# retention ---------------------------------------------------------------------------


@register
@dataclass(frozen=True, slots=True, eq=False)
class Prune(Message):
    """Source -> target: keep only the newest `keep` replica snapshots of `vdisk`.
    Reply: PRUNED (or ERROR)."""

    TYPE = MessageType.PRUNE
    vdisk: str
    keep: int

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        o.string(self.vdisk)
        o.pack(U32, self.keep)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Prune:
        return cls(p.string(), p.unpack(U32)[0], req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class PruneSnapshots(Message):
    """Source -> target (protocol version 3 on): delete these replica snapshots of
    `vdisk`, by name; names the target does not hold are skipped. The target refuses (and
    deletes nothing) if one is its newest replica snapshot of `vdisk`, the base of the
    next incremental transfer. Reply: PRUNED (or ERROR)."""

    TYPE = MessageType.PRUNE_SNAPSHOTS
    vdisk: str
    names: tuple[str, ...] = ()

    def encode_payload(self) -> list[Buffer]:
        check_batch(len(self.names), "PRUNE_SNAPSHOTS")
        o = PayloadWriter()
        o.string(self.vdisk)
        o.pack(U32, len(self.names))
        for name in self.names:
            o.string(name)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> PruneSnapshots:
        vdisk = p.string()
        return cls(vdisk, tuple(p.string() for _ in range(p.count())), req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class Pruned(Message):
    """Target -> source, reply to PRUNE or PRUNE_SNAPSHOTS: the replica snapshots deleted."""

    TYPE = MessageType.PRUNED
    deleted: tuple[str, ...] = ()

    def encode_payload(self) -> list[Buffer]:
        check_batch(len(self.deleted), "PRUNED")
        o = PayloadWriter()
        o.pack(U32, len(self.deleted))
        for name in self.deleted:
            o.string(name)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Pruned:
        return cls(tuple(p.string() for _ in range(p.count())), req_id=req_id)
