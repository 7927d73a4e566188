"""The wire protocol below what qemu lets us see, with a raw socket client: option haggling,
errno values of bad requests (EINVAL, ENOSPC, EPERM), pipelined requests answered with their
own cookies, a broken request stream closing the connection, structured replies (READ
chunks, DF, error chunks), meta contexts and BLOCK_STATUS (REQ_ONE, refusals). Each case
also runs against nbdkit's memory plugin (the reference), except where nbdkit's behaviour
is its own choice (the exact extents: its memory plugin tracks 32 KiB pages)."""

from __future__ import annotations

import errno
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nbd_helpers import (
    READY_TIMEOUT_S,
    Client,
    MiB,
    NbdProcess,
    extents,
    meta_data,
    reassemble,
    start_nbdkit_memory,
)

from nxstore.nbd import protocol as p

SIZE = 4 * MiB


@pytest.fixture(params=["nxstore", "nbdkit"])
def server(request, cluster, exported, tmp_path):
    """start(read_only) -> (socket path, export name) of a SIZE-byte export."""
    procs: list[NbdProcess] = []

    def start(read_only: bool = False) -> tuple[str, str]:
        if request.param == "nxstore":
            if "disk" not in {vd.name for vd in cluster.vdisks()}:
                cluster.create_vdisk("disk", SIZE)
            uri, name = exported(cluster, "disk", read_only=read_only).uri, "disk"
        else:
            procs.append(start_nbdkit_memory(tmp_path, SIZE, read_only=read_only,
                                             name=f"kit{len(procs)}"))
            uri, name = procs[-1].uri, ""
        return uri.split("socket=")[1], name

    start.kind = request.param
    yield start
    for proc in procs:
        proc.kill()


def test_options_list_unsupported_info_and_go(server):
    path, name = server()
    c = Client(path)
    assert c.option(99)[-1][0] == p.REP_ERR_UNSUP  # an option nobody defined
    listed = c.option(p.OPT_LIST)
    assert listed[-1][0] == p.REP_ACK
    assert any(kind == p.REP_SERVER and d[4:].decode().startswith(name) for kind, d in listed)
    if server.kind == "nxstore":  # nbdkit serves any name by default
        bad = c.option(p.OPT_INFO, struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0))
        assert bad[-1][0] == p.REP_ERR_UNKNOWN
        assert c.option(p.OPT_GO, b"\0\0")[-1][0] == p.REP_ERR_INVALID  # malformed data
    size, flags = c.go(name)
    assert size == SIZE
    for flag in (p.TF_HAS_FLAGS, p.TF_SEND_FLUSH, p.TF_SEND_FUA, p.TF_SEND_TRIM,
                 p.TF_SEND_WRITE_ZEROES, p.TF_CAN_MULTI_CONN):
        assert flags & flag, f"flag {flag:#x} missing from {flags:#x}"
    assert not flags & p.TF_READ_ONLY
    assert not flags & p.TF_SEND_DF  # only with structured replies


def test_errno_of_bad_requests(server):
    path, name = server()
    c = Client(path)
    c.go(name)
    assert c.request(p.CMD_READ, SIZE - 512, 1024) == errno.EINVAL  # past the end
    assert c.request(p.CMD_WRITE, SIZE - 512, 1024, payload=bytes(1024)) == errno.ENOSPC
    assert c.request(p.CMD_WRITE_ZEROES, SIZE, 4096) == errno.ENOSPC
    assert c.request(p.CMD_TRIM, SIZE - 512, 1024) == errno.EINVAL
    assert c.request(99, 0, 0) == errno.EINVAL  # an unknown command
    assert c.request(p.CMD_WRITE, 0, 4, payload=b"ok!!") == 0  # the connection still works
    assert c.request(p.CMD_FLUSH, 0, 0) == 0


