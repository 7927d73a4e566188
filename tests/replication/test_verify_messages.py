"""VERIFY_REQUEST / VERIFY_REPLY: round trips, layout, bad input rejected as ProtocolError,
and the target refusing the request on a connection older than protocol version 4."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nxstore.constants import WIRE_FRAME_HEADER_BYTES, WIRE_MAX_BATCH, WIRE_VERIFY_VERSION
from nxstore.errors import InvalidArgument, ProtocolError
from nxstore.replication import frames, messages
from nxstore.replication.messages import VerifyReply, VerifyRequest
from nxstore.replication.verify import serve_verify

H = WIRE_FRAME_HEADER_BYTES


def wire(parts) -> bytes:
    return b"".join(bytes(p) for p in parts)


def roundtrip(msg):
    return messages.decode(frames.decode_frame(wire(messages.encode(msg))))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=20), st.text(max_size=20), st.floats(allow_nan=False,
       allow_infinity=False), st.integers(1, 1 << 20), st.integers(0, 1 << 40),
       st.integers(1, WIRE_MAX_BATCH), st.booleans())
def test_request_round_trip(vdisk, snap, created, bs, first, count, reread):
    msg = VerifyRequest(vdisk, snap, created, bs, first, count, reread, req_id=9)
    got = roundtrip(msg)
    assert got == msg and got.req_id == 9


@settings(max_examples=50, deadline=None)
@given(st.integers(1, WIRE_MAX_BATCH), st.data())
def test_reply_round_trip(n, data):
    fps = np.frombuffer(data.draw(st.binary(min_size=16 * n, max_size=16 * n)), np.uint8)
    damaged = sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=min(n, 50))))
    msg = VerifyReply(7, fps.reshape(n, 16), np.array(damaged, np.uint32), req_id=4)
    got = roundtrip(msg)
    assert got == msg and got.damaged.tolist() == damaged


def test_layouts():
    frame = wire(messages.encode(VerifyRequest("v", "s", 1.5, 4096, 3, 2, req_id=1)))
    assert frame[5] == 51
    assert frame[H:] == (b"\x01\x00v\x01\x00s" + struct.pack("<dIQIB", 1.5, 4096, 3, 2, 1))
    fps = np.arange(32, dtype=np.uint8).reshape(2, 16)
    frame = wire(messages.encode(VerifyReply(3, fps, [1], req_id=1), compress=False))
    assert frame[5] == 52
    assert frame[H:] == (struct.pack("<QI", 3, 2) + fps.tobytes() + struct.pack("<II", 1, 1))


def _decode(typ: int, payload: bytes):
    return messages.decode(frames.decode_frame(wire(frames.encode_frame(typ, [payload]))))


def test_bad_input_is_a_protocol_error():
    good = wire(messages.encode(VerifyRequest("v", "s", 1.5, 4096, 3, 2, req_id=1)))[H:]
    for bad in (good[:-1], good + b"\x00", good[:-1] + b"\x03",  # short, long, unknown flag
                good[:-5] + struct.pack("<IB", 0, 1),  # count 0
                good[:-5] + struct.pack("<IB", WIRE_MAX_BATCH + 1, 1)):
        with pytest.raises(ProtocolError, match="VERIFY_REQUEST"):
            _decode(51, bad)
    fps = bytes(32)
    for bad in (struct.pack("<QI", 0, 2) + fps + struct.pack("<II", 1, 2),  # index past n
                struct.pack("<QI", 0, 2) + fps + struct.pack("<III", 2, 1, 1),  # repeated
                struct.pack("<QI", 0, 2) + fps + struct.pack("<II", 2, 1),  # short
                struct.pack("<QI", 0, 0) + struct.pack("<I", 0)):  # empty
        with pytest.raises(ProtocolError, match="VERIFY_REPLY"):
            _decode(52, bad)
    with pytest.raises(InvalidArgument):
        VerifyRequest("v", "s", 0.0, 4096, 0, WIRE_MAX_BATCH + 1)


def test_target_refuses_it_below_version_4():
    msg = VerifyRequest("v", "s", 1.0, 4096, 0, 1, req_id=1)
    with pytest.raises(ProtocolError, match=f"VERIFY_REQUEST needs protocol version "
                                            f"{WIRE_VERIFY_VERSION}; paris negotiated 3"):
        serve_verify(None, "cluster-id", "paris", msg, 3)  # type: ignore[arg-type]
