"""Replication handshake: version negotiation, identities, mutual shared-secret auth.

Four frames (docs/format.md has the sequence diagram)::

    client                                              server
      HELLO(min_v, max_v, cluster_id, site, nonce_c)  ->
                 <- CHALLENGE(v, cluster_id, site, nonce_s, proof_s)
      AUTH(proof_c)                                   ->
                                          <- AUTH_OK

    transcript = len-prefixed(LABEL, min_v, max_v, v, client cluster_id, client site,
                              nonce_c, server cluster_id, server site, nonce_s)
    proof_s = HMAC-SHA256(secret, b"server" + transcript)
    proof_c = HMAC-SHA256(secret, b"client" + transcript)
    key_c2s = HMAC-SHA256(secret, b"frame key client->server" + transcript)
    key_s2c = HMAC-SHA256(secret, b"frame key server->client" + transcript)

Each side proves it knows the secret over both fresh nonces and both identities; the
secret itself never travels. The role label stops a proof from being reflected back; the
nonces stop replays; the offered version range in the transcript stops a downgrade. The
server proves first so that each side is waiting for the other's answer when the other
rejects: a wrong secret is reported on both sides (AuthenticationError), not only on
one. A side that rejects the peer sends ERROR (best effort) and closes.

Every frame after the handshake is authenticated (frames.FrameKey): the server keys its
direction right after CHALLENGE (AUTH_OK is its first keyed frame), the client its own
right after AUTH, and each side keys the direction it reads once it has checked the
peer's proof. A relay that passes the genuine handshake through cannot change, inject,
drop, replay or reorder a frame after it: the keys never travel and are fresh per
connection (both nonces are in the transcript).

Every failure closes the transport, logs one WARNING on logger "nxstore.replication",
and raises: AuthenticationError (wrong secret), VersionMismatch (no common version),
ProtocolError (garbage, unexpected message, timeout) or ConnectionClosed (peer closed
early, a ProtocolError). The whole handshake is bounded by `timeout` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..constants import (
    WIRE_GMAC_VERSION,
    WIRE_HANDSHAKE_TIMEOUT_S,
    WIRE_MIN_PROTOCOL_VERSION,
    WIRE_NONCE_BYTES,
    WIRE_PROTOCOL_VERSION,
)
from ..errors import AuthenticationError, InvalidArgument, NxError, ProtocolError, VersionMismatch
from .frames import FrameKey
from .messages import Auth, AuthOk, Challenge, Error, ErrorCode, Hello, Message

if TYPE_CHECKING:
    from .transport import StreamTransport

log = logging.getLogger("nxstore.replication")

LABEL = b"nxstore-replication-handshake-v1"
_U16 = struct.Struct("<H")


@dataclass(frozen=True, slots=True)
class SiteIdentity:
    """Who a side is: the cluster's id (Cluster.id, a uuid hex) and its site name."""

    cluster_id: str
    site: str

    def __post_init__(self) -> None:
        if not self.cluster_id or not self.site:
            raise InvalidArgument("cluster_id and site must be non-empty")


def _peer_identity(cluster_id: str, site: str) -> SiteIdentity:
    if not cluster_id or not site:
        raise ProtocolError("handshake: peer sent an empty cluster id or site name")
    return SiteIdentity(cluster_id, site)


def _secret_bytes(secret: bytes | str) -> bytes:
    b = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not b:
        raise InvalidArgument("the replication shared secret is empty")
    return b


def transcript(
    min_v: int,
    max_v: int,
    version: int,
    client: SiteIdentity,
    nonce_c: bytes,
    server: SiteIdentity,
    nonce_s: bytes,
) -> bytes:
    """The bytes both proofs cover (each field u16-length-prefixed)."""
    fields = [
        LABEL,
        bytes([min_v, max_v, version]),
        client.cluster_id.encode(),
        client.site.encode(),
        nonce_c,
        server.cluster_id.encode(),
        server.site.encode(),
        nonce_s,
    ]
    return b"".join(_U16.pack(len(f)) + f for f in fields)


def proof(secret: bytes, role: bytes, tr: bytes) -> bytes:
    """HMAC-SHA256(secret, role + transcript); role is b"client" or b"server"."""
    return hmac.new(secret, role + tr, hashlib.sha256).digest()


def frame_keys(secret: bytes, tr: bytes, version: int) -> tuple[FrameKey, FrameKey]:
    """The frame MAC keys of a connection negotiated at `version`, (client->server,
    server->client): HMAC-SHA256 of the secret over a direction label + transcript, used
    for AES-256-GMAC tags from WIRE_GMAC_VERSION on (frames.FrameKey). The labels differ
    from the proofs' role labels in their first byte, so no key is ever a proof sent in
    clear."""
    def key(way: bytes) -> FrameKey:
        return FrameKey(hmac.new(secret, b"frame key " + way + tr, hashlib.sha256).digest(),
                        gmac=version >= WIRE_GMAC_VERSION)

    return key(b"client->server"), key(b"server->client")


