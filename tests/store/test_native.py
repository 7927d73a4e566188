"""nxstore.native agrees bit for bit with the slow references in native_reference."""

from __future__ import annotations

import errno
import os
import struct
import sys
import threading
import time

import native_reference as ref
import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from nxstore.errors import Corruption, FormatError, InvalidArgument
from nxstore.store import native
from nxstore.store.extent_group import HEADER_DTYPE, fill_headers

U64 = np.uint64
MAX_U64 = 2**64 - 1


# --- fingerprints ---------------------------------------------------------------


@st.composite
def block_buffers(draw: st.DrawFn) -> tuple[bytes, int]:
    bs = draw(st.integers(1, 300))
    blocks = draw(
        st.lists(
            st.one_of(
                st.just(bytes(bs)),
                st.binary(min_size=bs, max_size=bs),
                # zero block with one nonzero byte anywhere (tail words too)
                st.integers(0, bs - 1).map(lambda i: bytes(i) + b"\x01" + bytes(bs - 1 - i)),
            ),
            max_size=12,
        )
    )
    return b"".join(blocks), bs


@given(block_buffers(), st.integers(0, 7))
def test_fingerprints_match_reference(case: tuple[bytes, int], misalign: int) -> None:
    data, bs = case
    backing = bytearray(misalign) + data
    view = memoryview(backing)[misalign:]
    fps, zero = native.fingerprint_blocks(view, bs)
    want_fps, want_zero = ref.fingerprint_blocks(data, bs)
    assert fps.dtype == np.uint8 and fps.shape == (len(data) // bs, 16)
    assert zero.dtype == np.bool_
    assert np.array_equal(fps, want_fps) and np.array_equal(zero, want_zero)


@pytest.mark.parametrize("bs", [4096, 8192, 16384, 32768, 65536])
@pytest.mark.parametrize("misalign", [0, 1, 3])
def test_fingerprints_engine_block_sizes(bs: int, misalign: int) -> None:
    rng = np.random.default_rng(bs + misalign)
    arr = rng.integers(0, 256, size=bs * 4 + misalign, dtype=np.uint8)
    arr[misalign + bs : misalign + 2 * bs] = 0
    arr[misalign + 3 * bs - 1 : misalign + 3 * bs] = 0  # nonzero block ending in zero
    body = arr[misalign:]
    for buf in (body, body.tobytes(), bytearray(body.tobytes()), memoryview(body.tobytes())):
        fps, zero = native.fingerprint_blocks(buf, bs)
        for i in range(4):
            want = xxhash.xxh3_128(body[i * bs : (i + 1) * bs].tobytes()).digest()
            assert fps[i].tobytes() == want
        assert zero.tolist() == [False, True, False, False]


def test_fingerprints_accept_shapes_and_noncontiguous_arrays() -> None:
    arr = np.arange(8192 * 2, dtype=np.uint32).astype(np.uint8)
    want, _ = native.fingerprint_blocks(arr, 4096)
    got, _ = native.fingerprint_blocks(arr.reshape(4, 4096), 4096)
    assert np.array_equal(got, want)
    strided = np.repeat(arr, 2)[::2]  # not contiguous: copied
    assert not strided.flags.c_contiguous
    assert np.array_equal(native.fingerprint_blocks(strided, 4096)[0], want)


def test_fingerprints_empty() -> None:
    fps, zero = native.fingerprint_blocks(b"", 4096)
    assert fps.shape == (0, 16) and zero.shape == (0,)


@pytest.mark.parametrize(
    ("buf", "bs"),
    [
        (b"x" * 4097, 4096),
        (b"x" * 4096, 0),
        (b"x" * 4096, -4096),
        (b"x" * 4096, 4096.0),
        (b"x" * 4096, True),
        ("x" * 4096, 4096),
        ([0] * 4096, 4096),
        (np.zeros(1024, np.uint32), 4096),
        (memoryview(b"x" * 8192)[::2], 4096),
    ],
)
def test_fingerprints_reject_bad_input(buf: object, bs: object) -> None:
    with pytest.raises(InvalidArgument):
        native.fingerprint_blocks(buf, bs)  # type: ignore[arg-type]


# --- fingerprint index --------------------------------------------------------------

# Fingerprints whose two 8-byte halves xor to one of 4 values share their home
# slot at every capacity: long probe clusters, wrap-around, backward shifts.
_clustered = st.builds(
    lambda lo, k: struct.pack("<QQ", lo, lo ^ k),
    st.integers(0, MAX_U64),
    st.sampled_from([0, 1, 2**63, 12345]),
)
_fingerprint = st.one_of(st.binary(min_size=16, max_size=16), _clustered, st.just(bytes(16)))


def fps_array(fps: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(fps), np.uint8).reshape(-1, 16)


class IndexMachine(RuleBasedStateMachine):
    """FingerprintIndex against a dict under random batches, growth and reloads."""

    @initialize(pool=st.lists(_fingerprint, min_size=1, max_size=400, unique=True),
                capacity=st.sampled_from([0, 1, 20, 300]))  # fmt: skip
    def setup(self, pool: list[bytes], capacity: int) -> None:
        self.pool = pool
        self.ix = native.FingerprintIndex(capacity)
        self.model = ref.DictIndex()
        self.next_id = 1

    def batch(self, data: st.DataObject) -> list[bytes]:
        picks = data.draw(st.lists(st.integers(0, len(self.pool) - 1), max_size=120))
        return [self.pool[i] for i in picks]

    @rule(data=st.data())
    def lookup_or_insert(self, data: st.DataObject) -> None:
        fps = self.batch(data)
        ids, new, n_new = self.ix.lookup_or_insert(fps_array(fps), self.next_id)
        want_ids, want_new, want_n = self.model.lookup_or_insert(fps, self.next_id)
        assert ids.dtype == U64 and new.dtype == np.bool_
        assert ids.tolist() == want_ids and new.tolist() == want_new and n_new == want_n
        self.next_id += n_new

    @rule(data=st.data())
    def insert(self, data: st.DataObject) -> None:
        fps = self.batch(data)
        ids = data.draw(st.lists(st.integers(1, MAX_U64), min_size=len(fps), max_size=len(fps)))
        self.ix.insert(fps_array(fps), np.array(ids, dtype=U64))
        self.model.insert(fps, ids)

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        fps = self.batch(data)
        assert self.ix.remove(fps_array(fps)) == self.model.remove(fps)

    @rule(data=st.data())
    def lookup(self, data: st.DataObject) -> None:
        fps = self.batch(data)
        assert self.ix.lookup(fps_array(fps)).tolist() == self.model.lookup(fps)

    @rule()
    def reload(self) -> None:
        blob = self.ix.to_bytes()
        assert ref.parse_index_blob(blob) == self.model.d
        self.ix = native.FingerprintIndex.from_bytes(blob)
        assert self.ix.to_bytes() == blob

    @invariant()
    def same_contents(self) -> None:
        assert len(self.ix) == len(self.model.d)
        cap = self.ix.capacity()
        assert len(self.ix) * 10 <= cap * 7 and cap & (cap - 1) == 0
        fps, ids = self.ix.items()
        assert dict(zip(map(bytes, fps), ids.tolist(), strict=True)) == self.model.d


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip


def _filled(n: int, seed: int = 0) -> tuple[native.FingerprintIndex, np.ndarray]:
    fps = np.random.default_rng(seed).integers(0, 256, size=(n, 16), dtype=np.uint8)
    ix = native.FingerprintIndex()
    ix.lookup_or_insert(fps, 1)
    return ix, fps


def test_index_growth_keeps_everything() -> None:
    ix, fps = _filled(50_000)
    assert len(ix) == 50_000 and ix.capacity() == 2**17
    assert np.array_equal(ix.lookup(fps), np.arange(1, 50_001, dtype=U64))
    assert ix.memory_bytes() >= ix.capacity() * 24
    hinted = native.FingerprintIndex(50_000)
    cap = hinted.capacity()
    hinted.lookup_or_insert(fps, 1)
    assert hinted.capacity() == cap  # a capacity hint avoids growing


def test_index_duplicates_in_batch_resolve_to_first() -> None:
    a, b = bytes(range(16)), bytes(range(1, 17))
    ix = native.FingerprintIndex()
    ids, new, n_new = ix.lookup_or_insert([a, b, a, a, b], 7)
    assert ids.tolist() == [7, 8, 7, 7, 8] and new.tolist() == [1, 1, 0, 0, 0] and n_new == 2


def test_index_empty_batches_and_bytes_input() -> None:
    ix = native.FingerprintIndex()
    empty = np.empty((0, 16), np.uint8)
    assert ix.lookup(empty).shape == (0,)
    ids, new, n = ix.lookup_or_insert(empty, 1)
    assert ids.shape == new.shape == (0,) and n == 0
    ix.insert(empty, np.empty(0, U64))
    assert ix.remove(empty) == 0
    ix.insert(b"\x05" * 32, [3, 4])  # flat bytes, later duplicate wins
    assert ix.lookup(b"\x05" * 16).tolist() == [4] and len(ix) == 1
    fps, ids = native.FingerprintIndex().items()
    assert fps.shape == (0, 16) and ids.shape == (0,)


def test_index_rejects_bad_arguments() -> None:
    ix = native.FingerprintIndex()
    fp = np.zeros((1, 16), np.uint8)
    for bad in (np.zeros((2, 15), np.uint8), np.zeros((1, 16), np.int8), b"x" * 17):
        with pytest.raises(InvalidArgument):
            ix.lookup(bad)
    with pytest.raises(InvalidArgument):
        ix.insert(fp, [0])
    with pytest.raises(InvalidArgument):
        ix.insert(fp, [1, 2])
    with pytest.raises(InvalidArgument):
        ix.insert(fp, [-1])
    for next_id in (0, -5, MAX_U64):
        with pytest.raises(InvalidArgument):
            ix.lookup_or_insert(np.zeros((2, 16), np.uint8), next_id)
    with pytest.raises(InvalidArgument):
        native.FingerprintIndex(-1)
    assert len(ix) == 0
    assert ix.lookup_or_insert(fp, MAX_U64 - 1)[0].tolist() == [MAX_U64 - 1]


def test_index_from_bytes_detects_damage() -> None:
    ix, fps = _filled(40)
    blob = bytearray(ix.to_bytes())
    assert len(blob) == 48 + ix.capacity() * 24

    def fails(data: bytes | bytearray, exc: type[Exception]) -> None:
        with pytest.raises(exc):
            native.FingerprintIndex.from_bytes(data)

    fails(blob[:47], Corruption)
    fails(blob[:-1], Corruption)
    fails(b"NOTANIDX" + blob[8:], FormatError)
    for offset in (9, 20, 100, len(blob) - 1):  # header field, slot byte
        bad = bytearray(blob)
        bad[offset] ^= 0x40
        fails(bad, Corruption)
    bad = bytearray(blob)
    struct.pack_into("<I", bad, 8, 2)
    fails(ref.reseal_index_blob(bad), FormatError)  # newer version
    bad = bytearray(blob)
    struct.pack_into("<Q", bad, 24, 41)
    fails(ref.reseal_index_blob(bad), Corruption)  # count disagrees with slots
    bad = bytearray(blob)
    struct.pack_into("<Q", bad, 16, 32)
    fails(ref.reseal_index_blob(bad), Corruption)  # capacity disagrees with length
    # Valid checksums, broken table: an entry moved away from its probe path,
    # a duplicate key, and garbage in an empty slot.
    body = memoryview(blob)[48:].cast("B")
    slots = [bytes(body[i * 24 : (i + 1) * 24]) for i in range(ix.capacity())]
    used = [i for i, s in enumerate(slots) if s[16:] != bytes(8)]
    empty = [i for i, s in enumerate(slots) if s[16:] == bytes(8)]
    for mutate in ("move", "dup", "garbage"):
        s2 = list(slots)
        if mutate == "move":  # to the empty slot just before its home
            fp = s2[used[0]][:16]
            dest = (ref.slot_home(fp, ix.capacity()) - 1) % ix.capacity()
            while s2[dest][16:] != bytes(8):
                dest = (dest - 1) % ix.capacity()
            s2[dest], s2[used[0]] = s2[used[0]], bytes(24)
        elif mutate == "dup":
            s2[empty[0]] = s2[used[0]]
            s2[used[1]] = bytes(24)
        else:
            s2[empty[0]] = b"\x01" + bytes(23)
        bad = bytearray(blob[:48] + b"".join(s2))
        fails(ref.reseal_index_blob(bad), Corruption)
    again = native.FingerprintIndex.from_bytes(bytes(blob))
    assert np.array_equal(again.lookup(fps), ix.lookup(fps))


# --- block maps -------------------------------------------------------------------

_keys = st.one_of(st.integers(0, 200), st.integers(MAX_U64 - 50, MAX_U64))
_maps = st.dictionaries(_keys, st.integers(0, MAX_U64), max_size=60)


def arrays(m: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(m)
    return np.array(keys, dtype=U64), np.array([m[k] for k in keys], dtype=U64)


@given(_maps, _maps)
def test_map_merge_and_diff_match_reference(top: dict[int, int], bot: dict[int, int]) -> None:
    keys, vals = native.map_merge(*arrays(top), *arrays(bot))
    want_k, want_v = ref.map_merge(top, bot)
    assert keys.dtype == vals.dtype == U64
    assert keys.tolist() == want_k and vals.tolist() == want_v
    diff = native.map_diff(*arrays(top), *arrays(bot))
    assert diff.dtype == U64 and diff.tolist() == ref.map_diff(top, bot)


@given(_maps, st.lists(_keys, max_size=80), st.booleans())
def test_map_lookup_matches_reference(m: dict[int, int], query: list[int], srt: bool) -> None:
    if srt:
        query = sorted(query)
    vals, found = native.map_lookup(*arrays(m), np.array(query, dtype=U64))
    want_v, want_f = ref.map_lookup(m, query)
    assert vals.dtype == U64 and found.dtype == np.bool_
    assert vals.tolist() == want_v and found.tolist() == want_f


def test_map_large_sorted_lookup_gallops_correctly() -> None:
    keys = np.unique(np.random.default_rng(3).integers(0, 10**9, 200_000).astype(U64))
    vals = keys * U64(3)
    query = np.sort(np.random.default_rng(4).integers(0, 10**9, 50_000).astype(U64))
    got, found = native.map_lookup(keys, vals, query)
    pos = np.searchsorted(keys, query).clip(0, len(keys) - 1)
    hit = keys[pos] == query
    assert np.array_equal(found, hit) and np.array_equal(got, np.where(hit, query * U64(3), 0))


def test_map_empty_and_bad_inputs() -> None:
    e = np.empty(0, U64)
    assert native.map_merge(e, e, e, e)[0].shape == (0,)
    assert native.map_diff(e, e, e, e).shape == (0,)
    assert native.map_lookup(e, e, e)[0].shape == (0,)
    assert native.map_lookup([], [], [5])[1].tolist() == [False]
    assert native.map_merge([1, 2], [3, 4], [], [])[0].tolist() == [1, 2]
    with pytest.raises(InvalidArgument):
        native.map_merge([1, 2], [3], e, e)
    with pytest.raises(InvalidArgument):
        native.map_diff([-1], [3], e, e)
    with pytest.raises(InvalidArgument):
        native.map_lookup(e, e, [[1]])


@given(st.lists(_maps, max_size=4), st.integers(0, 260), st.integers(0, 70))
def test_map_fill_range_matches_reference(chain: list[dict[int, int]], lo: int, count: int) -> None:
    """A chain of maps, newest first, resolved over [lo, lo + count); lo near 2**64 too."""
    if lo > 230:
        lo = MAX_U64 + 1 - (lo - 230)  # ranges ending at the top of the key space
    count = min(count, MAX_U64 + 1 - lo)
    out, found = np.zeros(count, U64), np.zeros(count, bool)
    want_out, want_found = [0] * count, [False] * count
    for m in chain:
        got = native.map_fill_range(*arrays(m), lo, out, found)
        assert got == ref.map_fill_range(m, lo, want_out, want_found)
        assert out.tolist() == want_out and found.tolist() == want_found


def test_map_fill_range_rejects_bad_input() -> None:
    k, out, found = np.arange(3, dtype=U64), np.zeros(2, U64), np.zeros(2, bool)
    for args in ((k, k[:2], 0, out, found), (k, k, 0, out, found[:1]), (k, k, -1, out, found),
                 (k, k, 2**64, out, found), (k.astype(np.int64), k, 0, out, found),
                 (k, k, 0, out, found.view(np.uint8)), (k, k, 0, np.zeros(4, U64)[::2], found),
                 (list(k), k, 0, out, found)):  # fmt: skip
        with pytest.raises(InvalidArgument):
            native.map_fill_range(*args)  # type: ignore[arg-type]
    assert native.map_fill_range(k, k, 1, out, found) == 2 and out.tolist() == [1, 2]
    assert native.map_fill_range(k[:0], k[:0], 0, out, found) == 0


@given(st.integers(0, 12), st.sampled_from([1, 64, 4096]), st.data())
def test_verify_blocks_matches_reference(n: int, bs: int, data: st.DataObject) -> None:
    """Blocks checked against a table of their fingerprints, some rows damaged,
    some ids pointing at the wrong row or past the table."""
    blocks = np.frombuffer(data.draw(st.binary(min_size=n * bs, max_size=n * bs)), np.uint8)
    blocks = blocks.reshape(n, bs)
    rows = data.draw(st.integers(n, n + 3))
    table = np.frombuffer(data.draw(st.binary(min_size=16 * rows, max_size=16 * rows)), np.uint8)
    table = table.reshape(rows, 16).copy()
    ids = data.draw(st.permutations(range(rows)))[:n]
    for i, r in enumerate(ids):
        table[r] = np.frombuffer(xxhash.xxh3_128(blocks[i].tobytes()).digest(), np.uint8)
    for i in range(n):
        damage = data.draw(st.sampled_from(["none", "none", "fp", "id", "past"]))
        if damage == "fp":
            table[ids[i], data.draw(st.integers(0, 15))] ^= data.draw(st.integers(1, 255))
        elif damage == "id":
            ids[i] = data.draw(st.integers(0, rows - 1))
        elif damage == "past":
            ids[i] = data.draw(st.sampled_from([rows, MAX_U64]))
    got = native.verify_blocks(blocks, table, np.array(ids, U64))
    assert got == ref.verify_blocks(blocks, table, ids)


def test_verify_blocks_rejects_bad_input() -> None:
    blocks, table, ids = np.zeros((2, 64), np.uint8), np.zeros((4, 16), np.uint8), np.zeros(2, U64)
    for args in ((blocks.reshape(-1), table, ids), (blocks, table[:, :8].copy(), ids),
                 (blocks, table, ids[:1]), (blocks, table, ids.astype(np.int64)),
                 (blocks[:, ::2], table, ids), (blocks.tobytes(), table, ids)):  # fmt: skip
        with pytest.raises(InvalidArgument):
            native.verify_blocks(*args)  # type: ignore[arg-type]
    assert native.verify_blocks(blocks[:0], table, ids[:0]) == 0
    assert native.verify_blocks(blocks, table, ids) == 0  # zeros are no fingerprint of zeros


# --- header checksums ----------------------------------------------------------------


@given(st.integers(0, 40), st.integers(0, 130), st.data())
def test_checksum_rows_match_reference(n: int, width: int, data: st.DataObject) -> None:
    raw = data.draw(st.binary(min_size=n * width, max_size=n * width))
    rows = np.frombuffer(raw, np.uint8).reshape(n, width)
    nbytes = data.draw(st.integers(0, width))
    got = native.checksum_rows(rows, nbytes)
    assert got.dtype == U64 and got.tolist() == ref.checksum_rows(rows, nbytes)


def test_checksum_rows_rejects_bad_input() -> None:
    rows = np.zeros((4, 64), np.uint8)
    for bad_rows, nbytes in (
        (rows, 65), (rows, -1), (rows, 56.0), (rows, True), (rows.reshape(-1), 8),
        (rows.view(np.int8), 8), (rows[:, ::2], 8), (b"x" * 64, 8),
    ):  # fmt: skip
        with pytest.raises(InvalidArgument):
            native.checksum_rows(bad_rows, nbytes)  # type: ignore[arg-type]
    assert native.checksum_rows(rows[:0], 56).shape == (0,)


# --- record header checks ------------------------------------------------------------


@given(st.integers(0, 30), st.sampled_from([4096, 16384]), st.data())
def test_check_headers_match_reference(n: int, bs: int, data: st.DataObject) -> None:
    """Valid headers, then random damage: a flipped byte anywhere (the checksum
    sees it, version and reserved bytes too), or table values that differ."""
    ids = np.array(data.draw(st.lists(st.integers(1, MAX_U64), min_size=n, max_size=n)), U64)
    slens = np.array(data.draw(st.lists(st.integers(1, bs), min_size=n, max_size=n)), np.uint32)
    flags = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), np.uint8)
    hdr = np.zeros(n, HEADER_DTYPE)
    fps = np.frombuffer(data.draw(st.binary(min_size=16 * n, max_size=16 * n)), np.uint8)
    fill_headers(hdr, ids, flags, bs, slens, 7, fps.reshape(n, 16))
    rows = hdr.view(np.uint8).reshape(n, 64).copy()
    for i in range(n):
        damage = data.draw(st.sampled_from(["none", "byte", "id", "slen", "flag", "reseal"]))
        if damage == "byte":
            rows[i, data.draw(st.integers(0, 63))] ^= data.draw(st.integers(1, 255))
        elif damage == "id":
            ids[i] ^= U64(1 << data.draw(st.integers(0, 63)))
        elif damage == "slen":
            slens[i] = data.draw(st.integers(0, 2**32 - 1))
        elif damage == "flag":
            flags[i] ^= data.draw(st.integers(0, 3))
        elif damage == "reseal":  # a field changed and the checksum recomputed
            rows[i, data.draw(st.integers(0, 23))] ^= data.draw(st.integers(1, 255))
            rows[i, 56:] = np.frombuffer(
                xxhash.xxh3_64_intdigest(rows[i, :56].tobytes()).to_bytes(8, "little"), np.uint8
            )
    got = native.check_headers(rows, ids, slens, flags, bs)
    assert got.dtype == np.bool_ and got.tolist() == ref.check_headers(rows, ids, slens, flags, bs)


