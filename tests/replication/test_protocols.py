"""TargetProtocols: what a replication target serves beyond snapshot replication.

A real ReplicationTarget serves one authenticated in-memory connection per test; the
registry it reads is either the one the opened cluster filled (NearSync, PD metadata) or an
empty one attached in its place.
"""

from __future__ import annotations

import asyncio
import json
from typing import NoReturn

import numpy as np
import pytest
from conftest import run

import nxstore
from nxstore.errors import InvalidArgument
from nxstore.replication.auth import SiteIdentity, client_handshake, server_handshake
from nxstore.replication.messages import (
    Ack,
    Error,
    ErrorCode,
    GetLws,
    LwsBegin,
    LwsCommit,
    LwsCommitted,
    LwsList,
    LwsRanges,
    Message,
    PdReply,
    PdRequest,
    Ping,
    Pong,
    Ready,
)
from nxstore.replication.protocols import (
    TargetProtocols,
    Transfer,
    TransferKind,
    target_protocols,
)
from nxstore.replication.target import ReplicationTarget
from nxstore.replication.transport import memory_pair

BS = 4096
SECRET = b"protocols test secret, long enough"
PEER = SiteIdentity("c-peer-0001", "paris")
TID = bytes(range(16))


@pytest.fixture
def cluster(tmp_path):
    c = nxstore.Cluster.create(str(tmp_path / "canada"), block_size=BS, background=False)
    yield c
    c.close()


def converse(cluster: nxstore.Cluster, requests: list[Message], replies: int) -> list[Message]:
    """Send `requests` to a ReplicationTarget of `cluster` on one connection from PEER;
    the first `replies` messages it sends back. The target must then end the connection
    when the peer closes (the test fails on a hang)."""
    target = ReplicationTarget(cluster)

    async def body() -> list[Message]:
        a, b = memory_pair()
        local = SiteIdentity(cluster.id, cluster.site_name)
        await asyncio.gather(client_handshake(a, PEER, SECRET), server_handshake(b, local, SECRET))
        serving = asyncio.create_task(target.handle(b))
        for msg in requests:
            await a.send(msg)
        got = [await a.recv() for _ in range(replies)]
        await a.close()
        await serving
        return got

    return run(body(), timeout=20)


def lws_begin(req_id: int) -> LwsBegin:
    return LwsBegin(TID, PEER.site, "db", "default", "pd", "lws-9", "pd.000002", None, 12.5, 9,
                    4, 1 << 20, BS, 1, False, req_id=req_id)


def never(*args: object) -> NoReturn:
    raise AssertionError(f"called with {args}")


# -- registration ---------------------------------------------------------------------------------
def test_a_message_kind_has_at_most_one_handler():
    protocols = TargetProtocols()
    protocols.add_query(GetLws, lambda source, site, msg: LwsList(req_id=msg.req_id))
    with pytest.raises(InvalidArgument, match="GetLws already has a handler"):
        protocols.add_query(GetLws, lambda source, site, msg: LwsList(req_id=msg.req_id))
    with pytest.raises(InvalidArgument, match="Ping already has a handler"):  # built in
        protocols.add_query(Ping, lambda source, site, msg: Pong(req_id=msg.req_id))
    clashing = TransferKind(begin=LwsBegin, commit=LwsCommit, stage={GetLws: never},
                            check_begin=never, on_commit=never, after_commit=never)
    with pytest.raises(InvalidArgument, match="GetLws already has a handler"):
        protocols.add_transfer(clashing)
    # the refused registration took nothing: its begin and commit are still free
    assert protocols.begun_by(LwsBegin) is None and protocols.committed_by(LwsCommit) is None
    protocols.add_query(LwsBegin, lambda source, site, msg: LwsList(req_id=msg.req_id))


def test_an_opened_cluster_serves_nearsync_and_pd_metadata(cluster):
    protocols = target_protocols(cluster)
    assert target_protocols(cluster) is protocols  # one per engine
    assert protocols.begun_by(LwsBegin) is not None and protocols.query(GetLws) is not None
    with pytest.raises(InvalidArgument, match="PdRequest already has a handler"):
        protocols.add_query(PdRequest, lambda source, site, msg: PdReply(req_id=msg.req_id))
    # ... and a target built directly answers both
    pd_status, lws = converse(cluster, [PdRequest("status", json.dumps({"pd": "gold"}).encode(),
                                                  req_id=1),
                                        GetLws(PEER.site, "db", "s1", req_id=2)], 2)
    assert isinstance(pd_status, PdReply) and pd_status.req_id == 1
    status = json.loads(bytes(pd_status.body))
    assert status["exists"] is False and status["site"] == cluster.site_name
    assert lws == LwsList((), req_id=2)


