"""MapStore: round trips, recovery from torn appends, corruption, compaction."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nxstore.constants import MAP_FORMAT_VERSION
from nxstore.errors import Corruption, FormatError, InvalidArgument
from nxstore.store.block_map import MapLayer
from nxstore.store.fileutil import write_checksummed
from nxstore.store.map_store import (
    BASE_MAGIC,
    DELTA_HEADER_BYTES,
    RECORD_HEADER_BYTES,
    WATERMARK_OFFSET,
    MapStore,
    _watermark,
)

U64 = np.uint64
LID = 0x1234


def arr(xs) -> np.ndarray:
    return np.asarray(list(xs), dtype=U64)


def as_dict(layer: MapLayer) -> dict[int, int]:
    k, v = layer.items()
    return dict(zip(k.tolist(), v.tolist(), strict=True))


def layer_of(d: dict[int, int]) -> MapLayer:
    ks = sorted(d)
    return MapLayer(arr(ks), arr(d[k] for k in ks))


def reopen(store: MapStore, layer_id: int = LID) -> tuple[dict[int, int], int]:
    layer, seq = MapStore(store.directory).load(layer_id)
    return as_dict(layer), seq


def nonzero_vals(n: int, salt: int = 0) -> np.ndarray:
    """Values whose bytes are all non-zero (so a flipped byte never looks like zero fill)."""
    return np.arange(n, dtype=U64) + U64(0x0102030405060708 + salt)


# -- round trips -------------------------------------------------------------------


def test_missing_layer_loads_empty(tmp_path):
    store = MapStore(str(tmp_path / "maps"))
    layer, seq = store.load(7)
    assert len(layer) == 0 and seq == 0 and not layer.frozen
    assert store.layer_ids() == [] and store.disk_bytes() == 0


def test_round_trip_base_and_deltas(tmp_path):
    store = MapStore(str(tmp_path))
    store.write_base(LID, layer_of({1: 10, 2: 20, 5: 50}), 3)
    store.append(LID, arr([2, 9, 2]), arr([0, 90, 21]), 4)  # repeated block: later wins
    store.append(LID, arr([]), arr([]), 6)  # empty batch still records applied_seq
    assert reopen(store) == ({1: 10, 2: 21, 5: 50, 9: 90}, 6)
    assert store.layer_ids() == [LID]
    assert (
        store.disk_bytes(LID)
        == store.disk_bytes()
        == sum(os.path.getsize(tmp_path / n) for n in os.listdir(tmp_path))
    )
    assert sorted(os.listdir(tmp_path)) == [f"L{LID:016x}.base", f"L{LID:016x}.delta"]


def test_append_without_base(tmp_path):
    store = MapStore(str(tmp_path))
    store.append(LID, arr([3]), arr([4]), 1)
    assert reopen(store) == ({3: 4}, 1)
    assert not os.path.exists(store.base_path(LID))


def test_reopen_after_many_appends(tmp_path):
    store = MapStore(str(tmp_path), compact_min_bytes=1 << 40)
    rng = np.random.default_rng(1)
    model: dict[int, int] = {}
    for seq in range(1, 801):
        b = rng.integers(0, 5000, 16, dtype=U64)
        v = rng.integers(0, 1000, 16, dtype=U64)
        store.append(LID, b, v, seq)
        model.update(zip(b.tolist(), v.tolist(), strict=True))
        if seq % 200 == 0:
            store = MapStore(str(tmp_path), compact_min_bytes=1 << 40)  # appends after reopen
    assert reopen(store) == (model, 800)


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"),
            st.lists(st.tuples(st.integers(0, 200), st.integers(0, 2**64 - 1)), max_size=20),
        ),
        st.tuples(st.just("base"), st.none()),
        st.tuples(st.just("compact"), st.none()),
        st.tuples(st.just("reopen"), st.none()),
    ),
    max_size=30,
)


@given(ops)
@settings(max_examples=60, deadline=None)
def test_store_matches_model(program):
    with tempfile.TemporaryDirectory() as d:
        store = MapStore(d, compact_min_bytes=64)
        layer, seq = store.load(LID)
        model: dict[int, int] = {}
        for op, arg in program:
            if op == "append":
                seq += 1
                b, v = arr(x for x, _ in arg), arr(y for _, y in arg)
                layer.set(b, v)
                store.append(LID, b, v, seq)
                for x, y in arg:
                    model[x] = y
            elif op == "base":
                store.write_base(LID, layer, seq)
            elif op == "compact":
                store.maybe_compact(LID, layer, seq)
            else:
                store = MapStore(d, compact_min_bytes=64)
                layer, got_seq = store.load(LID)
                assert got_seq == seq
            assert as_dict(layer) == model
        assert reopen(store) == (model, seq)


# -- crash safety ------------------------------------------------------------------


LAST_KEYS = [1, *range(100, 199)]  # 100 entries: the last record spans sector boundaries


def three_records(store: MapStore) -> int:
    """Base + three records; returns the offset where the last record starts."""
    store.write_base(LID, layer_of({0: 1}), 1)
    store.append(LID, arr([1, 2]), nonzero_vals(2, 1), 2)
    store.append(LID, arr([3]), nonzero_vals(1, 2), 3)
    start = os.path.getsize(store.delta_path(LID))
    store.append(LID, arr(LAST_KEYS), nonzero_vals(100, 3), 4)
    assert os.path.getsize(store.delta_path(LID)) == start + RECORD_HEADER_BYTES + 100 * 16
    return start


BEFORE_LAST = {
    0: 1,
    1: 0x0102030405060709,
    2: 0x010203040506070A,
    3: 0x010203040506070A,
}


def torn_copies(tmp_path, src: MapStore, start: int):
    """(label, bytes) of every torn form of the last record a crash can leave:
    cut at every byte offset, or extended with zeros from its start or from any
    512-byte sector boundary inside it."""
    full = Path(src.delta_path(LID)).read_bytes()
    # The crash came before the append's fdatasync, so the watermark still says `start`.
    generation = int.from_bytes(full[24:32], "little")
    head = full[:WATERMARK_OFFSET] + _watermark(LID, generation, start)
    full = head + full[len(head) :]
    for cut in range(start, len(full)):
        yield f"cut{cut}", full[:cut]
    for q in [start, *range(-(-start // 512) * 512, len(full), 512)]:
        yield f"zeros{q}", full[:q] + bytes(len(full) - q)


def test_torn_last_record_at_every_offset(tmp_path):
    src = MapStore(str(tmp_path / "src"))
    start = three_records(src)
    assert reopen(src) == (
        {**BEFORE_LAST, **dict.fromkeys(LAST_KEYS, 0)}
        | dict(zip(LAST_KEYS, nonzero_vals(100, 3).tolist(), strict=True)),
        4,
    )
    d = str(tmp_path / "torn")
    n = 0
    for label, torn in torn_copies(tmp_path, src, start):
        shutil.copytree(src.directory, d)
        with open(os.path.join(d, f"L{LID:016x}.delta"), "wb") as f:
            f.write(torn)
        store = MapStore(d)
        assert reopen(store) == (BEFORE_LAST, 3), label
        # the next append cuts the torn tail away and lands after the valid records
        store.append(LID, arr([9]), arr([99]), 5)
        assert reopen(store) == ({**BEFORE_LAST, 9: 99}, 5), label
        shutil.rmtree(d)
        n += 1
    assert n > 1600


@pytest.mark.parametrize("cut", [1, 8, 31, 32, RECORD_HEADER_BYTES + 100 * 16])
def test_cutting_a_synced_record_is_corruption(tmp_path, cut):
    """Issue 11: the last record was acknowledged (its append returned), so cutting even
    one byte of it is damage, not a torn tail; likewise for a frozen layer's delta."""
    store = MapStore(str(tmp_path))
    three_records(store)
    store.seal(LID)
    path = store.delta_path(LID)
    os.truncate(path, os.path.getsize(path) - cut)
    with pytest.raises(Corruption, match="were synced"):
        MapStore(str(tmp_path)).load(LID)