def test_writes_to_a_read_only_export_get_eperm(server):
    path, name = server(read_only=True)
    c = Client(path)
    _, flags = c.go(name)
    assert flags & p.TF_READ_ONLY
    assert c.request(p.CMD_WRITE, 0, 512, payload=bytes(512)) == errno.EPERM
    assert c.request(p.CMD_TRIM, 0, 4096) == errno.EPERM
    assert c.request(p.CMD_WRITE_ZEROES, 0, 4096) == errno.EPERM
    assert c.request(p.CMD_READ, 0, 512) == 0


@pytest.mark.parametrize("structured", [False, True], ids=["simple", "structured"])
def test_pipelined_requests_are_answered_by_cookie(server, structured):
    path, name = server()
    c = Client(path)
    if structured:
        c.structured_replies()
    c.go(name)
    n = 200
    for i in range(n):  # all sent before any reply is read
        c.send(p.CMD_WRITE, i * 4096, 4096, cookie=1000 + i, payload=bytes([i % 256]) * 4096)
    assert sorted(c.reply()[1] for _ in range(n)) == list(range(1000, 1000 + n))
    sender = threading.Thread(  # replies fill the socket meanwhile: read them concurrently
        target=lambda: [c.send(p.CMD_READ, i * 4096, 4096, cookie=i) for i in range(n)])
    sender.start()
    for _ in range(n):
        error, cookie, data = c.reply(4096)
        assert error == 0 and data == bytes([cookie % 256]) * 4096
    sender.join(READY_TIMEOUT_S)


def test_bad_request_magic_closes_the_connection(server):
    path, name = server()
    c = Client(path)
    c.go(name)
    c.sock.sendall(p.REQUEST.pack(0x12345678, 0, p.CMD_READ, 1, 0, 512))
    with pytest.raises(ConnectionError):
        c.reply()
    Client(path).go(name)  # the server still takes new clients


HOLE = p.STATE_HOLE | p.STATE_ZERO


def _structured_client(path: str, name: str, *queries: str) -> tuple[Client, int]:
    """A client that negotiated structured replies, set `queries` (if any) and went into
    transmission; with the transmission flags."""
    c = Client(path)
    c.structured_replies()
    if queries:
        got = c.option(p.OPT_SET_META_CONTEXT, meta_data(name, *queries))
        assert got[-1][0] == p.REP_ACK, got
    _, flags = c.go(name)
    return c, flags


def _status(c: Client, offset: int, length: int, flags: int = 0) -> list[tuple[int, int]]:
    c.send(p.CMD_BLOCK_STATUS, offset, length, cookie=9, flags=flags)
    cookie, got = c.chunks()
    assert cookie == 9 and len(got) == 1, got
    reply_flags, kind, payload = got[0]
    assert kind == p.REPLY_TYPE_BLOCK_STATUS and reply_flags & p.REPLY_FLAG_DONE
    return extents(payload)[1]


def test_structured_read_chunks_holes_and_df(server):
    path, name = server()
    c, flags = _structured_client(path, name)
    assert flags & p.TF_SEND_DF
    data = bytes(range(256)) * 16
    assert c.request(p.CMD_WRITE, 64 << 10, 4096, payload=data) == 0
    c.send(p.CMD_READ, 0, 256 << 10, cookie=3)
    cookie, got = c.chunks()
    assert cookie == 3
    assert reassemble(got, 0, 256 << 10) == bytes(64 << 10) + data + bytes(188 << 10)
    kinds = [kind for _, kind, _ in got]
    if server.kind == "nxstore":  # exactly the written block is data
        assert kinds == [p.REPLY_TYPE_OFFSET_HOLE, p.REPLY_TYPE_OFFSET_DATA,
                         p.REPLY_TYPE_OFFSET_HOLE]
        assert p.HOLE.unpack(got[0][2]) == (0, 64 << 10)
    # DF: one content chunk, holes spelled out as zeros
    c.send(p.CMD_READ, 0, 128 << 10, cookie=4, flags=p.CMD_FLAG_DF)
    _, got = c.chunks()
    content = [chunk for chunk in got if chunk[1] != p.REPLY_TYPE_NONE]
    assert [kind for _, kind, _ in content] == [p.REPLY_TYPE_OFFSET_DATA]
    assert content[0][2][8:] == bytes(64 << 10) + data + bytes(60 << 10)
    # an error is an error chunk, and the connection goes on
    c.send(p.CMD_READ, SIZE - 512, 1024, cookie=5)
    _, got = c.chunks()
    assert [kind for _, kind, _ in got] in ([p.REPLY_TYPE_ERROR], [p.REPLY_TYPE_ERROR_OFFSET])
    assert p.ERROR_HEAD.unpack_from(got[0][2])[0] == errno.EINVAL
    assert c.request(p.CMD_FLUSH, 0, 0) == 0
    assert c.request(p.CMD_READ, 64 << 10, 16) == 0


