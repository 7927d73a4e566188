"""Replication messages: typed, immutable dataclasses and their payload codecs.

Every message is one frame (nxstore.replication.frames); the frame header carries the
message type and the request id (`req_id`, a keyword field of every message). The payload
layouts are in docs/format.md. Conventions (all little-endian):

- str: u16 byte length + UTF-8 (at most WIRE_MAX_STRING_BYTES); optional str: length
  0xFFFF means None.
- fingerprints: n x 16 bytes, a numpy (n, 16) uint8 array; the all-zero fingerprint
  (ZERO_FINGERPRINT) in MAP_ENTRIES means "this block reads as zeros".
- numpy arrays are encoded and decoded without per-element Python work; decoded arrays
  are read-only views into the received payload.

`encode(msg)` gives the frame buffers, `decode(frame)` the message. Decoding raises
ProtocolError for an unknown type or a payload that does not parse exactly (short, long,
counts over WIRE_MAX_BATCH, bad UTF-8); it never raises anything else.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from ..constants import (
    FINGERPRINT_BYTES,
    WIRE_MAX_STRING_BYTES,
    WIRE_NONCE_BYTES,
    WIRE_PROOF_BYTES,
    WIRE_PROTOCOL_VERSION,
)
from ..errors import (
    AlreadyExists,
    AuthenticationError,
    Corruption,
    FrameCorruption,
    InUse,
    InvalidArgument,
    NotFound,
    NxError,
    ProtocolError,
    VersionMismatch,
)
from .codec import (
    U8,
    U16,
    U32,
    U64,
    VERSIONS,
    PayloadReader,
    PayloadWriter,
    as_fingerprints,
    check_batch,
    check_len,
)
from .frames import Buffer, Frame, encode_frame

ZERO_FINGERPRINT = bytes(FINGERPRINT_BYTES)
TRANSFER_ID_BYTES = 16


class MessageType(enum.IntEnum):
    """Frame type byte of each message (never reuse a number)."""

    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    AUTH_OK = 4
    ERROR = 5
    PING = 6
    PONG = 7
    GET_SNAPSHOTS = 8
    SNAPSHOTS = 9
    BEGIN_TRANSFER = 10
    READY = 11
    HAVE_FINGERPRINTS = 12
    MISSING = 13
    BLOCKS = 14
    MAP_ENTRIES = 15
    ACK = 16
    COMMIT = 17
    COMMITTED = 18
    ABORT = 19
    PRUNE = 20
    PRUNED = 21
    PD_REQUEST = 22
    PD_REPLY = 23
    LWS_BEGIN = 24
    LWS_RANGES = 25
    LWS_COMMIT = 26
    LWS_COMMITTED = 27
    GET_LWS = 28
    LWS_LIST = 29


class ErrorCode(enum.IntEnum):
    """ERROR.code values and the nxstore exception each maps to (`Error.to_exception`)."""

    PROTOCOL = 1  # ProtocolError
    VERSION = 2  # VersionMismatch
    AUTH = 3  # AuthenticationError
    NOT_FOUND = 4  # NotFound
    CORRUPTION = 5  # Corruption (a frame or block failed its checksum / fingerprint)
    ALREADY_EXISTS = 6  # AlreadyExists
    INVALID = 7  # InvalidArgument
    BUSY = 8  # InUse (e.g. a transfer into the same replica is running)
    INTERNAL = 9  # NxError
    ABORTED = 10  # NxError (the transfer was abandoned; safe to retry)


_CODE_TO_EXC: dict[int, type[NxError]] = {
    ErrorCode.PROTOCOL: ProtocolError,
    ErrorCode.VERSION: VersionMismatch,
    ErrorCode.AUTH: AuthenticationError,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.CORRUPTION: Corruption,
    ErrorCode.ALREADY_EXISTS: AlreadyExists,
    ErrorCode.INVALID: InvalidArgument,
    ErrorCode.BUSY: InUse,
}
_EXC_TO_CODE: list[tuple[type[BaseException], ErrorCode]] = [
    (VersionMismatch, ErrorCode.VERSION),
    (FrameCorruption, ErrorCode.CORRUPTION),
    (ProtocolError, ErrorCode.PROTOCOL),
    (AuthenticationError, ErrorCode.AUTH),
    (NotFound, ErrorCode.NOT_FOUND),
    (Corruption, ErrorCode.CORRUPTION),
    (AlreadyExists, ErrorCode.ALREADY_EXISTS),
    (InvalidArgument, ErrorCode.INVALID),
    (InUse, ErrorCode.BUSY),
]


# --- messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Message:
    """Base of all messages. `req_id` (u64, keyword-only) travels in the frame header:
    requests carry a fresh id from the sender (ids increase per connection), replies carry
    the id of the request they answer, unsolicited messages 0."""

    TYPE: ClassVar[MessageType]
    COMPRESS: ClassVar[bool] = False  # try lz4 on the frame payload
    req_id: int = field(default=0, kw_only=True)

    def encode_payload(self) -> list[Buffer]:
        raise NotImplementedError

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Message:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not np.array_equal(np.asarray(a), np.asarray(b)):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


_REGISTRY: dict[int, type[Message]] = {}


def _register(cls: type[Message]) -> type[Message]:
    _REGISTRY[int(cls.TYPE)] = cls
    return cls


# handshake ---------------------------------------------------------------------------


@_register
@dataclass(frozen=True, slots=True, eq=False)
class Hello(Message):
    """Client -> server, first frame: the versions the client speaks, who it is, its nonce."""

    TYPE = MessageType.HELLO
    min_version: int
    max_version: int
    cluster_id: str
    site: str
    nonce: bytes

    def encode_payload(self) -> list[Buffer]:
        check_len(self.nonce, WIRE_NONCE_BYTES, "HELLO nonce")
        o = PayloadWriter()
        o.pack(VERSIONS, self.min_version, self.max_version)
        o.string(self.cluster_id)
        o.string(self.site)
        o.raw(self.nonce)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Hello:
        lo, hi = p.unpack(VERSIONS)
        return cls(lo, hi, p.string(), p.string(), bytes(p.raw(WIRE_NONCE_BYTES)), req_id=req_id)


@_register
@dataclass(frozen=True, slots=True, eq=False)
class Challenge(Message):
    """Server -> client: the chosen version, who the server is, its nonce, and its proof
    HMAC(secret, "server" transcript) (auth.py)."""

    TYPE = MessageType.CHALLENGE
    version: int
    cluster_id: str
    site: str
    nonce: bytes
    proof: bytes

    def encode_payload(self) -> list[Buffer]:
        check_len(self.nonce, WIRE_NONCE_BYTES, "CHALLENGE nonce")
        check_len(self.proof, WIRE_PROOF_BYTES, "CHALLENGE proof")
        o = PayloadWriter()
        o.pack(U8, self.version)
        o.string(self.cluster_id)
        o.string(self.site)
        o.raw(self.nonce)
        o.raw(self.proof)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Challenge:
        (v,) = p.unpack(U8)
        cid, site = p.string(), p.string()
        nonce = bytes(p.raw(WIRE_NONCE_BYTES))
        return cls(v, cid, site, nonce, bytes(p.raw(WIRE_PROOF_BYTES)), req_id=req_id)


@_register
@dataclass(frozen=True, slots=True, eq=False)
class Auth(Message):
    """Client -> server: the client's proof HMAC(secret, "client" transcript)."""

    TYPE = MessageType.AUTH
    proof: bytes

    def encode_payload(self) -> list[Buffer]:
        check_len(self.proof, WIRE_PROOF_BYTES, "AUTH proof")
        return [self.proof]

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Auth:
        return cls(bytes(p.raw(WIRE_PROOF_BYTES)), req_id=req_id)