def _three_records_flipped(tmp_path, offset: int) -> None:
    """A delta of three synced records with the byte at `offset` (from its end if < 0)
    flipped."""
    store = MapStore(str(tmp_path))
    three_records(store)
    path = Path(store.delta_path(LID))
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_in_last_synced_record_is_corruption(tmp_path):
    _three_records_flipped(tmp_path, -3)
    with pytest.raises(Corruption, match="payload checksum"):
        MapStore(str(tmp_path)).load(LID)


def test_damaged_watermark_slot_is_harmless(tmp_path):
    _three_records_flipped(tmp_path, WATERMARK_OFFSET + 2)
    again = MapStore(str(tmp_path))
    assert again.load(LID)[1] == 4
    assert again.problems and "watermark" in again.problems[0]


@pytest.mark.parametrize("cut", ["zeros", "chop"])
def test_damaged_watermark_with_a_torn_looking_tail_is_corruption(tmp_path, cut):
    """A crash never leaves the slot unreadable, so with it damaged a zeroed or cut tail
    may be synced records: refused, never dropped as torn (the CI sweep found this)."""
    store = MapStore(str(tmp_path))
    three_records(store)
    store.seal(LID)
    path = Path(store.delta_path(LID))
    full = path.read_bytes()
    if cut == "zeros":
        damaged = full[:WATERMARK_OFFSET] + bytes(len(full) - WATERMARK_OFFSET)
    else:
        damaged = full[:WATERMARK_OFFSET + 1] + b"\xff" + full[WATERMARK_OFFSET + 2 : -5]
    path.write_bytes(damaged)
    with pytest.raises(Corruption, match="watermark unreadable and the records end"):
        MapStore(str(tmp_path)).load(LID)