def test_check_headers_rejects_bad_input() -> None:
    rows, one = np.zeros((2, 64), np.uint8), np.zeros(2, np.uint8)
    for bad_rows, ids in ((rows[:, :56], one), (rows.reshape(-1), one), (rows, one[:1]),
                          (rows.view(np.int8), one), (np.zeros((2, 128), np.uint8)[:, :64], one)):
        with pytest.raises(InvalidArgument):
            native.check_headers(bad_rows, ids, one, one, 4096)
    assert native.check_headers(rows[:0], [], [], [], 4096).shape == (0,)
    assert native.check_headers(rows, one, one, one, 4096).tolist() == [True, True]


# --- batched preadv ---------------------------------------------------------------


@st.composite
def record_batches(draw: st.DrawFn) -> tuple[list[int], list[int], list[bool], list[int]]:
    """Records sorted by key (group << 32 | offset) in up to 3 groups, close, far
    apart or overlapping, with lengths, compressed flags and output rows."""
    n = draw(st.integers(0, 30))
    keys, key = [], draw(st.integers(0, 2**33))
    for _ in range(n):
        keys.append(key)
        if draw(st.integers(0, 9)) == 0:  # the next group, offset from 0
            key = ((key >> 32) + 1) << 32 | draw(st.integers(0, 200))
        else:
            key += draw(st.integers(1, 300))
    lens = draw(st.lists(st.integers(0, 150), min_size=n, max_size=n))
    comp = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    dest = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n))
    return keys, lens, comp, dest