# -- dispatch -------------------------------------------------------------------------------------
@pytest.mark.parametrize("request_", [
    GetLws(PEER.site, "db", "s1", req_id=1),
    PdRequest("status", b'{"pd": "gold"}', req_id=1),
    lws_begin(1),
    LwsRanges(np.zeros(1, np.uint64), np.ones(1, np.uint64), np.zeros(1, np.uint8), req_id=1),
    LwsCommit(TID, 0, 0, req_id=1),
], ids=lambda m: type(m).__name__)
def test_an_unregistered_request_gets_a_protocol_error(cluster, request_):
    cluster.attach(TargetProtocols())  # replaces the registry the open filled
    (reply,) = converse(cluster, [request_], 1)
    assert isinstance(reply, Error) and reply.code == ErrorCode.PROTOCOL and reply.req_id == 1
    assert reply.message == f"unexpected {type(request_).__name__} from {PEER.site}"


def test_registered_handlers_are_used(cluster):
    protocols = TargetProtocols()
    cluster.attach(protocols)
    calls: list[tuple] = []
    protocols.on_start(lambda: calls.append(("start",)))

    def query(source: str, site: str, msg: Message) -> Message:
        calls.append(("query", source, site))
        return LwsList(((7, 1.5),), req_id=msg.req_id)

    def stage(msg: Message, transfer: Transfer | None) -> None:
        assert transfer is not None and transfer.begin.transfer_id == TID
        calls.append(("stage", transfer.kind is kind))

    def on_commit(source: str, msg: Message, transfer: Transfer | None) -> Message:
        calls.append(("commit", source, transfer is not None and transfer.kind is kind))
        return LwsCommitted(TID, 9, req_id=msg.req_id)

    kind = TransferKind(
        begin=LwsBegin, commit=LwsCommit, stage={LwsRanges: stage},
        check_begin=lambda source, msg: calls.append(("check", source)), on_commit=on_commit,
        after_commit=lambda source, begin: calls.append(("after", source, begin)))
    protocols.add_query(GetLws, query)
    protocols.add_transfer(kind)
    ranges = LwsRanges(np.zeros(1, np.uint64), np.ones(1, np.uint64), np.zeros(1, np.uint8),
                       req_id=3)
    replies = converse(cluster, [GetLws(PEER.site, "db", "s1", req_id=1), lws_begin(2), ranges,
                                 LwsCommit(TID, 0, 1, req_id=4)], 4)
    assert replies[0] == LwsList(((7, 1.5),), req_id=1)
    assert isinstance(replies[1], Ready) and replies[1].req_id == 2
    assert replies[2] == Ack(3)  # staged messages are acknowledged like BLOCKS
    assert replies[3] == LwsCommitted(TID, 9, req_id=4)
    assert calls == [("start",), ("query", PEER.cluster_id, PEER.site),
                     ("check", PEER.cluster_id), ("stage", True),
                     ("commit", PEER.cluster_id, True), ("after", PEER.cluster_id, lws_begin(2))]


# -- sessions: a message that takes its whole connection ------------------------------------------
def test_a_session_message_first_on_its_connection_takes_the_connection(cluster):
    protocols = TargetProtocols()
    cluster.attach(protocols)  # in place of the one the opened cluster filled
    calls: list[tuple] = []

    async def session(peer: SiteIdentity, t, msg: Message) -> None:
        calls.append((peer, type(msg)))
        await t.send(Pong(1, req_id=msg.req_id))
        nxt = await t.recv()  # the handler owns the connection: even a Ping is its own
        await t.send(Pong(2, req_id=nxt.req_id))
        if isinstance(nxt, Ping) and nxt.sent_ns == 99:
            raise InvalidArgument("refused by the session")

    protocols.add_session(GetLws, session)
    with pytest.raises(InvalidArgument, match="GetLws already has a handler"):
        protocols.add_session(GetLws, session)
    with pytest.raises(InvalidArgument, match="Ping already has a handler"):
        protocols.add_session(Ping, session)
    first = GetLws(PEER.site, "db", "s1", req_id=1)
    assert converse(cluster, [first, Ping(5, req_id=2)], 2) == [Pong(1, req_id=1),
                                                                Pong(2, req_id=2)]
    assert calls == [(PEER, GetLws)]
    # An NxError from the session goes back as ERROR naming the message that opened it.
    got = converse(cluster, [first, Ping(99, req_id=2)], 3)
    assert got[:2] == [Pong(1, req_id=1), Pong(2, req_id=2)]
    assert got[2] == Error(int(ErrorCode.INVALID), "refused by the session", req_id=1)
    # Anywhere but first, the message is unexpected.
    got = converse(cluster, [Ping(3, req_id=1), GetLws(PEER.site, "db", "s1", req_id=2)], 2)
    assert got[0] == Pong(3, req_id=1)
    assert isinstance(got[1], Error) and got[1].code == ErrorCode.PROTOCOL
    assert "unexpected GetLws" in got[1].message and len(calls) == 2
