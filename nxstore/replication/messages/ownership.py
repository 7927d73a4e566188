"""Protection-domain metadata messages: PD_REQUEST / PD_REPLY carry the JSON requests of
nxstore.protection.remote (ownership status, sync, adopt)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import InvalidArgument, ProtocolError
from ..codec import U32, PayloadReader, PayloadWriter
from ..frames import Buffer
from .base import Message, MessageType, register

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


@register
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


@register
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