@given(record_batches(), st.integers(0, 120), st.sampled_from([4096, 16384]))
def test_plan_runs_match_reference(batch, max_gap: int, bs: int) -> None:
    keys, lens, comp, dest = batch
    iovs, runs = native.plan_runs(np.array(keys, np.int64), np.array(lens, np.int64),
                                  np.array(comp, bool), np.array(dest, np.int64), bs, max_gap)  # fmt: skip
    want_iovs, want_runs = ref.plan_runs(keys, lens, comp, dest, bs, max_gap)
    assert iovs.dtype == runs.dtype == np.int64
    assert [tuple(v) for v in iovs.tolist()] == want_iovs and runs.tolist() == want_runs
    assert (native.PLAN_SINK, native.PLAN_HDRS, native.PLAN_OUT, native.PLAN_CBUF) == (0, 1, 2, 3)


def test_plan_runs_rejects_mismatched_lengths() -> None:
    one, two = np.zeros(1, np.int64), np.zeros(2, np.int64)
    with pytest.raises(InvalidArgument):
        native.plan_runs(two, one, np.zeros(2, bool), two, 4096, 0)
    iovs, runs = native.plan_runs(one[:0], one[:0], np.zeros(0, bool), one[:0], 4096, 0)
    assert iovs.shape == (0, 3) and runs.shape == (0, 4)