def test_block_status_extents_and_req_one(server):
    path, name = server()
    c, _ = _structured_client(path, name, p.BASE_ALLOCATION)
    assert _status(c, 0, SIZE) == [(SIZE, HOLE)] or server.kind == "nbdkit"
    assert c.request(p.CMD_WRITE, 1 * MiB, 8192, payload=b"\x01" * 8192) == 0
    found = _status(c, 0, SIZE)
    pos, states = 0, {}
    for length, state in found:
        assert length > 0
        states[pos] = state
        pos += length
    assert pos <= SIZE
    data_at = [off for off, state in states.items() if not state & p.STATE_HOLE]
    assert any(off <= 1 * MiB < off + n for off, (n, _) in zip(states, found, strict=True)
               if off in data_at)
    if server.kind == "nxstore":
        assert found == [(1 * MiB, HOLE), (8192, 0), (SIZE - 1 * MiB - 8192, HOLE)]
        assert _status(c, 1 * MiB + 100, 1 * MiB) == [(8092, 0), (1 * MiB - 8092, HOLE)]
    # REQ_ONE: exactly one extent, never longer than asked
    for offset, length in ((0, SIZE), (0, 1000), (1 * MiB, 3 * MiB), (1 * MiB + 4096, 100)):
        one = _status(c, offset, length, flags=p.CMD_FLAG_REQ_ONE)
        assert len(one) == 1 and 0 < one[0][0] <= length, (offset, length, one)
    assert _status(c, 1 * MiB, 2 * MiB, flags=p.CMD_FLAG_REQ_ONE)[0][1] == 0
    # beyond the end: EINVAL, and the connection goes on
    c.send(p.CMD_BLOCK_STATUS, SIZE - 4096, 8192, cookie=11)
    _, got = c.chunks()
    assert got[-1][1] & (1 << 15) and p.ERROR_HEAD.unpack_from(got[-1][2])[0] == errno.EINVAL
    assert len(_status(c, 0, 4096)) == 1


def test_meta_context_needs_structured_replies(server):
    path, name = server()
    c = Client(path)
    got = c.option(p.OPT_SET_META_CONTEXT, meta_data(name, p.BASE_ALLOCATION))
    assert [kind for kind, _ in got] == [p.REP_ERR_INVALID]
    c.structured_replies()
    got = c.option(p.OPT_SET_META_CONTEXT, meta_data(name, p.BASE_ALLOCATION))
    assert [kind for kind, _ in got] == [p.REP_META_CONTEXT, p.REP_ACK]
    context_id = struct.unpack_from(">I", got[0][1])[0]
    assert got[0][1][4:] == p.BASE_ALLOCATION.encode()
    c.go(name)
    c.send(p.CMD_BLOCK_STATUS, 0, 4096, cookie=1)
    _, chunks = c.chunks()
    assert extents(chunks[0][2])[0] == context_id
    # structured replies but no context selected: BLOCK_STATUS is EINVAL
    d, _ = _structured_client(path, name)
    assert d.request(p.CMD_BLOCK_STATUS, 0, 4096) == errno.EINVAL
    assert d.request(p.CMD_READ, 0, 4096) == 0