def test_zeros_not_on_a_sector_boundary_are_corruption(tmp_path):
    store = MapStore(str(tmp_path))
    three_records(store)
    full = Path(store.delta_path(LID)).read_bytes()
    q = len(full) - 4  # zeros that start inside the record's last sector: not a crash
    q += q % 512 == 0
    with open(store.delta_path(LID), "wb") as f:
        f.write(full[:q] + bytes(len(full) - q))
    with pytest.raises(Corruption, match="payload checksum"):
        MapStore(str(tmp_path)).load(LID)


def test_flipped_byte_in_delta_is_corruption(tmp_path):
    src = MapStore(str(tmp_path / "src"))
    three_records(src)
    full = Path(src.delta_path(LID)).read_bytes()
    d = str(tmp_path / "x")
    shutil.copytree(src.directory, d)
    path = os.path.join(d, f"L{LID:016x}.delta")
    for i in range(len(full)):
        if WATERMARK_OFFSET <= i < DELTA_HEADER_BYTES:
            continue  # the watermark slot and reserved bytes: test_damaged_watermark_slot...
        with open(path, "wb") as f:
            f.write(full[:i] + bytes([full[i] ^ 0xFF]) + full[i + 1 :])
        with pytest.raises(Corruption, match=f"L{LID:016x}.delta"):
            MapStore(d).load(LID)
        with pytest.raises(Corruption):
            MapStore(d).append(LID, arr([1]), arr([1]), 9)


def test_flipped_byte_in_base_is_corruption(tmp_path):
    store = MapStore(str(tmp_path))
    store.write_base(LID, layer_of({i: i + 1 for i in range(0, 40, 3)}), 5)
    path = store.base_path(LID)
    full = Path(path).read_bytes()
    for i in range(len(full)):
        with open(path, "wb") as f:
            f.write(full[:i] + bytes([full[i] ^ 0x01]) + full[i + 1 :])
        with pytest.raises(Corruption, match=f"L{LID:016x}.base"):
            MapStore(str(tmp_path)).load(LID)
    with open(path, "wb") as f:
        f.write(full[:-1])
    with pytest.raises(Corruption):
        MapStore(str(tmp_path)).load(LID)