@given(st.integers(0, 20), st.data())
def test_gather_records_match_reference(rows: int, data: st.DataObject) -> None:
    """Table columns and ids in any order (repeats, ids past the table); the keys
    ascend exactly when ids pick ascending (group, offset) places."""
    def column(dtype: type, top: int) -> np.ndarray:
        return np.array(data.draw(st.lists(st.integers(0, top), min_size=rows, max_size=rows)), dtype)

    group, offset, slen = column(np.uint32, 3), column(np.uint32, 2**32 - 1), column(np.uint32, 9)
    flags = column(np.uint8, 255)
    ids = data.draw(st.lists(st.integers(0, rows + 1), max_size=25))
    if data.draw(st.booleans()):
        ids = sorted(set(ids))  # a sequential read's shape
    want = ref.gather_records(group.tolist(), offset.tolist(), slen.tolist(), flags.tolist(), ids)
    if want is None:
        with pytest.raises(InvalidArgument):
            native.gather_records(group, offset, slen, flags, np.array(ids, U64))
        return
    keys, lens, comp, ascending = native.gather_records(group, offset, slen, flags, np.array(ids, U64))
    assert keys.dtype == lens.dtype == np.int64 and comp.dtype == np.bool_
    assert (keys.tolist(), lens.tolist(), comp.tolist(), ascending) == want


