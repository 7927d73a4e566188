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
    ACK (batched: credit, not durability) or answered by ERROR. With `barrier` (not 0,
    protocol version WIRE_METRO_BARRIER_VERSION) the batch is also METRO_FLUSH `barrier`:
    answered by METRO_FLUSHED once it and everything before it is durable."""

    TYPE = MessageType.METRO_WRITES
    COMPRESS = True
    vdisks: np.ndarray  # (n,) uint32
    offsets: np.ndarray  # (n,) uint64
    lengths: np.ndarray  # (n,) uint64
    trims: np.ndarray  # (n,) bool
    data: Buffer
    barrier: int = 0  # 0: none; else this batch ends with that flush barrier

    def __post_init__(self) -> None:
        for name, dtype in _OPS:
            a = getattr(self, name)
            if type(a) is not np.ndarray or a.dtype != dtype or a.ndim != 1:
                try:
                    a = np.asarray(a, dtype=dtype).reshape(-1)
                except (OverflowError, TypeError, ValueError) as exc:
                    raise InvalidArgument(f"METRO_WRITES: {exc}") from exc
                object.__setattr__(self, name, a)
        n = self.offsets.size
        if not n == self.lengths.size == self.vdisks.size == self.trims.size:
            raise InvalidArgument(f"METRO_WRITES: op arrays of sizes "
                                  f"{[getattr(self, name).size for name, _ in _OPS]}")
        written = self.lengths[~self.trims] if self.trims.any() else self.lengths
        size = len(memoryview(self.data))
        # (the max first, so the sum cannot wrap around)
        if written.size and (int(written.max()) > size or int(written.sum()) != size):
            raise InvalidArgument(f"METRO_WRITES: writes of {int(written.sum())} bytes, "
                                  f"{size} data bytes")
        if not written.size and size:
            raise InvalidArgument(f"METRO_WRITES: {size} data bytes and no write")
        if not 0 <= self.barrier < 1 << 64:
            raise InvalidArgument(f"METRO_WRITES: barrier {self.barrier} is not a u64")

    @property
    def nbytes(self) -> int:
        """Bytes of written data the batch carries."""
        return len(memoryview(self.data))

    def encode_payload(self) -> list[Buffer]:
        n = self.offsets.size
        check_batch(n, "METRO_WRITES")
        o = PayloadWriter()
        o.pack(U32, n)
        o.pack(U32, _WITH_BARRIER if self.barrier else 0)  # flags (8-byte alignment kept)
        if self.barrier:
            o.pack(U64, self.barrier)
        for name, _ in _OPS:
            o.raw(getattr(self, name).data)
        o.big(self.data)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> MetroWrites:
        n = p.count()
        (flags,) = p.unpack(U32)
        if flags & ~_WITH_BARRIER:
            raise ProtocolError(f"METRO_WRITES: unknown flags {flags:#x}")
        barrier = p.unpack(U64)[0] if flags else 0
        if flags and not barrier:
            raise ProtocolError("METRO_WRITES: barrier 0")
        ops = p.raw(_OP_BYTES * n)
        offsets, lengths, vdisks, kinds = (np.frombuffer(ops, dtype, n, at * n)
                                           for (_, dtype), at in zip(_OPS, _OP_AT, strict=True))
        if n and int(kinds.view(np.uint8).max()) > 1:
            raise ProtocolError(f"METRO_WRITES: op kind {int(kinds.view(np.uint8).max())}")
        written = lengths[~kinds] if kinds.any() else lengths
        if written.size and int(written.max()) > len(p.mv) - p.pos:  # (so the sum cannot wrap)
            raise ProtocolError("METRO_WRITES: a write is longer than the payload")
        # the constructor checks the rest (its InvalidArgument becomes ProtocolError)
        return cls(vdisks, offsets, lengths, kinds, p.raw(int(written.sum())), barrier,
                   req_id=req_id)


_WITH_BARRIER = 1  # METRO_WRITES flags: a u64 barrier follows (protocol version 5)
_OPS = tuple((name, np.dtype(code)) for name, code in (  # wire order
    ("offsets", "<u8"), ("lengths", "<u8"), ("vdisks", "<u4"), ("trims", "?")))
_OP_AT = (0, 8, 16, 20)  # where each op array starts, in units of n bytes
_OP_BYTES = 21


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
