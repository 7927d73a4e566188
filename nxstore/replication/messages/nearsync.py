"""NearSync messages: shipping light-weight snapshot episodes (LWS_BEGIN .. LWS_COMMITTED)
and listing the episodes a target holds (GET_LWS, LWS_LIST); nxstore.nearsync. An episode's
blocks travel as the replication messages HAVE_FINGERPRINTS, BLOCKS and MAP_ENTRIES."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ...errors import InvalidArgument, ProtocolError
from ..codec import U32, U64, PayloadReader, PayloadWriter, check_batch, check_len
from ..frames import Buffer
from .base import TRANSFER_ID_BYTES, Message, MessageType, register

# NearSync: light-weight snapshot episodes (nxstore.nearsync) ---------------------------

_LWS_POINT = struct.Struct("<dQQQIIB")  # created_at, seq, prev_seq, size, block_size, members, first
_LWS_ENTRY = struct.Struct("<Qd")  # seq, created_at


@register
@dataclass(frozen=True, slots=True, eq=False)
class LwsBegin(Message):
    """Source -> target: start shipping the episode of `vdisk` ending at LWS marker `seq`,
    applying after episode `prev_seq` of the chain on `base_snapshot` (`first`: directly on
    the snapshot). `group`/`members`: the LWS's PD and member count; `compose_as`: compose a
    vDisk snapshot of that name at this point (None = no). Then HAVE_FINGERPRINTS, BLOCKS,
    MAP_ENTRIES (full blocks), LWS_RANGES, LWS_COMMIT. Reply: READY (or ERROR)."""

    TYPE = MessageType.LWS_BEGIN
    transfer_id: bytes
    source_site: str
    vdisk: str
    container: str
    group: str
    name: str
    base_snapshot: str
    compose_as: str | None
    created_at: float
    seq: int
    prev_seq: int
    size: int
    block_size: int
    members: int
    first: bool

    def encode_payload(self) -> list[Buffer]:
        check_len(self.transfer_id, TRANSFER_ID_BYTES, "LWS_BEGIN transfer_id")
        o = PayloadWriter()
        o.raw(self.transfer_id)
        for s in (self.source_site, self.vdisk, self.container, self.group, self.name,
                  self.base_snapshot, self.compose_as):
            o.string(s)
        o.pack(_LWS_POINT, self.created_at, self.seq, self.prev_seq, self.size,
               self.block_size, self.members, int(self.first))
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> LwsBegin:
        tid = bytes(p.raw(TRANSFER_ID_BYTES))
        strs = [p.string() for _ in range(6)]
        compose = p.string(optional=True)
        created, seq, prev, size, bs, members, first = p.unpack(_LWS_POINT)
        return cls(tid, *strs, compose, created, seq, prev, size, bs, members, bool(first),
                   req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class LwsRanges(Message):
    """Source -> target: byte ranges of partially written blocks of the episode being
    shipped: `offsets[i]`, `lengths[i]` (vDisk bytes, each range within one block) and the
    bytes back to back (lz4 as a frame when it pays). Acknowledged by ACK (batched)."""

    TYPE = MessageType.LWS_RANGES
    COMPRESS = True
    offsets: np.ndarray  # (n,) uint64
    lengths: np.ndarray  # (n,) uint64
    data: np.ndarray     # (sum(lengths),) uint8

    def __post_init__(self) -> None:
        offs = np.ascontiguousarray(np.asarray(self.offsets, dtype="<u8").reshape(-1))
        lens = np.ascontiguousarray(np.asarray(self.lengths, dtype="<u8").reshape(-1))
        data = np.ascontiguousarray(np.asarray(self.data, dtype=np.uint8).reshape(-1))
        if offs.size != lens.size or int(lens.sum()) != data.size:
            raise InvalidArgument(f"LWS_RANGES: {offs.size} offsets, {lens.size} lengths "
                                  f"summing to {int(lens.sum())}, {data.size} data bytes")
        object.__setattr__(self, "offsets", offs)
        object.__setattr__(self, "lengths", lens)
        object.__setattr__(self, "data", data)

    def encode_payload(self) -> list[Buffer]:
        n = len(self.offsets)
        check_batch(n, "LWS_RANGES")
        o = PayloadWriter()
        o.pack(U32, n)
        o.pack(U32, 0)  # reserved: keeps the u64 arrays 8-byte aligned
        o.raw(self.offsets.data)
        o.raw(self.lengths.data)
        o.big(self.data)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> LwsRanges:
        n = p.count()
        p.unpack(U32)
        offs = p.array(n, "<u8", (n,))
        lens = p.array(n, "<u8", (n,))
        total = int(lens.sum())
        if total > len(p.mv) - p.pos:
            raise ProtocolError(f"LWS_RANGES: lengths add up to {total} bytes, more than sent")
        return cls(offs, lens, p.array(total, "u1", (total,)), req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class LwsCommit(Message):
    """Source -> target: the episode of `transfer_id` is complete (`map_entries` full blocks,
    `ranges` byte ranges in all). Store it durably. Reply: LWS_COMMITTED (or ERROR)."""

    TYPE = MessageType.LWS_COMMIT
    transfer_id: bytes
    map_entries: int
    ranges: int

    def encode_payload(self) -> list[Buffer]:
        check_len(self.transfer_id, TRANSFER_ID_BYTES, "LWS_COMMIT transfer_id")
        return [self.transfer_id + U64.pack(self.map_entries) + U64.pack(self.ranges)]

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> LwsCommit:
        tid = bytes(p.raw(TRANSFER_ID_BYTES))
        return cls(tid, p.unpack(U64)[0], p.unpack(U64)[0], req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class LwsCommitted(Message):
    """Target -> source: the episode ending at marker `seq` is durable (fsynced) there."""

    TYPE = MessageType.LWS_COMMITTED
    transfer_id: bytes
    seq: int

    def encode_payload(self) -> list[Buffer]:
        check_len(self.transfer_id, TRANSFER_ID_BYTES, "LWS_COMMITTED transfer_id")
        return [self.transfer_id + U64.pack(self.seq)]

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> LwsCommitted:
        return cls(bytes(p.raw(TRANSFER_ID_BYTES)), p.unpack(U64)[0], req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class GetLws(Message):
    """Source -> target: which LWS episodes of `vdisk` (from `source_site`) do you hold on
    snapshot `base_snapshot`? Reply: LWS_LIST."""

    TYPE = MessageType.GET_LWS
    source_site: str
    vdisk: str
    base_snapshot: str

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        for s in (self.source_site, self.vdisk, self.base_snapshot):
            o.string(s)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> GetLws:
        return cls(p.string(), p.string(), p.string(), req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class LwsList(Message):
    """Target -> source: (seq, created_at) of every episode held on the asked base, oldest
    first (at most WIRE_MAX_BATCH: the newest ones)."""

    TYPE = MessageType.LWS_LIST
    episodes: tuple[tuple[int, float], ...] = ()

    def encode_payload(self) -> list[Buffer]:
        check_batch(len(self.episodes), "LWS_LIST")
        o = PayloadWriter()
        o.pack(U32, len(self.episodes))
        for seq, created in self.episodes:
            o.pack(_LWS_ENTRY, seq, created)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> LwsList:
        return cls(tuple(p.unpack(_LWS_ENTRY) for _ in range(p.count())), req_id=req_id)