def test_crash_between_base_and_delta_reset(tmp_path):
    """A delta one generation behind its base is already in the base: ignored."""
    store = MapStore(str(tmp_path))
    store.append(LID, arr([1, 2]), arr([5, 6]), 10)
    old_delta = Path(store.delta_path(LID)).read_bytes()
    # the rewritten map differs from base+delta (e.g. a collapse), and has a lower seq
    store.write_base(LID, layer_of({1: 7}), 8)
    with open(store.delta_path(LID), "wb") as f:
        f.write(old_delta)  # as if the crash came before the delta was emptied
    store = MapStore(str(tmp_path))
    assert reopen(store) == ({1: 7}, 8)
    store.append(LID, arr([3]), arr([3]), 11)  # resets the stale delta first
    assert reopen(store) == ({1: 7, 3: 3}, 11)
    # a delta two generations off does not fit: Corruption, not silence
    store.write_base(LID, layer_of({1: 8}), 12)
    store.write_base(LID, layer_of({1: 9}), 13)
    with open(store.delta_path(LID), "wb") as f:
        f.write(old_delta)
    with pytest.raises(Corruption, match="generation"):
        MapStore(str(tmp_path)).load(LID)


def test_missing_base_under_a_later_delta_is_corruption(tmp_path):
    store = MapStore(str(tmp_path))
    store.write_base(LID, layer_of({1: 1}), 1)
    store.append(LID, arr([2]), arr([2]), 2)
    os.unlink(store.base_path(LID))
    with pytest.raises(Corruption):
        MapStore(str(tmp_path)).load(LID)


def test_file_of_another_layer_is_corruption(tmp_path):
    store = MapStore(str(tmp_path))
    store.write_base(LID, layer_of({1: 1}), 1)
    os.rename(store.base_path(LID), store.base_path(LID + 1))
    os.rename(store.delta_path(LID), store.delta_path(LID + 1))
    with pytest.raises(Corruption, match="holds layer"):
        MapStore(str(tmp_path)).load(LID + 1)


def test_newer_format_version_is_refused(tmp_path):
    store = MapStore(str(tmp_path))
    write_checksummed(store.base_path(LID), BASE_MAGIC, MAP_FORMAT_VERSION + 1, [bytes(32)])
    with pytest.raises(FormatError):
        store.load(LID)


# -- compaction, deletion ----------------------------------------------------------------


def test_maybe_compact(tmp_path):
    store = MapStore(str(tmp_path), compact_min_bytes=0)
    layer = layer_of({i: i + 1 for i in range(1000)})  # base payload ~16 KB
    store.write_base(LID, layer, 1)
    base_size = os.path.getsize(store.base_path(LID))
    assert not store.maybe_compact(LID, layer, 1)
    seq = 1
    while os.path.getsize(store.delta_path(LID)) <= 0.25 * base_size:
        seq += 1
        b, v = arr(range(seq * 10, seq * 10 + 10)), arr([seq] * 10)
        layer.set(b, v)
        store.append(LID, b, v, seq)
        if os.path.getsize(store.delta_path(LID)) <= 0.25 * base_size:
            assert not store.maybe_compact(LID, layer, seq)
    assert store.maybe_compact(LID, layer, seq)
    assert os.path.getsize(store.delta_path(LID)) == DELTA_HEADER_BYTES
    assert reopen(store) == (as_dict(layer), seq)
    # the minimum size guards small layers from rewriting on every append
    big_min = MapStore(str(tmp_path))
    big_min.append(LID, arr(range(5000)), arr(range(5000)), seq + 1)
    assert not big_min.maybe_compact(LID, layer, seq + 1)


def test_delete_and_layer_ids(tmp_path):
    store = MapStore(str(tmp_path))
    for lid in (3, 1, 2**64 - 1):
        store.append(lid, arr([lid % 7]), arr([1]), 1)
    store.write_base(2, layer_of({}), 0)
    assert store.layer_ids() == [1, 2, 3, 2**64 - 1]
    store.delete(3)
    store.delete(3)  # idempotent
    store.delete(99)
    assert store.layer_ids() == [1, 2, 2**64 - 1]
    assert store.disk_bytes(3) == 0
    assert store.load(3)[0].items()[0].tolist() == []
    with pytest.raises(InvalidArgument):
        store.load(-1)
    with pytest.raises(InvalidArgument):
        store.append(1, arr([1, 2]), arr([1]), 2)
