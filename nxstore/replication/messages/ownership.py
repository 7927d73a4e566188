"""JSON requests between sites: the JsonRequest / JsonReply shape and its body codec, and
PD_REQUEST / PD_REPLY, which carry the requests of nxstore.protection.remote (ownership
status, sync, adopt). METRO_REQUEST / METRO_REPLY (metro_control) share the shape."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ...errors import InvalidArgument, ProtocolError
from ..codec import U32, PayloadReader, PayloadWriter
from ..frames import Buffer
from .base import Message, MessageType, register

# JSON requests between sites: the shape PD_REQUEST and METRO_REQUEST share --------------


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


def dump_json_object(body: dict[str, Any]) -> bytes:
    """The body bytes of a JSON request or reply (keys sorted: the same dict, the same bytes)."""
    return json.dumps(body, sort_keys=True).encode()


def load_json_object(data: bytes, what: str) -> dict[str, Any]:
    """A JSON request's or reply's body as a dict; ProtocolError naming `what` if the bytes
    are not UTF-8 JSON or not an object."""
    try:
        body = json.loads(bytes(data).decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{what}: body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError(f"{what}: body is not a JSON object")
    return body


@dataclass(frozen=True, slots=True, eq=False)
class JsonRequest(Message):
    """A request `op` with a UTF-8 JSON object `body` (u32 length + bytes, lz4 where it
    pays). Subclasses name the message type."""

    COMPRESS = True
    op: str
    body: bytes = b"{}"

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        o.string(self.op)
        _json_body(o, self.body, self.TYPE.name)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> JsonRequest:
        op = p.string()
        return cls(op, _read_json_body(p, cls.TYPE.name), req_id=req_id)


@dataclass(frozen=True, slots=True, eq=False)
class JsonReply(Message):
    """The reply to a JsonRequest: a UTF-8 JSON object `body` (u32 length + bytes)."""

    COMPRESS = True
    body: bytes = b"{}"

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        _json_body(o, self.body, self.TYPE.name)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> JsonReply:
        return cls(_read_json_body(p, cls.TYPE.name), req_id=req_id)


# protection-domain metadata (nxstore.protection.remote) --------------------------------


@register
@dataclass(frozen=True, slots=True, eq=False)
class PdRequest(JsonRequest):
    """Either way: a protection-domain request `op` ("status", "sync", "adopt") with a
    UTF-8 JSON object `body`. Reply: PD_REPLY (or ERROR). The ops and their bodies:
    nxstore.protection.remote."""

    TYPE = MessageType.PD_REQUEST


@register
@dataclass(frozen=True, slots=True, eq=False)
class PdReply(JsonReply):
    """Reply to PD_REQUEST: a UTF-8 JSON object `body`."""

    TYPE = MessageType.PD_REPLY


WIRE_MAX_JSON_BYTES = 8 * 1024 * 1024  # bytes: a PD_REQUEST / PD_REPLY JSON body
