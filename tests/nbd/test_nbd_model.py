"""Random sequences of NBD requests (unaligned writes, FUA, trims, write-zeroes, flushes,
reads, and block status with structured replies) against a bytearray model, over one
connection and with two connections interleaved; with simple and with structured replies;
on nxstore and, as the reference, on nbdkit's memory plugin."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nbd_helpers import Client, extents, meta_data, start_nbdkit_memory

from nxstore.nbd import protocol as p

SIZE = 256 << 10  # bytes: 64 blocks of 4 KiB, so requests cross blocks often

_ranges = st.integers(0, SIZE - 1).flatmap(
    lambda off: st.tuples(st.just(off), st.integers(1, min(SIZE - off, 40_000))))
_ops = st.lists(st.tuples(
    st.sampled_from(["write", "write-fua", "trim", "zero", "flush", "read", "status"]),
    _ranges, st.integers(0, 1), st.integers(1, 255)), min_size=1, max_size=25)


@pytest.fixture(params=["nxstore", "nbdkit"])
def server_kind(request) -> str:
    return request.param


@pytest.fixture(params=["simple", "structured"])
def clients(request, server_kind, cluster, exported, tmp_path):
    """Two connected clients of one SIZE-byte export; "structured": both negotiated
    structured replies and selected base:allocation."""
    if server_kind == "nxstore":
        cluster.create_vdisk("disk", SIZE)
        path, name, proc = exported(cluster, "disk").uri.split("socket=")[1], "disk", None
    else:
        proc = start_nbdkit_memory(tmp_path, SIZE)
        path, name = proc.uri.split("socket=")[1], ""
    pair = [Client(path), Client(path)]
    for c in pair:
        if request.param == "structured":
            c.structured_replies()
            got = c.option(p.OPT_SET_META_CONTEXT, meta_data(name, p.BASE_ALLOCATION))
            assert [kind for kind, _ in got] == [p.REP_META_CONTEXT, p.REP_ACK]
        c.go(name)
    yield pair
    if proc is not None:
        proc.kill()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_requests_match_a_bytearray_model(clients, ops):
    model = bytearray(SIZE)
    assert clients[0].request(p.CMD_WRITE_ZEROES, 0, SIZE) == 0  # each example starts zeroed
    for kind, (off, n), which, byte in ops:
        c = clients[which]
        if kind.startswith("write"):
            data = bytes([byte]) * n
            flags = p.CMD_FLAG_FUA if kind == "write-fua" else 0
            assert c.request(p.CMD_WRITE, off, n, flags=flags, payload=data) == 0
            model[off:off + n] = data
        elif kind in ("trim", "zero"):
            # A trimmed range reads as zeros: nxstore's contract (NBD allows anything),
            # and what the memory plugin does too.
            assert c.request(p.CMD_TRIM if kind == "trim" else p.CMD_WRITE_ZEROES, off, n) == 0
            model[off:off + n] = bytes(n)
        elif kind == "flush":
            assert c.request(p.CMD_FLUSH, 0, 0) == 0
        elif kind == "status":
            if c.structured:
                _check_status(c, off, n, model)
        else:
            assert _read(c, off, n) == model[off:off + n]
    assert _read(clients[1], 0, SIZE) == model


def _check_status(c: Client, off: int, n: int, model: bytearray) -> None:
    """BLOCK_STATUS of [off, off+n): extents from `off` on, the first n-1 ending before
    off+n, none past the end; what it calls ZERO reads as zeros in the model."""
    c.send(p.CMD_BLOCK_STATUS, off, n, cookie=2)
    cookie, got = c.chunks()
    assert cookie == 2 and [kind for _, kind, _ in got] == [p.REPLY_TYPE_BLOCK_STATUS]
    _, found = extents(got[0][2])
    pos = off
    for i, (length, flags) in enumerate(found):
        assert length > 0 and (i == 0 or pos < off + n) and pos + length <= SIZE
        if flags & p.STATE_ZERO:
            assert not any(model[pos:pos + length]), (pos, length, found)
        pos += length


def _read(c: Client, off: int, n: int) -> bytes:
    c.send(p.CMD_READ, off, n, cookie=1)
    error, cookie, data = c.reply(n)
    assert error == 0 and cookie == 1
    return data
