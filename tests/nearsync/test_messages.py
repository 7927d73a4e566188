"""The NearSync wire messages: round trips through real frames, and malformed payloads."""

from __future__ import annotations

import numpy as np
import pytest

from nxstore.errors import InvalidArgument, ProtocolError
from nxstore.replication import frames, messages
from nxstore.replication.messages import (
    GetLws,
    LwsBegin,
    LwsCommit,
    LwsCommitted,
    LwsList,
    LwsRanges,
)

TID = bytes(range(16))


def roundtrip(msg):
    buf = b"".join(bytes(p) for p in messages.encode(msg))
    return messages.decode(frames.decode_frame(buf))


@pytest.mark.parametrize("msg", [
    LwsBegin(TID, "paris", "db", "default", "pd", "lws-9", "pd.000002", None, 12.5, 9, 4,
             1 << 30, 4096, 2, False, req_id=3),
    LwsBegin(TID, "paris", "db", "default", "pd", "lws-9", "pd.000002", "pd.000003", 12.5, 9, 4,
             1 << 30, 4096, 2, True),
    LwsRanges(np.array([5000, 9000], dtype=np.uint64), np.array([100, 3], dtype=np.uint64),
              np.arange(103, dtype=np.uint8), req_id=7),
    LwsRanges(np.zeros(1, np.uint64), np.full(1, 8192, np.uint64), np.zeros(8192, np.uint8)),
    LwsCommit(TID, 10, 2, req_id=8),
    LwsCommitted(TID, 9, req_id=8),
    GetLws("paris", "db", "pd.000002"),
    LwsList(((4, 1.5), (9, 2.5))),
])
def test_round_trip(msg):
    assert roundtrip(msg) == msg


def test_ranges_must_add_up():
    with pytest.raises(InvalidArgument):
        LwsRanges(np.array([0], np.uint64), np.array([10], np.uint64), np.zeros(9, np.uint8))
    good = LwsRanges(np.array([0], np.uint64), np.array([10], np.uint64), np.zeros(10, np.uint8))
    payload = b"".join(bytes(p) for p in good.encode_payload())[:-1]
    with pytest.raises(ProtocolError):
        messages.decode(frames.Frame(1, int(messages.MessageType.LWS_RANGES), 0, payload, 0))