def test_gather_records_rejects_bad_input() -> None:
    col, fl, ids = np.zeros(3, np.uint32), np.zeros(3, np.uint8), np.zeros(2, U64)
    for args in ((col, col, col, fl, ids.astype(np.int64)), (col, col[:2], col, fl, ids),
                 (col, col, col.astype(np.uint64), fl, ids), (col, col, col, fl, ids.reshape(1, 2)),
                 (col, col, col, fl, np.array([3], U64))):  # fmt: skip
        with pytest.raises(InvalidArgument):
            native.gather_records(*args)
    keys, _, _, ascending = native.gather_records(col, col, col, fl, ids[:0])
    assert keys.shape == (0,) and ascending


@st.composite
def read_batches(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, int, int]], list[tuple]]:
    """Buffer sizes, iovecs inside them (zero-length and overlapping ones too) and
    runs over the iovecs; a run's fd is a slot: 0 the file, 1 a directory
    (preadv fails with EISDIR), 2 a closed fd (EBADF)."""
    sizes = draw(st.lists(st.integers(0, 300), min_size=1, max_size=4))
    iov = []
    for _ in range(draw(st.integers(0, 40))):
        b = draw(st.integers(0, len(sizes) - 1))
        off = draw(st.integers(0, sizes[b]))
        iov.append((b, off, draw(st.integers(0, sizes[b] - off))))
    runs = []
    for _ in range(draw(st.integers(0, 8))):
        first = draw(st.integers(0, len(iov)))
        count = draw(st.integers(0, len(iov) - first))
        slot = draw(st.sampled_from([0, 0, 0, 0, 1, 2]))
        runs.append((slot, draw(st.integers(0, 1200)), first, count))
    return sizes, iov, runs


