"""The witness's wire messages: round trips through real frames, and malformed payloads."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nxstore.errors import InvalidArgument, ProtocolError
from nxstore.replication import frames, messages
from nxstore.replication.messages import MessageType, WitnessCas, WitnessGet, WitnessState

names = st.text(min_size=0, max_size=60)
u64 = st.integers(0, 2**64 - 1)


def roundtrip(msg):
    buf = b"".join(bytes(p) for p in messages.encode(msg))
    return messages.decode(frames.decode_frame(buf))


def decode_payload(kind: MessageType, payload: bytes):
    return messages.decode(frames.Frame(1, int(kind), 0, payload, 0))


@pytest.mark.parametrize("msg", [
    WitnessGet("0123abcd" * 4, req_id=1),
    WitnessCas("pair-1", 0, 1, "paris", req_id=2),
    WitnessCas("pair-1", 2**63 - 2, 2**63 - 1, "tokyo"),
    WitnessState("pair-1", True, 7, "paris", "tokyo", 1_700_000_000.25, req_id=3),
    WitnessState("pair-2", False, 0, "", "", 0.0),
])
def test_round_trip(msg):
    got = roundtrip(msg)
    assert type(got) is type(msg) and got == msg and got.req_id == msg.req_id


@given(st.one_of(
    st.builds(WitnessGet, names, req_id=u64),
    st.builds(WitnessCas, names, u64, u64, names, req_id=u64),
    st.builds(WitnessState, names, st.booleans(), u64, names, names,
              st.floats(allow_nan=False), req_id=u64),
))
def test_any_message_round_trips(msg):
    assert roundtrip(msg) == msg


def test_state_payload_layout():
    payload = b"".join(bytes(p) for p in WitnessState("p", True, 5, "a", "bc", 2.5).encode_payload())
    assert payload == (struct.pack("<H", 1) + b"p" + struct.pack("<QdB", 5, 2.5, 1)
                       + struct.pack("<H", 1) + b"a" + struct.pack("<H", 2) + b"bc")
    assert WitnessState("p", False, 0, "", "", 0.0).found is False
    assert WitnessState("p", False, 3, "a", "a", 0.0).found is True


def test_malformed_payloads_are_protocol_errors():
    good = b"".join(bytes(p) for p in WitnessCas("p", 1, 2, "s").encode_payload())
    for cut in range(len(good)):
        with pytest.raises(ProtocolError):
            decode_payload(MessageType.WITNESS_CAS, good[:cut])
    with pytest.raises(ProtocolError, match="unexpected bytes"):
        decode_payload(MessageType.WITNESS_CAS, good + b"x")
    state = bytearray(b"".join(bytes(p) for p in WitnessState("p", True, 1, "s", "s", 0.0)
                               .encode_payload()))
    state[3 + 16] = 2  # the ok flag
    with pytest.raises(ProtocolError, match="ok flag"):
        decode_payload(MessageType.WITNESS_STATE, bytes(state))
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode_payload(MessageType.WITNESS_GET, struct.pack("<H", 2) + b"\xff\xfe")


def test_out_of_range_fields_are_refused_when_encoding():
    with pytest.raises(InvalidArgument):
        messages.encode(WitnessCas("p", -1, 1, "s"))
    with pytest.raises(InvalidArgument):
        messages.encode(WitnessCas("p", 0, 2**64, "s"))
    with pytest.raises(InvalidArgument):
        messages.encode(WitnessGet("x" * 5000))


def test_codes():
    assert [int(MessageType.WITNESS_GET), int(MessageType.WITNESS_CAS),
            int(MessageType.WITNESS_STATE)] == [40, 41, 42]
