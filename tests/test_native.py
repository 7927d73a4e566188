"""nxstore.native agrees bit for bit with the slow references in native_reference."""

from __future__ import annotations

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

from nxstore import native
from nxstore.errors import Corruption, FormatError, InvalidArgument

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


# --- GIL ------------------------------------------------------------------------


def test_gil_released_during_native_calls() -> None:
    n = 1 << 21
    ix, fps = _filled(n)
    queries = np.random.default_rng(9).integers(0, 256, size=(4 * n, 16), dtype=np.uint8)
    ticks: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    worker = threading.Thread(target=spin)
    worker.start()
    try:
        time.sleep(0.01)
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