@given(read_batches(), st.binary(max_size=1000), st.sampled_from([1, 2, 3, 1024]))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_preadv_runs_match_reference(tmp_path, batch, content: bytes, limit: int) -> None:
    """Same bytes in every buffer and same per-run results as os.preadv in Python,
    including short reads at end of file and failing fds."""
    sizes, iov, runs = batch
    path = tmp_path / "f"
    path.write_bytes(content)
    fd, dir_fd, closed = os.open(path, os.O_RDONLY), os.open(tmp_path, os.O_RDONLY), os.dup(0)
    os.close(closed)
    try:
        fds = [fd, dir_fd, closed]
        real_runs = [(fds[slot], pos, first, count) for slot, pos, first, count in runs]
        fill = [bytes(range(7, 7 + n)) if n < 249 else bytes(n) for n in sizes]
        got_bufs = [np.frombuffer(bytearray(f), np.uint8).copy() for f in fill]
        want_bufs = [bytearray(f) for f in fill]
        got = native.preadv_runs(
            got_bufs, np.array(iov, np.int64).reshape(-1, 3),
            np.array(real_runs, np.int64).reshape(-1, 4), limit,
        )  # fmt: skip
        want = ref.preadv_runs(want_bufs, iov, real_runs, limit)
    finally:
        os.close(fd)
        os.close(dir_fd)
    assert got.dtype == np.int64 and got.tolist() == want
    assert [b.tobytes() for b in got_bufs] == [bytes(b) for b in want_bufs]
    assert all(r in (-errno.EISDIR, -errno.EBADF) or r >= 0 for r in want)


