"""STORED_BLOCKS (protocol version 4): extent records cross the wire as they are stored.

The store side (ExtentStore.read_stored / put_stored), the message codec with hostile
payloads, and whole replications between an in-process target and a source: round trip,
a version 3 peer (BLOCKS as before), a damaged record at the source.
"""

from __future__ import annotations

import asyncio
import functools
import os
import struct

import lz4.block
import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from test_e2e import SECRET, InProcessDaemon, image, source

import nxstore
from nxstore.constants import WIRE_MIN_PROTOCOL_VERSION, WIRE_STORED_BLOCKS_VERSION
from nxstore.errors import Corruption, InvalidArgument, ProtocolError
from nxstore.replication import auth
from nxstore.replication.frames import decode_frame, encode_frame
from nxstore.replication.messages import MessageType, StoredBlocks, decode, encode
from nxstore.replication.sites import get_site
from nxstore.replication.source import open_session
from nxstore.replication.transport import stream, tcp
from nxstore.store.extent_group import group_file_name
from nxstore.store.extent_store import ExtentCorruption, ExtentStore, StoredRecords

BS = 4096


def compressible(i: int) -> bytes:
    return (f"line {i} of a text-like block; " * 200).encode()[:BS]


def incompressible(rng: np.random.Generator) -> bytes:
    return rng.integers(0, 256, BS, dtype=np.uint8).tobytes()


def mixed_blocks(n: int, seed: int = 1) -> np.ndarray:
    """n distinct blocks, every other one compressible."""
    rng = np.random.default_rng(seed)
    blocks = [compressible(i) if i % 2 else incompressible(rng) for i in range(n)]
    return np.frombuffer(b"".join(blocks), np.uint8).copy()


@pytest.fixture
def store(tmp_path):
    s = ExtentStore.open(str(tmp_path / "src"), BS, create=True)
    yield s
    s.close()


@pytest.fixture
def target(tmp_path):
    s = ExtentStore.open(str(tmp_path / "dst"), BS, create=True)
    yield s
    s.close()


# -- the store ---------------------------------------------------------------------------------
def test_read_stored_then_put_stored_keeps_records_as_they_are(store, target):
    data = mixed_blocks(16)
    ids = store.put_blocks(data)
    # a file-order read, and one in another order with a repeat (repacked in the asked order)
    for order in (np.arange(16), np.array([5, 3, 3, 15, 0, 8])):
        rec = store.read_stored(ids[order])
        assert rec.compressed.tolist() == [i % 2 == 1 for i in order.tolist()]
        assert rec.offsets.tolist() == np.concatenate([[0], np.cumsum(rec.lengths)[:-1]]).tolist()
        for k, i in enumerate(order.tolist()):
            p = rec.payload[rec.offsets[k]: rec.offsets[k] + rec.lengths[k]].tobytes()
            raw = lz4.block.decompress(p, uncompressed_size=BS) if rec.compressed[k] else p
            assert raw == data[i * BS:(i + 1) * BS].tobytes()
            assert rec.fingerprints[k].tobytes() == xxhash.xxh3_128_digest(raw)
    rec = store.read_stored(ids)
    got = target.put_stored(rec)
    out = np.empty(data.size, np.uint8)
    target.read_blocks(got, out)
    assert np.array_equal(out, data)
    st, tt = store.stats(), target.stats()
    assert tt["compressed_extents"] == st["compressed_extents"] == 8
    assert tt["stored_bytes"] == st["stored_bytes"] < data.size  # nothing recompressed
    assert target.put_stored(rec).tolist() == got.tolist()  # dedup by fingerprint
    assert target.stats()["extents"] == 16


def test_put_stored_into_an_uncompressed_store_decompresses(store, target):
    data = mixed_blocks(6)
    got = target.put_stored(store.read_stored(store.put_blocks(data)), compress=False)
    assert target.stats()["compressed_extents"] == 0
    out = np.empty(data.size, np.uint8)
    target.read_blocks(got, out)
    assert np.array_equal(out, data)


