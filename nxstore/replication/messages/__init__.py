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

One module per protocol area: `base` (the MessageType code table, ErrorCode, the Message
base class, encode/decode), `session` (handshake, ERROR, PING/PONG), `replication`
(snapshot transfer and pruning), `ownership` (PD_REQUEST/PD_REPLY), `nearsync` (LWS
episodes), `witness` (the Metro witness: WITNESS_GET/CAS/STATE), `metro` (the Metro mirror
stream), `metro_control` (METRO_REQUEST/METRO_REPLY between Metro sites), `leap_control`
(LEAP_REQUEST/LEAP_REPLY between availability zones), `verify` (VERIFY_REQUEST/VERIFY_REPLY:
replica verification by block fingerprints). Import the names
from this package; it imports every area, so `decode` knows every message type.
"""

from __future__ import annotations

from .base import (
    MESSAGE_CLASSES,
    TRANSFER_ID_BYTES,
    ZERO_FINGERPRINT,
    ErrorCode,
    Message,
    MessageType,
    decode,
    encode,
)
from .leap_control import LeapReply, LeapRequest
from .metro import (
    MetroAccept,
    MetroFlush,
    MetroFlushed,
    MetroOpen,
    MetroWrites,
    MirroredVDisk,
)
from .metro_control import MetroReply, MetroRequest
from .nearsync import GetLws, LwsBegin, LwsCommit, LwsCommitted, LwsList, LwsRanges
from .ownership import (
    WIRE_MAX_JSON_BYTES,
    JsonReply,
    JsonRequest,
    PdReply,
    PdRequest,
    dump_json_object,
    load_json_object,
)
from .replication import (
    Abort,
    Ack,
    BeginTransfer,
    Blocks,
    Commit,
    Committed,
    GetSnapshots,
    HaveFingerprints,
    MapEntries,
    Missing,
    Prune,
    Pruned,
    PruneSnapshots,
    Ready,
    SnapshotInfo,
    Snapshots,
    StoredBlocks,
)
from .session import Auth, AuthOk, Challenge, Error, Hello, Ping, Pong
from .verify import VerifyReply, VerifyRequest
from .witness import WitnessCas, WitnessGet, WitnessState

__all__ = [
    "dump_json_object",
    "load_json_object",
    "MESSAGE_CLASSES",
    "TRANSFER_ID_BYTES",
    "WIRE_MAX_JSON_BYTES",
    "ZERO_FINGERPRINT",
    "Abort",
    "Ack",
    "Auth",
    "AuthOk",
    "BeginTransfer",
    "Blocks",
    "Challenge",
    "Commit",
    "Committed",
    "Error",
    "ErrorCode",
    "GetLws",
    "GetSnapshots",
    "HaveFingerprints",
    "Hello",
    "LwsBegin",
    "LwsCommit",
    "LwsCommitted",
    "JsonReply",
    "JsonRequest",
    "LwsList",
    "LwsRanges",
    "MapEntries",
    "LeapReply",
    "LeapRequest",
    "MetroReply",
    "MetroRequest",
    "Message",
    "MessageType",
    "MetroAccept",
    "MetroFlush",
    "MetroFlushed",
    "MetroOpen",
    "MetroWrites",
    "MirroredVDisk",
    "Missing",
    "PdReply",
    "PdRequest",
    "Ping",
    "Pong",
    "Prune",
    "Pruned",
    "PruneSnapshots",
    "Ready",
    "SnapshotInfo",
    "Snapshots",
    "StoredBlocks",
    "VerifyReply",
    "VerifyRequest",
    "WitnessCas",
    "WitnessGet",
    "WitnessState",
    "decode",
    "encode",
]