def _expect(msg: Message, cls: type[Message], step: str) -> None:
    if isinstance(msg, Error):
        raise msg.to_exception()
    if not isinstance(msg, cls):
        raise ProtocolError(f"handshake: expected {cls.TYPE.name} {step}, got {msg.TYPE.name}")


async def _reject(t: StreamTransport, exc: BaseException) -> None:
    """Tell the peer why (best effort, never blocks long), then close."""
    with contextlib.suppress(NxError, OSError, asyncio.TimeoutError):
        await asyncio.wait_for(t.send(Error.from_exception(exc)), 1.0)
    await t.close()


async def _run(
    role: str,
    t: StreamTransport,
    coro,
    timeout: float,
) -> SiteIdentity:
    try:
        try:
            return await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError:
            raise ProtocolError(f"handshake timed out after {timeout:g} s") from None
    except NxError as e:
        # The client's caller gets the exception and reports it; a server has no one else.
        log.log(
            logging.WARNING if role == "server" else logging.INFO,
            "replication handshake (%s side, peer %s) failed: %s: %s",
            role,
            t.label,
            type(e).__name__,
            e,
        )
        await _reject(t, e)
        raise
    except BaseException:
        await t.close()
        raise


async def client_handshake(
    t: StreamTransport,
    local: SiteIdentity,
    secret: bytes | str,
    *,
    timeout: float = WIRE_HANDSHAKE_TIMEOUT_S,
    versions: tuple[int, int] = (WIRE_MIN_PROTOCOL_VERSION, WIRE_PROTOCOL_VERSION),
) -> SiteIdentity:
    """Run the client side on a fresh transport. Returns the server's identity (also in
    `t.peer`; `t.version` is the negotiated version). On failure the transport is closed
    and AuthenticationError / VersionMismatch / ProtocolError is raised (module doc)."""
    key = _secret_bytes(secret)
    lo, hi = versions

    async def steps() -> SiteIdentity:
        nonce_c = os.urandom(WIRE_NONCE_BYTES)
        await t.send(Hello(lo, hi, local.cluster_id, local.site, nonce_c))
        ch = await t.recv()
        _expect(ch, Challenge, "after HELLO")
        assert isinstance(ch, Challenge)
        if not lo <= ch.version <= hi:
            raise VersionMismatch(
                f"server chose protocol version {ch.version}; this side speaks {lo}..{hi}"
            )
        server = _peer_identity(ch.cluster_id, ch.site)
        tr = transcript(lo, hi, ch.version, local, nonce_c, server, ch.nonce)
        if not hmac.compare_digest(ch.proof, proof(key, b"server", tr)):
            raise AuthenticationError(
                f"server {server.site!r} ({server.cluster_id}) failed authentication: "
                "wrong shared secret"
            )
        c2s, s2c = frame_keys(key, tr, ch.version)
        t._key_recv(s2c)
        await t.send(Auth(proof(key, b"client", tr)))
        t._key_send(c2s)
        ok = await t.recv()
        _expect(ok, AuthOk, "after AUTH")
        t._authenticated(server, ch.version)
        return server

    return await _run("client", t, steps(), timeout)


async def server_handshake(
    t: StreamTransport,
    local: SiteIdentity,
    secret: bytes | str,
    *,
    timeout: float = WIRE_HANDSHAKE_TIMEOUT_S,
    versions: tuple[int, int] = (WIRE_MIN_PROTOCOL_VERSION, WIRE_PROTOCOL_VERSION),
) -> SiteIdentity:
    """Run the server side on a freshly accepted transport. Returns the client's identity
    (also in `t.peer`). Failures as in `client_handshake`."""
    key = _secret_bytes(secret)
    lo, hi = versions

    async def steps() -> SiteIdentity:
        hello = await t.recv()
        _expect(hello, Hello, "first")
        assert isinstance(hello, Hello)
        version = min(hi, hello.max_version)
        if version < max(lo, hello.min_version) or hello.min_version > hello.max_version:
            raise VersionMismatch(
                f"client speaks protocol versions {hello.min_version}..{hello.max_version}, "
                f"this side {lo}..{hi}"
            )
        client = _peer_identity(hello.cluster_id, hello.site)
        nonce_s = os.urandom(WIRE_NONCE_BYTES)
        tr = transcript(
            hello.min_version, hello.max_version, version, client, hello.nonce, local, nonce_s
        )
        await t.send(
            Challenge(version, local.cluster_id, local.site, nonce_s, proof(key, b"server", tr))
        )
        c2s, s2c = frame_keys(key, tr, version)
        t._key_send(s2c)
        auth = await t.recv()
        _expect(auth, Auth, "after CHALLENGE")
        assert isinstance(auth, Auth)
        if not hmac.compare_digest(auth.proof, proof(key, b"client", tr)):
            raise AuthenticationError(
                f"client {client.site!r} ({client.cluster_id}) failed authentication: "
                "wrong shared secret"
            )
        t._key_recv(c2s)
        await t.send(AuthOk())
        t._authenticated(client, version)
        return client

    return await _run("server", t, steps(), timeout)


__all__ = [
    "ErrorCode",
    "SiteIdentity",
    "client_handshake",
    "frame_keys",
    "proof",
    "server_handshake",
    "transcript",
]