def test_preadv_runs_more_iovecs_than_iov_max(tmp_path) -> None:
    """One run of 3,000 iovecs: the kernel fails a preadv of more than IOV_MAX
    (1024) with EINVAL, so this only reads if the call splits the run."""
    content = np.random.default_rng(5).integers(0, 256, 3000 * 7, dtype=np.uint8).tobytes()
    path = tmp_path / "f"
    path.write_bytes(content)
    buf = np.zeros(3000 * 8, np.uint8)
    iov = np.array([(0, 8 * i, 7) for i in range(3000)], np.int64)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = native.preadv_runs([buf], iov, np.array([[fd, 0, 0, 3000]]))
    finally:
        os.close(fd)
    assert got.tolist() == [len(content)]
    assert buf.reshape(-1, 8)[:, :7].tobytes() == content and not buf.reshape(-1, 8)[:, 7].any()


def test_preadv_runs_rejects_out_of_range_without_reading(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    buf = np.zeros(16, np.uint8)
    ok_iov, ok_run = [(0, 0, 8)], [fd, 0, 0, 1]
    try:
        for iov, run, limit in (
            ([(0, 8, 9)], ok_run, 8),  # past the buffer's end
            ([(0, 17, 0)], ok_run, 8),  # starts past it
            ([(1, 0, 1)], ok_run, 8),  # no such buffer
            ([(-1, 0, 1)], ok_run, 8),
            ([(0, -1, 2)], ok_run, 8),
            ([(0, 0, -1)], ok_run, 8),
            ([(0, 0, 2**62)], ok_run, 8),  # far past it
            (ok_iov, [fd, 0, 0, 2], 8),  # iovecs past the array
            (ok_iov, [fd, 0, 1, 1], 8),
            (ok_iov, [fd, -1, 0, 1], 8),  # negative file offset
            (ok_iov, [-1, 0, 0, 1], 8),  # negative fd
            (ok_iov, [fd, 0, 0, -1], 8),
            (ok_iov, ok_run, 0),  # iov_limit outside 1..1024
            (ok_iov, ok_run, 1025),
        ):
            with pytest.raises(InvalidArgument):
                native.preadv_runs([buf], np.array(iov), np.array([run]), limit)
        for bufs, iov, run in (
            ([b"y" * 16], ok_iov, [ok_run]),  # read-only buffer
            ([buf], [0, 0, 8], [ok_run]),  # not (n, 3)
            ([buf], ok_iov, ok_run),  # not (r, 4)
        ):
            with pytest.raises(InvalidArgument):
                native.preadv_runs(bufs, np.array(iov), np.array(run))
        assert not buf.any()  # nothing was read by a rejected call
        got = native.preadv_runs([buf, bytearray(4)], np.array([(0, 8, 8), (1, 0, 4)]),
                                 np.array([[fd, 96, 0, 2], [fd, 0, 0, 0]]))  # fmt: skip
        assert got.tolist() == [4, 0] and bytes(buf[8:12]) == b"xxxx"  # end of file
    finally:
        os.close(fd)


# --- GIL ------------------------------------------------------------------------


def test_gil_released_during_native_calls() -> None:
    n = 1 << 21
    ix, fps = _filled(n)
    queries = np.random.default_rng(9).integers(0, 256, size=(4 * n, 16), dtype=np.uint8)
    ticks: list[float] = []
    stop, spinning = threading.Event(), threading.Event()

    def spin() -> None:
        spinning.set()
        while not stop.is_set():
            ticks.append(time.perf_counter())

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    worker = threading.Thread(target=spin)
    worker.start()
    try:
        assert spinning.wait(60), "the spinning thread never started"
        t0 = time.perf_counter()
        ix.lookup(queries)
        t1 = time.perf_counter()
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(old)
    span = t1 - t0
    assert span > 0.1, f"native call too short to judge ({span:.3f}s)"
    middle = [t for t in ticks if t0 + 0.4 * span < t < t0 + 0.6 * span]
    assert len(middle) > 100, "another thread made no progress during the native call"


# -- copy_runs ---------------------------------------------------------------------------
@st.composite
def _copy_cases(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[int, int, int]]]:
    src = draw(st.binary(min_size=1, max_size=2048))
    dst_size = draw(st.integers(1, 2048))
    runs = []
    for _ in range(draw(st.integers(0, 12))):
        n = draw(st.integers(0, min(len(src), dst_size)))
        runs.append((draw(st.integers(0, len(src) - n)), draw(st.integers(0, dst_size - n)), n))
    return src, dst_size, runs