@_register
@dataclass(frozen=True, slots=True, eq=False)
class AuthOk(Message):
    """Server -> client: the client's proof is good; the connection is authenticated."""

    TYPE = MessageType.AUTH_OK

    def encode_payload(self) -> list[Buffer]:
        return [b""]

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> AuthOk:
        return cls(req_id=req_id)


# general -----------------------------------------------------------------------------


@_register
@dataclass(frozen=True, slots=True, eq=False)
class Error(Message):
    """Either way: the request `req_id` (or the connection, req_id 0) failed."""

    TYPE = MessageType.ERROR
    code: int
    message: str

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        o.pack(U16, self.code)
        o.string(self.message[: WIRE_MAX_STRING_BYTES // 4])
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Error:
        (code,) = p.unpack(U16)
        return cls(code, p.string(), req_id=req_id)

    def to_exception(self) -> NxError:
        """The nxstore exception this error stands for, message prefixed with 'peer: '."""
        exc = _CODE_TO_EXC.get(self.code, NxError)
        return exc(f"peer: {self.message}")

    @classmethod
    def from_exception(cls, exc: BaseException, req_id: int = 0) -> Error:
        """The ERROR that reports `exc` to the peer (unknown exceptions are INTERNAL)."""
        for klass, code in _EXC_TO_CODE:
            if isinstance(exc, klass):
                return cls(int(code), str(exc), req_id=req_id)
        return cls(int(ErrorCode.INTERNAL), f"{type(exc).__name__}: {exc}", req_id=req_id)


@_register
@dataclass(frozen=True, slots=True, eq=False)
class Ping(Message):
    """Either way: liveness / round-trip probe. `sent_ns` is echoed by PONG."""

    TYPE = MessageType.PING
    sent_ns: int = 0

    def encode_payload(self) -> list[Buffer]:
        return [U64.pack(self.sent_ns)]

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Ping:
        return cls(p.unpack(U64)[0], req_id=req_id)


@_register
@dataclass(frozen=True, slots=True, eq=False)
class Pong(Message):
    """Reply to PING (same req_id, same sent_ns)."""

    TYPE = MessageType.PONG
    sent_ns: int = 0

    def encode_payload(self) -> list[Buffer]:
        return [U64.pack(self.sent_ns)]

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> Pong:
        return cls(p.unpack(U64)[0], req_id=req_id)


# snapshot discovery ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One replica snapshot the target holds (element of SNAPSHOTS)."""

    name: str
    created_at: float  # seconds since the epoch, as the source stamped it
    size: int  # bytes
    block_size: int  # bytes


@_register
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


@_register
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


@_register
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


@_register
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


@_register
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


@_register
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


@_register
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


@_register
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


@_register
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


@_register
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


@_register
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


@_register
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


@_register
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


@_register
@dataclass(frozen=True, slots=True, eq=False)
class Pruned(Message):
    """Target -> source: the names of the replica snapshots deleted."""

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


# protection-domain metadata (nxstore.protection.remote) --------------------------------


def _json_body(o: PayloadWriter, body: bytes, what: str) -> None:
    if len(body) > WIRE_MAX_JSON_BYTES:
        raise InvalidArgument(f"{what} body of {len(body)} bytes exceeds {WIRE_MAX_JSON_BYTES}")
    o.pack(U32, len(body))
    o.big(body)


def _read_json_body(p: PayloadReader, what: str) -> bytes:
    (n,) = p.unpack(U32)
    if n > WIRE_MAX_JSON_BYTES:
        raise ProtocolError(f"{what}: body of {n} bytes exceeds {WIRE_MAX_JSON_BYTES}")
    return bytes(p.raw(n))


@_register
@dataclass(frozen=True, slots=True, eq=False)
class PdRequest(Message):
    """Either way: a protection-domain request `op` ("status", "sync", "adopt") with a
    UTF-8 JSON object `body` (u32 length + bytes, lz4 where it pays). Reply: PD_REPLY
    (or ERROR). The ops and their bodies: nxstore.protection.remote."""

    TYPE = MessageType.PD_REQUEST
    COMPRESS = True
    op: str
    body: bytes = b"{}"

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        o.string(self.op)
        _json_body(o, self.body, "PD_REQUEST")
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> PdRequest:
        op = p.string()
        return cls(op, _read_json_body(p, "PD_REQUEST"), req_id=req_id)


@_register
@dataclass(frozen=True, slots=True, eq=False)
class PdReply(Message):
    """Reply to PD_REQUEST: a UTF-8 JSON object `body` (u32 length + bytes)."""

    TYPE = MessageType.PD_REPLY
    COMPRESS = True
    body: bytes = b"{}"

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        _json_body(o, self.body, "PD_REPLY")
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> PdReply:
        return cls(_read_json_body(p, "PD_REPLY"), req_id=req_id)


WIRE_MAX_JSON_BYTES = 8 * 1024 * 1024  # bytes: a PD_REQUEST / PD_REPLY JSON body


# NearSync: light-weight snapshot episodes (nxstore.nearsync) ---------------------------

_LWS_POINT = struct.Struct("<dQQQIIB")  # created_at, seq, prev_seq, size, block_size, members, first
_LWS_ENTRY = struct.Struct("<Qd")  # seq, created_at


@_register
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


@_register
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


@_register
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


@_register
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


@_register
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


@_register
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


# --- whole messages ------------------------------------------------------------------

MESSAGE_CLASSES: dict[int, type[Message]] = dict(_REGISTRY)


def encode(
    msg: Message, *, version: int = WIRE_PROTOCOL_VERSION, compress: bool = True
) -> list[Buffer]:
    """The frame buffers of `msg` ([header, *payload]). `compress=False` disables lz4
    even for messages that try it. Raises InvalidArgument for a malformed message."""
    try:
        payload = msg.encode_payload()
    except (struct.error, OverflowError) as e:
        raise InvalidArgument(f"{msg.TYPE.name}: field out of range: {e}") from e
    return encode_frame(
        int(msg.TYPE),
        payload,
        req_id=msg.req_id,
        compress=compress and msg.COMPRESS,
        version=version,
    )


def decode(frame: Frame) -> Message:
    """The message in a verified frame. Raises ProtocolError (unknown type, bad payload)."""
    cls = MESSAGE_CLASSES.get(frame.type)
    if cls is None:
        raise ProtocolError(f"unknown message type {frame.type}")
    p = PayloadReader(frame.payload, cls.TYPE.name)
    try:
        msg = cls.decode_payload(p, frame.req_id)
    except InvalidArgument as e:  # a constructor check on decoded fields
        raise ProtocolError(f"{cls.TYPE.name}: {e}") from e
    p.end()
    return msg
