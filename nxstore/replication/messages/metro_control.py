"""Metro control messages: METRO_REQUEST / METRO_REPLY carry the JSON requests one Metro
site sends the other (nxstore.metro.control: setup, status, teardown)."""

from __future__ import annotations

from dataclasses import dataclass

from ..codec import PayloadReader, PayloadWriter
from ..frames import Buffer
from .base import Message, MessageType, register
from .ownership import _json_body, _read_json_body


@register
@dataclass(frozen=True, slots=True, eq=False)
class MetroRequest(Message):
    """Either way between the two sites of a Metro pair: request `op` with a UTF-8 JSON
    object `body` (u32 length + bytes). Reply: METRO_REPLY (or ERROR)."""

    TYPE = MessageType.METRO_REQUEST
    COMPRESS = True
    op: str
    body: bytes = b"{}"

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        o.string(self.op)
        _json_body(o, self.body, "METRO_REQUEST")
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> MetroRequest:
        op = p.string()
        return cls(op, _read_json_body(p, "METRO_REQUEST"), req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class MetroReply(Message):
    """Reply to METRO_REQUEST: a UTF-8 JSON object `body` (u32 length + bytes)."""

    TYPE = MessageType.METRO_REPLY
    COMPRESS = True
    body: bytes = b"{}"

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        _json_body(o, self.body, "METRO_REPLY")
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> MetroReply:
        return cls(_read_json_body(p, "METRO_REPLY"), req_id=req_id)