def test_put_stored_gives_zero_blocks_id_0(target):
    zero_fp = np.frombuffer(xxhash.xxh3_128_digest(bytes(BS)), np.uint8)
    payload = np.frombuffer(lz4.block.compress(bytes(BS), store_size=False), np.uint8).copy()
    rec = StoredRecords(np.array([True]), np.array([payload.size]), np.array([0]), payload,
                        zero_fp.reshape(1, 16))
    assert target.put_stored(rec).tolist() == [0]
    assert target.stats()["extents"] == 0


def _damaged(rec: StoredRecords, how: str) -> StoredRecords:
    payload, fps = rec.payload.copy(), rec.fingerprints.copy()
    if how == "fingerprint":
        fps[3, 0] ^= 1
    elif how == "raw byte":
        payload[rec.offsets[2] + 100] ^= 1
    else:  # "lz4": a compressed payload cut short does not decode
        payload[rec.offsets[1]: rec.offsets[1] + rec.lengths[1]] = 0xFF
    return StoredRecords(rec.compressed, rec.lengths, rec.offsets, payload, fps)


@pytest.mark.parametrize("how", ["fingerprint", "raw byte", "lz4"])
def test_put_stored_refuses_a_bad_record_and_stores_nothing(store, target, how):
    rec = store.read_stored(store.put_blocks(mixed_blocks(8)))
    with pytest.raises(Corruption, match="stored record [123] of 8 .*nothing of the batch"):
        target.put_stored(_damaged(rec, how))
    assert target.stats()["extents"] == 0 and target.stats()["group_bytes"] == 0
    assert len(target.lookup(rec.fingerprints).nonzero()[0]) == 0


def test_put_stored_refuses_inconsistent_records(store, target):
    rec = store.read_stored(store.put_blocks(mixed_blocks(4)))
    past = rec.offsets.copy()
    past[3] = rec.payload.size
    short = rec.lengths.copy()
    short[0] = BS - 1  # a raw record that is not a whole block
    for bad in (StoredRecords(rec.compressed, rec.lengths, past, rec.payload, rec.fingerprints),
                StoredRecords(rec.compressed, short, rec.offsets, rec.payload, rec.fingerprints)):
        with pytest.raises(InvalidArgument):
            target.put_stored(bad)
    assert target.stats()["extents"] == 0


def test_read_stored_checks_headers_not_payloads(store):
    ids = store.put_blocks(mixed_blocks(4))
    g, o, _ = store.locations(ids)
    path = os.path.join(store.directory, group_file_name(int(g[2])))
    with open(path, "r+b") as f:  # a payload byte: read_stored does not look
        f.seek(int(o[2]) + 64 + 10)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    assert store.read_stored(ids).lengths.size == 4
    with open(path, "r+b") as f:  # the extent id in the header: caught
        f.seek(int(o[1]) + 8)
        f.write(struct.pack("<Q", 999))
    with pytest.raises(ExtentCorruption, match="bad record header") as err:
        store.read_stored(ids)
    assert err.value.extent_id == int(ids[1]) and err.value.batch_index == 1
    with pytest.raises(InvalidArgument):
        store.read_stored(np.array([0], np.uint64))


# -- the message -------------------------------------------------------------------------------
def _message(n: int = 4) -> StoredBlocks:
    rng = np.random.default_rng(3)
    blocks = [compressible(i) if i % 2 else incompressible(rng) for i in range(n)]
    payloads = [lz4.block.compress(b, store_size=False) if i % 2 else b
                for i, b in enumerate(blocks)]
    return StoredBlocks(BS, np.frombuffer(b"".join(xxhash.xxh3_128_digest(b) for b in blocks),
                                          np.uint8).reshape(n, 16),
                        np.array([i % 2 for i in range(n)], np.uint8),
                        np.array([len(p) for p in payloads], np.uint32),
                        np.frombuffer(b"".join(payloads), np.uint8), req_id=9)


def _frame(payload: bytes) -> bytes:
    return b"".join(bytes(p) for p in encode_frame(int(MessageType.STORED_BLOCKS), [payload]))


