"""Session messages: the handshake (HELLO, CHALLENGE, AUTH, AUTH_OK; nxstore.replication.auth)
and the general ones any protocol uses (ERROR, PING, PONG)."""

from __future__ import annotations

from dataclasses import dataclass

from ...constants import WIRE_MAX_STRING_BYTES, WIRE_NONCE_BYTES, WIRE_PROOF_BYTES
from ...errors import NxError
from ..codec import U8, U16, U64, VERSIONS, PayloadReader, PayloadWriter, check_len
from ..frames import Buffer
from .base import CODE_TO_EXCEPTION, EXCEPTION_TO_CODE, ErrorCode, Message, MessageType, register

# handshake ---------------------------------------------------------------------------


@register
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


@register
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


@register
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


@register
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


@register
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
        exc = CODE_TO_EXCEPTION.get(self.code, NxError)
        return exc(f"peer: {self.message}")

    @classmethod
    def from_exception(cls, exc: BaseException, req_id: int = 0) -> Error:
        """The ERROR that reports `exc` to the peer (unknown exceptions are INTERNAL)."""
        for klass, code in EXCEPTION_TO_CODE:
            if isinstance(exc, klass):
                return cls(int(code), str(exc), req_id=req_id)
        return cls(int(ErrorCode.INTERNAL), f"{type(exc).__name__}: {exc}", req_id=req_id)


@register
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


@register
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
