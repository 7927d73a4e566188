"""Metro mirror messages: the synchronous write stream from the active site to the standby
(METRO_OPEN .. METRO_FLUSHED); nxstore.metro.mirror. Write batches are acknowledged by the
replication ACK (credit), flush barriers by METRO_FLUSHED once durable at the standby."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ...errors import InvalidArgument, ProtocolError
from ..codec import U32, U64, PayloadReader, PayloadWriter, check_batch
from ..frames import Buffer
from .base import Message, MessageType, register


class MirroredVDisk(NamedTuple):
    """One vDisk of a mirror session: the active's name, the standby's replica, the size."""

    source: str
    replica: str
    size: int  # bytes


@register
@dataclass(frozen=True, slots=True, eq=False)
class MetroOpen(Message):
    """Active -> standby, the first message of its connection: mirror `vdisks` (indexed by
    position in the writes that follow) of Metro pair `pair_id` in `epoch`. Reply:
    METRO_ACCEPT, or ERROR (wrong epoch or role, unknown replica: the connection ends)."""

    TYPE = MessageType.METRO_OPEN
    pair_id: str
    epoch: int
    vdisks: tuple[MirroredVDisk, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "vdisks", tuple(MirroredVDisk(*v) for v in self.vdisks))

    def encode_payload(self) -> list[Buffer]:
        check_batch(len(self.vdisks), "METRO_OPEN")
        o = PayloadWriter()
        o.string(self.pair_id)
        o.pack(U64, self.epoch)
        o.pack(U32, len(self.vdisks))
        for v in self.vdisks:
            o.string(v.source)
            o.string(v.replica)
            o.pack(U64, v.size)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> MetroOpen:
        pair = p.string()
        (epoch,) = p.unpack(U64)
        n = p.count()
        vdisks = tuple(MirroredVDisk(p.string(), p.string(), p.unpack(U64)[0]) for _ in range(n))
        return cls(pair, epoch, vdisks, req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class MetroAccept(Message):
    """Standby -> active, reply to METRO_OPEN: every replica is there, send the writes."""

    TYPE = MessageType.METRO_ACCEPT
    epoch: int

    def encode_payload(self) -> list[Buffer]:
        return [U64.pack(self.epoch)]

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> MetroAccept:
        return cls(p.unpack(U64)[0], req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class MetroWrites(Message):
    """Active -> standby: writes and trims to apply in this order. Op i writes (or, if
    `trims[i]`, trims) [offsets[i], offsets[i]+lengths[i]) of vDisk `vdisks[i]` (its index
    in METRO_OPEN); the bytes of the writes are back to back in `data`. Acknowledged by
    ACK (batched: credit, not durability) or answered by ERROR."""

    TYPE = MessageType.METRO_WRITES
    COMPRESS = True
    vdisks: np.ndarray  # (n,) uint32
    offsets: np.ndarray  # (n,) uint64
    lengths: np.ndarray  # (n,) uint64
    trims: np.ndarray  # (n,) bool
    data: Buffer

    def __post_init__(self) -> None:
        try:
            arrays = [np.ascontiguousarray(np.asarray(getattr(self, name), dtype=dtype)
                                           .reshape(-1)) for name, dtype in _OPS]
        except (OverflowError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"METRO_WRITES: {exc}") from exc
        if len({a.size for a in arrays}) != 1:
            raise InvalidArgument(f"METRO_WRITES: op arrays of sizes {[a.size for a in arrays]}")
        for (name, _), a in zip(_OPS, arrays, strict=True):
            object.__setattr__(self, name, a)
        written = self.lengths[~self.trims]
        size = len(memoryview(self.data))
        # (the max first, so the sum cannot wrap around)
        if written.size and (int(written.max()) > size or int(written.sum()) != size):
            raise InvalidArgument(f"METRO_WRITES: writes of {int(written.sum())} bytes, "
                                  f"{size} data bytes")
        if not written.size and size:
            raise InvalidArgument(f"METRO_WRITES: {size} data bytes and no write")

    @property
    def nbytes(self) -> int:
        """Bytes of written data the batch carries."""
        return len(memoryview(self.data))

    def encode_payload(self) -> list[Buffer]:
        n = self.offsets.size
        check_batch(n, "METRO_WRITES")
        o = PayloadWriter()
        o.pack(U32, n)
        o.pack(U32, 0)  # reserved: keeps the u64 arrays 8-byte aligned
        for name, _ in _OPS:
            o.raw(getattr(self, name).data)
        o.big(self.data)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> MetroWrites:
        n = p.count()
        p.unpack(U32)
        offsets, lengths, vdisks = (p.array(n, dtype, (n,)) for _, dtype in _OPS[:3])
        kinds = p.array(n, "u1", (n,))
        if kinds.size and int(kinds.max()) > 1:
            raise ProtocolError(f"METRO_WRITES: op kind {int(kinds.max())}")
        trims = kinds.astype(bool)
        written = lengths[~trims]
        if written.size and int(written.max()) > len(p.mv) - p.pos:  # (and the sum cannot wrap)
            raise ProtocolError("METRO_WRITES: a write is longer than the payload")
        return cls(vdisks, offsets, lengths, trims, p.raw(int(written.sum())), req_id=req_id)


_OPS = (("offsets", "<u8"), ("lengths", "<u8"), ("vdisks", "<u4"), ("trims", "?"))  # wire order


@dataclass(frozen=True, slots=True, eq=False)
class _Barrier(Message):
    """METRO_FLUSH and METRO_FLUSHED: one u64, the barrier's number."""

    barrier: int

    def encode_payload(self) -> list[Buffer]:
        return [U64.pack(self.barrier)]

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> _Barrier:
        return cls(p.unpack(U64)[0], req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class MetroFlush(_Barrier):
    """Active -> standby: barrier `barrier` covers every METRO_WRITES sent before it on this
    connection. Reply: METRO_FLUSHED once all of them are durable at the standby."""

    TYPE = MessageType.METRO_FLUSH


@register
@dataclass(frozen=True, slots=True, eq=False)
class MetroFlushed(_Barrier):
    """Standby -> active, reply to METRO_FLUSH: everything the barrier covers is durable."""

    TYPE = MessageType.METRO_FLUSHED