def test_stored_blocks_round_trip_is_never_frame_compressed():
    msg = _message()
    frame = b"".join(bytes(p) for p in encode(msg))
    assert frame[6:8] == b"\0\0"  # no frame-level lz4: the payloads are already compressed
    assert decode(decode_frame(frame)) == msg


def _hostile(edit: str) -> bytes:
    msg = _message()
    n = 4
    head = struct.pack("<II", n, BS) + msg.fingerprints.tobytes()
    flags, lengths, data = msg.flags.copy(), msg.lengths.copy(), msg.payload.tobytes()
    if edit == "length past the payload":
        lengths[3] += 1
    elif edit == "length over the block size":
        lengths[1] = BS + 1
    elif edit == "short raw block":
        lengths[0] = BS - 1
        data = data[1:]
    elif edit == "zero length":
        lengths[1], data = 0, data[: lengths[0]] + data[lengths[0] + lengths[1]:]
    elif edit == "unknown flag":
        flags[2] = 0x80
    elif edit == "trailing bytes":
        data += b"x"
    elif edit == "truncated lengths":
        return head + flags.tobytes() + lengths.tobytes()[:7]
    elif edit == "count over the batch limit":
        return struct.pack("<II", 1 << 20, BS)
    return head + flags.tobytes() + lengths.tobytes() + data


@pytest.mark.parametrize("edit", [
    "length past the payload", "length over the block size", "short raw block", "zero length",
    "unknown flag", "trailing bytes", "truncated lengths", "count over the batch limit"])
def test_hostile_stored_blocks_payloads_are_protocol_errors(edit):
    with pytest.raises(ProtocolError, match="STORED_BLOCKS"):
        decode(decode_frame(_frame(_hostile(edit))))


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, 200), flips=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)),
                                               max_size=4))
def test_mangled_stored_blocks_payloads_decode_or_are_protocol_errors(cut, flips):
    """Any truncation or byte change of a valid payload decodes to a consistent message or
    raises ProtocolError, nothing else."""
    good = _hostile("none")
    data = bytearray(good[: len(good) - cut])
    for pos, x in flips:
        if pos < len(data):
            data[pos] ^= x
    try:
        msg = decode(decode_frame(_frame(bytes(data))))
    except ProtocolError:
        return
    assert isinstance(msg, StoredBlocks)
    assert int(msg.lengths.sum()) == msg.payload.size and len(msg.flags) == len(msg.fingerprints)
    assert all((msg.lengths[msg.flags == 0] == msg.block_size).tolist())


# -- whole replications ------------------------------------------------------------------------
@pytest.fixture
def sent_types(monkeypatch):
    """Names of the messages sent by this process's transports, in order."""
    seen: list[str] = []
    send = stream.StreamTransport.send

    async def spy(self, msg):
        seen.append(type(msg).__name__)
        return await send(self, msg)

    monkeypatch.setattr(stream.StreamTransport, "send", spy)
    return seen


@pytest.fixture
def pair(tmp_path):
    """(source cluster with site "tokyo", target cluster served in this process)."""
    tokyo = nxstore.Cluster.create(str(tmp_path / "tokyo"), block_size=BS, background=False)
    daemon = InProcessDaemon(tokyo)
    c = source(tmp_path)
    c.add_remote_site("tokyo", daemon.address, SECRET)
    try:
        yield c, tokyo
    finally:
        c.close()
        daemon.close()
        tokyo.close()


def _mixed_vdisk(c: nxstore.Cluster, n: int = 64):
    """vDisk "db": compressible, incompressible and zero blocks; flushed to the store."""
    vd = c.create_vdisk("db", (n + 8) * BS)
    data = mixed_blocks(n).reshape(n, BS)
    data[::5] = 0
    vd.write(0, data.tobytes())
    vd.write((n + 2) * BS, compressible(999))
    vd.flush()
    c.drain()
    return vd