def test_meta_context_queries(server):
    path, name = server()
    c = Client(path)
    c.structured_replies()

    def names(option: int, *queries: str) -> list[str]:
        got = c.option(option, meta_data(name, *queries))
        assert got[-1][0] == p.REP_ACK, got
        assert all(kind == p.REP_META_CONTEXT for kind, _ in got[:-1])
        return [d[4:].decode() for _, d in got[:-1]]

    assert p.BASE_ALLOCATION in names(p.OPT_LIST_META_CONTEXT)  # no query: everything
    assert names(p.OPT_LIST_META_CONTEXT, "base:") == [p.BASE_ALLOCATION]  # the wildcard
    assert names(p.OPT_LIST_META_CONTEXT, "x-nope:thing", "base:nope") == []
    assert names(p.OPT_SET_META_CONTEXT) == []  # no query selects nothing
    assert names(p.OPT_SET_META_CONTEXT, "base:") == []  # not a wildcard in SET
    assert names(p.OPT_SET_META_CONTEXT, "x-nope:thing", "base:nope") == []
    assert names(p.OPT_SET_META_CONTEXT, "x-nope:a", p.BASE_ALLOCATION) == [p.BASE_ALLOCATION]
    if server.kind == "nxstore":
        bad = c.option(p.OPT_LIST_META_CONTEXT, meta_data(name) + b"\0")  # a byte too many
        assert [kind for kind, _ in bad] == [p.REP_ERR_INVALID]
        bad = c.option(p.OPT_SET_META_CONTEXT, struct.pack(">I", 99) + b"x")  # overrun
        assert [kind for kind, _ in bad] == [p.REP_ERR_INVALID]
        other = c.option(p.OPT_SET_META_CONTEXT, meta_data("other", p.BASE_ALLOCATION))
        assert [kind for kind, _ in other] == [p.REP_ERR_UNKNOWN]
        assert c.option(p.OPT_STRUCTURED_REPLY, b"x")[-1][0] == p.REP_ERR_INVALID
    assert names(p.OPT_SET_META_CONTEXT, p.BASE_ALLOCATION) == [p.BASE_ALLOCATION]
    if server.kind == "nxstore":  # a failed SET clears the selection too
        assert c.option(p.OPT_SET_META_CONTEXT, b"")[-1][0] == p.REP_ERR_INVALID
    else:
        assert names(p.OPT_SET_META_CONTEXT, "base:nope") == []
    c.go(name)  # the last SET selected nothing: BLOCK_STATUS is refused
    assert c.request(p.CMD_BLOCK_STATUS, 0, 4096) == errno.EINVAL


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=64), option=st.sampled_from(
    [p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT, p.OPT_STRUCTURED_REPLY]),
    status=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
                     st.integers(0, 2**16 - 1)))
def test_garbage_options_and_status_requests_get_error_replies(cluster, exported, garbage,
                                                                option, status):
    """nxstore only: random option data and BLOCK_STATUS fields get the protocol's replies
    (an error or a well-formed answer), and the connection goes on working."""
    if "fz" not in {vd.name for vd in cluster.vdisks()}:
        cluster.create_vdisk("fz", SIZE)
    path = exported(cluster, "fz").uri.split("socket=")[1]
    c = Client(path)
    c.structured_replies()
    got = c.option(option, garbage)
    assert got[-1][0] in (p.REP_ACK, p.REP_ERR_INVALID, p.REP_ERR_UNKNOWN), got
    assert c.option(p.OPT_SET_META_CONTEXT, meta_data("fz", p.BASE_ALLOCATION))[-1][0] == p.REP_ACK
    c.go("fz")
    offset, length, flags = status
    c.send(p.CMD_BLOCK_STATUS, offset, length, cookie=1, flags=flags)
    _, chunks = c.chunks()
    if chunks[-1][1] == p.REPLY_TYPE_BLOCK_STATUS:
        found = extents(chunks[-1][2])[1]
        assert offset + sum(n for n, _ in found) <= SIZE
    else:
        assert p.ERROR_HEAD.unpack_from(chunks[-1][2])[0] == errno.EINVAL
    assert c.request(p.CMD_READ, 0, 4096) == 0
