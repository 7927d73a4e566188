"""Frame and message codec: round trips, layout, every damaged byte detected, garbage."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct

import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nxstore.constants import (
    WIRE_FRAME_HEADER_BYTES,
    WIRE_HANDSHAKE_MAX_PAYLOAD,
    WIRE_MAX_BATCH,
    WIRE_MAX_FRAME_PAYLOAD,
    WIRE_PROTOCOL_VERSION,
)
from nxstore.errors import (
    ConnectionClosed,
    Corruption,
    FrameCorruption,
    InvalidArgument,
    ProtocolError,
    VersionMismatch,
)
from nxstore.replication import frames, messages
from nxstore.replication.messages import (
    Abort,
    Ack,
    Auth,
    AuthOk,
    BeginTransfer,
    Blocks,
    Challenge,
    Commit,
    Committed,
    Error,
    GetSnapshots,
    HaveFingerprints,
    Hello,
    MapEntries,
    Missing,
    Ping,
    Pong,
    Prune,
    Pruned,
    PruneSnapshots,
    Ready,
    SnapshotInfo,
    Snapshots,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


H = WIRE_FRAME_HEADER_BYTES  # 48


def wire(parts) -> bytes:
    return b"".join(bytes(p) for p in parts)


# --- frames --------------------------------------------------------------------------


def test_header_layout_is_as_documented():
    buf = wire(frames.encode_frame(6, [b"\x01" * 8], req_id=7))
    assert len(buf) == WIRE_FRAME_HEADER_BYTES + 8
    magic, ver, typ, flags, length, raw, rid, ck, tag = struct.unpack_from(
        "<4sBBHIIQQ16s", buf)
    assert (magic, ver, typ, flags, length, raw, rid) == (b"NXRP", WIRE_PROTOCOL_VERSION, 6, 0,
                                                          8, 8, 7)
    assert ck == xxhash.xxh3_64_intdigest(buf[:24], seed=xxhash.xxh3_64_intdigest(buf[H:]))
    assert tag == bytes(16)  # unkeyed (handshake) frame


def test_empty_payload_checksum_seed_is_zero():
    buf = wire(frames.encode_frame(4, [b""]))
    assert struct.unpack_from("<Q", buf, 24)[0] == xxhash.xxh3_64_intdigest(buf[:24], seed=0)


@SETTINGS
@given(
    payload=st.binary(max_size=20_000),
    typ=st.integers(0, 255),
    req_id=st.integers(0, 2**64 - 1),
    compress=st.booleans(),
    repeat=st.integers(1, 8),
)
def test_frame_round_trip(payload, typ, req_id, compress, repeat):
    payload = payload * repeat  # repeated content is compressible
    buf = wire(
        frames.encode_frame(typ, [payload[:7], payload[7:]], req_id=req_id, compress=compress)
    )
    f = frames.decode_frame(buf)
    assert (f.type, f.req_id, bytes(f.payload), f.wire_bytes) == (typ, req_id, payload, len(buf))
    h = frames.parse_header(buf[:H])
    if h.compressed:
        assert compress and h.length <= len(payload) - len(payload) // 8


def test_compression_only_when_it_saves_an_eighth():
    text = b"the quick brown fox jumps over the lazy dog " * 2000
    h = frames.parse_header(wire(frames.encode_frame(14, [text], compress=True))[:H])
    assert h.compressed and h.length <= len(text) * 7 // 8 and h.raw_length == len(text)
    rnd = os.urandom(300_000)
    h = frames.parse_header(wire(frames.encode_frame(14, [rnd], compress=True))[:H])
    assert not h.compressed and h.length == len(rnd)
    assert frames.maybe_compress(rnd[:8192]) is None
    small = b"a" * 100  # below WIRE_COMPRESS_MIN_PAYLOAD
    assert not frames.parse_header(
        wire(frames.encode_frame(14, [small], compress=True))[:H]
    ).compressed


@pytest.mark.parametrize("compressible", [False, True])
def test_every_flipped_byte_is_detected(compressible):
    payload = (b"abcdefgh" * 700) if compressible else os.urandom(5000)
    buf = wire(frames.encode_frame(14, [payload], req_id=3, compress=True))
    assert frames.parse_header(buf[:H]).compressed == compressible
    for i in range(len(buf)):
        bad = bytearray(buf)
        bad[i] ^= 0xFF
        with pytest.raises(ProtocolError):
            frames.decode_frame(bytes(bad))


def test_flipped_payload_byte_is_frame_corruption():
    buf = bytearray(wire(frames.encode_frame(9, [b"x" * 100])))
    buf[50] ^= 1
    with pytest.raises(FrameCorruption) as ei:
        frames.decode_frame(bytes(buf))
    assert isinstance(ei.value, Corruption) and "checksum" in str(ei.value)


def test_every_truncation_is_detected():
    buf = wire(frames.encode_frame(9, [os.urandom(300)]))
    for n in range(len(buf)):
        with pytest.raises(ConnectionClosed, match="truncated"):
            frames.decode_frame(buf[:n])


# --- keyed frames (the MAC) -------------------------------------------------------------

KEY, OTHER_KEY = b"k" * 32, b"K" * 32


def keyed(msg_type: int, payload: bytes, key: frames.FrameKey, **kw) -> bytes:
    f = frames.encode_frame(msg_type, [payload], **kw)
    frames.seal(f, key)
    return wire(f)


def test_tag_is_truncated_hmac_over_counter_header_payload():
    import hashlib
    import hmac

    k = frames.FrameKey(KEY)
    bufs = [keyed(6, b"p%d" % i, k, req_id=i) for i in range(3)]
    for n, buf in enumerate(bufs):
        expect = hmac.new(KEY, struct.pack("<Q", n) + buf[:32] + buf[H:], hashlib.sha256)
        assert buf[32:H] == expect.digest()[:16]
    r = frames.FrameKey(KEY)
    assert [bytes(frames.decode_frame(b, key=r).payload) for b in bufs] == [b"p0", b"p1", b"p2"]


@pytest.mark.parametrize("compressible", [False, True])
def test_every_flipped_byte_of_a_keyed_frame_is_detected(compressible):
    payload = (b"abcdefgh" * 700) if compressible else os.urandom(5000)
    buf = keyed(14, payload, frames.FrameKey(KEY), req_id=3, compress=True)
    assert frames.parse_header(buf[:H]).compressed == compressible
    for i in range(len(buf)):
        bad = bytearray(buf)
        bad[i] ^= 0xFF
        with pytest.raises(ProtocolError):
            frames.decode_frame(bytes(bad), key=frames.FrameKey(KEY))


def _forge(buf: bytes, new_payload: bytes) -> bytes:
    """What a relay without the key can do: new payload, checksum recomputed, tag kept."""
    head = bytearray(buf[:H])
    struct.pack_into("<II", head, 8, len(new_payload), len(new_payload))
    ck = xxhash.xxh3_64_intdigest(bytes(head[:24]), seed=xxhash.xxh3_64_intdigest(new_payload))
    struct.pack_into("<Q", head, 24, ck)
    return bytes(head) + new_payload


def test_forged_reordered_replayed_reflected_frames_fail_authentication():
    send = frames.FrameKey(KEY)
    f0, f1 = keyed(15, b"a" * 40, send, req_id=1), keyed(15, b"b" * 40, send, req_id=2)
    forged = _forge(f0, b"c" * 40)
    # the forgery passes the unkeyed checks (what version 1 relied on) ...
    h = frames.parse_header(forged[:H])
    frames.open_payload(forged[:H], h._replace(tag=frames.NO_TAG), forged[H:])
    cases = {
        "forged": [forged],
        "reordered": [f1, f0],
        "replayed": [f0, f0],
        "dropped": [f1],
        "reflected": [keyed(15, b"a" * 40, frames.FrameKey(OTHER_KEY), req_id=1)],
        "unkeyed": [wire(frames.encode_frame(15, [b"a" * 40], req_id=1))],
    }
    for name, seq in cases.items():
        recv = frames.FrameKey(KEY)
        with pytest.raises(FrameCorruption, match="authentication failed") as ei:
            for b in seq:
                frames.decode_frame(b, key=recv)
        assert isinstance(ei.value, Corruption), name


def test_handshake_limits_before_keys():
    big = _header(WIRE_HANDSHAKE_MAX_PAYLOAD + 1, WIRE_HANDSHAKE_MAX_PAYLOAD + 1)
    with pytest.raises(ProtocolError, match="before authentication"):
        frames.parse_header(big, keyed=False)
    assert frames.parse_header(big).length  # fine once keyed
    bomb = _header(65_000, WIRE_MAX_FRAME_PAYLOAD, flags=1)
    with pytest.raises(ProtocolError, match="compressed frame before authentication"):
        frames.parse_header(bomb, keyed=False)
    ok = _header(WIRE_HANDSHAKE_MAX_PAYLOAD, WIRE_HANDSHAKE_MAX_PAYLOAD)
    assert frames.parse_header(ok, keyed=False).length == WIRE_HANDSHAKE_MAX_PAYLOAD
    tagged = keyed(6, b"x" * 8, frames.FrameKey(KEY))
    with pytest.raises(ProtocolError, match="tag before keys"):
        frames.decode_frame(tagged)


def test_version_1_frame_is_refused():
    v1 = struct.pack("<4sBBHIIQ", b"NXRP", 1, 1, 0, 70, 70, 0) + bytes(8) + os.urandom(70)
    with pytest.raises(VersionMismatch, match=f"2..{WIRE_PROTOCOL_VERSION}"):
        frames.decode_frame(v1)


def test_bad_magic_version_flags():
    buf = bytearray(wire(frames.encode_frame(9, [b"hi"])))
    with pytest.raises(ProtocolError, match="magic"):
        frames.parse_header(b"XXXX" + bytes(buf[4:H]))
    v = bytearray(buf[:H])
    v[4] = 9
    with pytest.raises(VersionMismatch):
        frames.parse_header(bytes(v))
    f = bytearray(buf[:H])
    f[6] = 0x80
    with pytest.raises(ProtocolError, match="flags"):
        frames.parse_header(bytes(f))


def _header(length: int, raw: int, flags: int = 0) -> bytes:
    head = struct.pack("<4sBBHIIQ", b"NXRP", WIRE_PROTOCOL_VERSION, 9, flags, length, raw, 0)
    return head + bytes(8 + 16)


def test_oversize_rejected_before_reading_payload():
    with pytest.raises(ProtocolError, match="exceeds"):
        frames.parse_header(_header(WIRE_MAX_FRAME_PAYLOAD + 1, WIRE_MAX_FRAME_PAYLOAD + 1))
    with pytest.raises(ProtocolError, match="exceeds"):  # decompression bomb
        frames.parse_header(_header(10, 0xFFFFFFFF, flags=1))
    with pytest.raises(ProtocolError, match="lengths"):
        frames.parse_header(_header(10, 11))

    async def body():
        r = asyncio.StreamReader()
        r.feed_data(_header(0xFFFFFFFF, 0xFFFFFFFF))  # no payload follows: must not wait
        with pytest.raises(ProtocolError, match="exceeds"):
            await asyncio.wait_for(frames.read_frame(r), 1.0)

    asyncio.run(body())
    assert frames.parse_header(_header(WIRE_MAX_FRAME_PAYLOAD, WIRE_MAX_FRAME_PAYLOAD)).length


def test_encoder_refuses_oversize_payload():
    with pytest.raises(InvalidArgument):
        frames.encode_frame(14, [bytes(WIRE_MAX_FRAME_PAYLOAD + 1)])
    with pytest.raises(InvalidArgument):
        messages.encode(Blocks(65536, np.zeros((300, 16), np.uint8), bytes(300 * 65536)))


def test_read_frame_from_stream():
    async def body():
        r = asyncio.StreamReader()
        a = wire(frames.encode_frame(6, [b"one"], req_id=1))
        b = wire(frames.encode_frame(7, [b"two" * 3000], req_id=2, compress=True))
        r.feed_data(a + b[:10])
        f1 = await frames.read_frame(r)
        r.feed_data(b[10:])
        r.feed_eof()
        f2 = await frames.read_frame(r)
        assert (bytes(f1.payload), bytes(f2.payload)) == (b"one", b"two" * 3000)
        with pytest.raises(ConnectionClosed, match="closed by peer"):
            await frames.read_frame(r)
        r2 = asyncio.StreamReader()
        r2.feed_data(a[: H + 2])
        r2.feed_eof()
        with pytest.raises(ConnectionClosed, match="payload"):
            await frames.read_frame(r2)

    asyncio.run(body())


@SETTINGS
@given(st.binary(max_size=400))
def test_garbage_never_crashes_the_frame_decoder(data):
    try:
        f = frames.decode_frame(data)
    except ProtocolError:
        return
    messages_decode_only_protocol_errors(f)


@SETTINGS
@given(st.binary(max_size=400), st.sampled_from(sorted(messages.MESSAGE_CLASSES) + [0, 99, 255]))
def test_garbage_payload_never_crashes_the_message_decoder(payload, typ):
    messages_decode_only_protocol_errors(frames.Frame(1, typ, 0, payload, 0))


@SETTINGS
@given(st.data())
def test_valid_header_random_payload(data):
    typ = data.draw(st.sampled_from(sorted(messages.MESSAGE_CLASSES)))
    payload = data.draw(st.binary(max_size=200))
    buf = wire(frames.encode_frame(typ, [payload], compress=data.draw(st.booleans())))
    messages_decode_only_protocol_errors(frames.decode_frame(buf))


def messages_decode_only_protocol_errors(frame) -> None:
    with contextlib.suppress(ProtocolError):
        messages.decode(frame)


# --- messages ------------------------------------------------------------------------

names = st.text(min_size=1, max_size=40)
u8, u16, u32, u64 = (st.integers(0, 2**b - 1) for b in (8, 16, 32, 64))
nonce = st.binary(min_size=32, max_size=32)
tid = st.binary(min_size=16, max_size=16)
times = st.floats(allow_nan=False, allow_infinity=True)


@st.composite
def fingerprints(draw, n=None):
    n = draw(st.integers(0, 70)) if n is None else n
    return np.frombuffer(draw(st.binary(min_size=16 * n, max_size=16 * n)), np.uint8).reshape(n, 16)


@st.composite
def blocks(draw):
    n = draw(st.integers(0, 6))
    bs = draw(st.sampled_from([1, 512, 4096]))
    fill = draw(st.sampled_from(["zero", "random", "text"]))
    if fill == "random":
        data = os.urandom(n * bs)
    elif fill == "text":
        data = (b"lorem ipsum dolor sit amet " * (n * bs // 27 + 1))[: n * bs]
    else:
        data = bytes(n * bs)
    return Blocks(bs, draw(fingerprints(n)), data, req_id=draw(u64))


@st.composite
def map_entries(draw):
    n = draw(st.integers(0, 70))
    idx = np.array(draw(st.lists(u64, min_size=n, max_size=n)), dtype=np.uint64)
    return MapEntries(idx, draw(fingerprints(n)), req_id=draw(u64))


any_message = st.one_of(
    st.builds(Hello, u8, u8, names, names, nonce, req_id=u64),
    st.builds(Challenge, u8, names, names, nonce, nonce),
    st.builds(Auth, nonce),
    st.builds(AuthOk),
    st.builds(Error, u16, st.text(max_size=200), req_id=u64),
    st.builds(Ping, u64, req_id=u64),
    st.builds(Pong, u64, req_id=u64),
    st.builds(GetSnapshots, names, names, names, req_id=u64),
    st.builds(
        Snapshots,
        st.lists(st.builds(SnapshotInfo, names, times, u64, u32), max_size=5).map(tuple),
        req_id=u64,
    ),
    st.builds(
        BeginTransfer,
        tid,
        names,
        names,
        names,
        names,
        times,
        u64,
        u32,
        st.none() | names,
        req_id=u64,
    ),
    st.builds(Ready, u32, u32),
    st.builds(HaveFingerprints, fingerprints(), req_id=u64),
    st.builds(Missing, st.lists(st.booleans(), max_size=200).map(np.array), req_id=u64),
    blocks(),
    map_entries(),
    st.builds(Ack, u64, u32),
    st.builds(Commit, tid, u64, req_id=u64),
    st.builds(Committed, tid, names, req_id=u64),
    st.builds(Abort, tid, st.text(max_size=50)),
    st.builds(Prune, names, u32, req_id=u64),
    st.builds(PruneSnapshots, names, st.lists(names, max_size=5).map(tuple), req_id=u64),
    st.builds(Pruned, st.lists(names, max_size=5).map(tuple), req_id=u64),
)


@SETTINGS
@given(any_message)
def test_message_round_trip(msg):
    got = messages.decode(frames.decode_frame(wire(messages.encode(msg))))
    assert type(got) is type(msg)
    assert got == msg and got.req_id == msg.req_id


def test_every_message_type_is_covered_and_unique():
    assert sorted(messages.MESSAGE_CLASSES) == [int(t) for t in messages.MessageType]


def test_prune_snapshots_layout():
    msg = PruneSnapshots("v", ("a", "bc"), req_id=3)
    frame = wire(messages.encode(msg))
    assert frame[4:6] == bytes([WIRE_PROTOCOL_VERSION, 47])
    assert frame[H:] == b"\x01\x00v" + struct.pack("<I", 2) + b"\x01\x00a\x02\x00bc"
    with pytest.raises(ProtocolError, match="PRUNE_SNAPSHOTS"):  # one name short
        messages.decode(frames.decode_frame(wire(frames.encode_frame(47, [frame[H:-4]]))))


def test_missing_bitmap_is_lsb_first():
    m = Missing(np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1], bool))
    payload = wire(messages.encode(m))[H:]
    assert payload == struct.pack("<I", 10) + bytes([0b00000001, 0b00000010])


def test_big_batches_are_views_not_copies():
    n = WIRE_MAX_BATCH
    fps = np.frombuffer(os.urandom(16 * n), np.uint8).reshape(n, 16)
    m = MapEntries(np.arange(n, dtype=np.uint64) * 7, fps)
    got = messages.decode(frames.decode_frame(wire(messages.encode(m))))
    assert got == m and not got.fingerprints.flags.writeable and got.indices.dtype == np.uint64
    b = Blocks(4096, fps[:64], os.urandom(64 * 4096))
    gb = messages.decode(frames.decode_frame(wire(messages.encode(b))))
    assert gb.data.shape == (64, 4096) and gb.data.base is not None


def test_malformed_messages_are_refused_locally():
    with pytest.raises(InvalidArgument):
        Blocks(4096, np.zeros((2, 16), np.uint8), bytes(4096))
    with pytest.raises(InvalidArgument):
        MapEntries(np.arange(3), np.zeros((2, 16), np.uint8))
    with pytest.raises(InvalidArgument):
        HaveFingerprints(np.zeros((2, 15), np.uint8))
    with pytest.raises(InvalidArgument):
        messages.encode(Hello(1, 300, "c", "s", bytes(32)))
    with pytest.raises(InvalidArgument):
        messages.encode(Hello(1, 1, "c", "s", bytes(31)))
    with pytest.raises(InvalidArgument):
        messages.encode(HaveFingerprints(np.zeros((WIRE_MAX_BATCH + 1, 16), np.uint8)))


def test_oversize_batch_count_from_peer_is_a_protocol_error():
    payload = struct.pack("<I", WIRE_MAX_BATCH + 1)
    with pytest.raises(ProtocolError, match="exceeds"):
        messages.decode(frames.Frame(1, int(messages.MessageType.HAVE_FINGERPRINTS), 0, payload, 0))
    trailing = wire(messages.encode(Ping(5)))[H:] + b"x"
    with pytest.raises(ProtocolError, match="unexpected bytes"):
        messages.decode(frames.Frame(1, int(messages.MessageType.PING), 0, trailing, 0))


def test_error_maps_to_exceptions_both_ways():
    from nxstore.errors import AuthenticationError, NotFound, NxError

    for exc in [
        AuthenticationError("a"),
        VersionMismatch("v"),
        NotFound("n"),
        FrameCorruption("f"),
    ]:
        back = Error.from_exception(exc, req_id=4).to_exception()
        assert type(back) is type(exc) or (
            isinstance(exc, FrameCorruption) and isinstance(back, Corruption)
        )
    e = Error.from_exception(KeyError("boom"))
    assert e.code == messages.ErrorCode.INTERNAL and type(e.to_exception()) is NxError