def test_seed_and_incremental_ship_stored_records(pair, sent_types):
    c, tokyo = pair
    vd = _mixed_vdisk(c)
    s1 = vd.snapshot("s1")
    r = c.replicate(s1, "tokyo")
    assert r.blocks_sent > 0 and "StoredBlocks" in sent_types and "Blocks" not in sent_types
    vd.write(3 * BS, compressible(7777) + os.urandom(BS))
    s2 = vd.snapshot("s2")
    assert c.replicate(s2, "tokyo").blocks_sent == 2
    replica = {s.name: image(s) for s in tokyo.vdisk("paris:db").snapshots()}
    assert replica == {"s1": image(s1), "s2": image(s2)}
    # compressed records arrived compressed and were stored as they came
    src, dst = c._ctx.store.stats(), tokyo._ctx.store.stats()
    assert dst["compressed_extents"] == src["compressed_extents"] > 0
    assert dst["stored_bytes"] == src["stored_bytes"]
    assert tokyo.scrub() == []


@pytest.mark.parametrize("old", ["source", "target"])
def test_a_version_3_peer_still_gets_blocks(tmp_path, monkeypatch, sent_types, old):
    """A session negotiated at version 3 (either side an older build) ships BLOCKS."""
    three = (WIRE_MIN_PROTOCOL_VERSION, WIRE_STORED_BLOCKS_VERSION - 1)
    if old == "source":
        monkeypatch.setattr(tcp, "client_handshake",
                            functools.partial(auth.client_handshake, versions=three))
    else:
        monkeypatch.setattr(tcp, "server_handshake",
                            functools.partial(auth.server_handshake, versions=three))
    tokyo = nxstore.Cluster.create(str(tmp_path / "tokyo"), block_size=BS, background=False)
    daemon = InProcessDaemon(tokyo)
    try:
        with source(tmp_path) as c:
            c.add_remote_site("tokyo", daemon.address, SECRET)
            s1 = _mixed_vdisk(c).snapshot("s1")
            c.replicate(s1, "tokyo")
            assert "Blocks" in sent_types and "StoredBlocks" not in sent_types
            assert image(tokyo.vdisk("paris:db").snapshots()[0]) == image(s1)

            # A version 3 session that sends STORED_BLOCKS anyway: refused.
            async def send_anyway():
                s = await open_session(c, get_site(c.ctx.catalog, "tokyo"))
                try:
                    assert s.t.version == WIRE_STORED_BLOCKS_VERSION - 1
                    await s.post(lambda r: StoredBlocks(BS, np.zeros((0, 16), np.uint8), [], [],
                                                        b"", req_id=r))
                    await s.request(lambda r: StoredBlocks(BS, np.zeros((0, 16), np.uint8),
                                                           [], [], b"", req_id=r), StoredBlocks)
                finally:
                    await s.close()

            with pytest.raises(ProtocolError, match="STORED_BLOCKS needs protocol version 4"):
                asyncio.run(send_anyway())
    finally:
        daemon.close()
        tokyo.close()


@pytest.mark.parametrize("kind", ["raw", "lz4"])
def test_a_damaged_source_record_is_named_and_nothing_is_applied(pair, kind):
    c, tokyo = pair
    vd = _mixed_vdisk(c)
    snap = vd.snapshot("s1")
    store = c._ctx.store
    ids = np.arange(1, store.stats()["next_extent_id"], dtype=np.uint64)
    stored = store.read_stored(ids)
    victim = int(ids[np.flatnonzero(stored.compressed == (kind == "lz4"))[3]])
    g, o, size = store.locations(np.array([victim], np.uint64))
    with open(os.path.join(store.directory, group_file_name(int(g[0]))), "r+b") as f:
        f.seek(int(o[0]) + 64 + int(size[0] - 64) // 2)  # a payload byte
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(ExtentCorruption, match="the replication target refused it") as err:
        c.replicate(snap, "tokyo")
    assert err.value.extent_id == victim
    assert f"extent {victim} (" in str(err.value) and group_file_name(int(g[0])) in str(err.value)
    assert tokyo.replicas() == []
    assert tokyo.scrub() == []
