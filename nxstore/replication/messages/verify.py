"""Replica verification messages (protocol version 4 on): VERIFY_REQUEST asks the target for
the content fingerprints of a range of blocks of a replica snapshot, re-read and verified
there; VERIFY_REPLY carries them and the blocks whose stored record failed verification.
No block data crosses the wire (nxstore.replication.verify)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...constants import FINGERPRINT_BYTES, WIRE_MAX_BATCH
from ...errors import InvalidArgument, ProtocolError
from ..codec import F64, U8, U32, U64, PayloadReader, PayloadWriter, as_fingerprints
from ..frames import Buffer
from .base import Message, MessageType, register

FLAG_REREAD = 0x01  # VERIFY_REQUEST.flags: read and verify the blocks, not only the table


@register
@dataclass(frozen=True, slots=True, eq=False)
class VerifyRequest(Message):
    """Source -> target: the content fingerprints of blocks first .. first + count - 1
    (1 <= count <= WIRE_MAX_BATCH) of the replica snapshot `vdisk`@`snapshot` created at
    `created_at`, in blocks of `block_size` bytes; with `reread` the target reads and
    verifies each block first. Reply: VERIFY_REPLY (or ERROR: NotFound when the target holds
    no such snapshot, InvalidArgument for another block size or a range past its end)."""

    TYPE = MessageType.VERIFY_REQUEST
    vdisk: str
    snapshot: str
    created_at: float
    block_size: int
    first: int
    count: int
    reread: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.count <= WIRE_MAX_BATCH:
            raise InvalidArgument(f"VERIFY_REQUEST: count {self.count} is not in "
                                  f"1..{WIRE_MAX_BATCH}")
        if self.first < 0 or self.block_size <= 0 or not math.isfinite(self.created_at):
            raise InvalidArgument("VERIFY_REQUEST: negative first block, block size not "
                                  "positive, or a creation time that is not finite")

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        o.string(self.vdisk)
        o.string(self.snapshot)
        o.pack(F64, self.created_at)
        o.pack(U32, self.block_size)
        o.pack(U64, self.first)
        o.pack(U32, self.count)
        o.pack(U8, FLAG_REREAD if self.reread else 0)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> VerifyRequest:
        vdisk, snapshot = p.string(), p.string()
        (created_at,), (block_size,), (first,) = p.unpack(F64), p.unpack(U32), p.unpack(U64)
        count = p.count()
        (flags,) = p.unpack(U8)
        if flags & ~FLAG_REREAD:
            raise ProtocolError(f"VERIFY_REQUEST: unknown flags {flags:#04x}")
        return cls(vdisk, snapshot, created_at, block_size, first, count,
                   bool(flags & FLAG_REREAD), req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class VerifyReply(Message):
    """Target -> source, reply to VERIFY_REQUEST: `fingerprints[i]` is the content
    fingerprint of block first + i (the zero block's where it reads as zeros); `damaged`
    (u32, ascending, each < n) lists the blocks whose stored record failed verification
    (their fingerprint is all zero bytes, which no content has)."""

    TYPE = MessageType.VERIFY_REPLY
    COMPRESS = True
    first: int
    fingerprints: np.ndarray  # (n, 16) uint8
    damaged: np.ndarray  # (m,) uint32

    def __post_init__(self) -> None:
        fps = as_fingerprints(self.fingerprints)
        damaged = np.ascontiguousarray(self.damaged, dtype="<u4").reshape(-1)
        n = len(fps)
        if not 1 <= n <= WIRE_MAX_BATCH or self.first < 0:
            raise InvalidArgument(f"VERIFY_REPLY: {n} fingerprints is not 1..{WIRE_MAX_BATCH}, "
                                  "or a negative first block")
        if damaged.size and (int(damaged[-1]) >= n or (np.diff(damaged.astype(np.int64)) <= 0)
                             .any()):
            raise InvalidArgument("VERIFY_REPLY: damaged indices not ascending below the count")
        object.__setattr__(self, "fingerprints", fps)
        object.__setattr__(self, "damaged", damaged)

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        o.pack(U64, self.first)
        o.pack(U32, len(self.fingerprints))
        o.big(self.fingerprints)
        o.pack(U32, len(self.damaged))
        o.big(self.damaged)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> VerifyReply:
        (first,) = p.unpack(U64)
        n = p.count()
        fps = p.array(n * FINGERPRINT_BYTES, "u1", (n, FINGERPRINT_BYTES))
        m = p.count()
        return cls(first, fps, p.array(m, "<u4", (m,)), req_id=req_id)