@given(_copy_cases())
@settings(max_examples=300)
def test_copy_runs_matches_reference(case: tuple[bytes, int, list[tuple[int, int, int]]]) -> None:
    src, dst_size, runs = case
    want = bytearray(b"\xaa" * dst_size)
    ref.copy_runs(src, want, runs)
    got = np.full(dst_size, 0xAA, np.uint8)
    cols = [np.array([r[i] for r in runs], np.int64) for i in range(3)]
    native.copy_runs(np.frombuffer(src, np.uint8), got, *cols)
    assert got.tobytes() == bytes(want)


@pytest.mark.parametrize("run", [(-1, 0, 1), (0, -1, 1), (0, 0, -1), (8, 0, 1), (0, 8, 1),
                                 (4, 0, 5), (0, 4, 5)])
def test_copy_runs_refuses_runs_outside_their_buffers(run: tuple[int, int, int]) -> None:
    src, dst = np.arange(8, dtype=np.uint8), np.zeros(8, np.uint8)
    ok = (np.array([0], np.int64),) * 2 + (np.array([8], np.int64),)
    cols = [np.concatenate([ok[i], np.array([run[i]], np.int64)]) for i in range(3)]
    with pytest.raises(InvalidArgument, match="outside its buffer"):
        native.copy_runs(src, dst, *cols)
    assert not dst.any()  # checked before anything is copied
    with pytest.raises(InvalidArgument):
        native.copy_runs(src, dst, *cols[:2], cols[2][:1])  # arrays of different lengths
    with pytest.raises(InvalidArgument):
        native.copy_runs(src.astype(np.int16), dst, *ok)
