"""VDisk.allocated_ranges / Snapshot.allocated_ranges: the runs cover the range exactly,
alternate, fall on block boundaries, and say unallocated exactly where the disk was never
written or was trimmed; the same before the drain (dirty blocks) and after it."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nxstore

BS = 4096
SIZE = 64 * BS


def check_shape(runs, offset, length):
    """The structural contract: exact cover, nonzero lengths, alternating flags, block
    boundaries inside the range."""
    if length == 0:
        assert runs == []
        return
    assert runs[0][0] == offset
    pos = offset
    for i, (off, n, allocated) in enumerate(runs):
        assert off == pos and n > 0 and isinstance(allocated, bool)
        if i:
            assert off % BS == 0 and allocated != runs[i - 1][2]
        pos += n
    assert pos == offset + length


def blocks_of(runs) -> dict[int, bool]:
    out = {}
    for off, n, allocated in runs:
        for b in range(off // BS, (off + n - 1) // BS + 1):
            out[b] = allocated
    return out


def test_fresh_written_trimmed_and_drained(make_cluster):
    c = make_cluster()
    vd = c.create_vdisk("v", SIZE)
    assert vd.allocated_ranges(0, SIZE) == [(0, SIZE, False)]
    assert vd.allocated_ranges(5, 0) == []
    vd.write(3 * BS + 100, b"x" * 10)  # partial block, still dirty
    vd.write(10 * BS, b"y" * (4 * BS))
    want = [(0, 3 * BS, False), (3 * BS, BS, True), (4 * BS, 6 * BS, False),
            (10 * BS, 4 * BS, True), (14 * BS, SIZE - 14 * BS, False)]
    assert vd.allocated_ranges(0, SIZE) == want
    vd.drain()
    assert vd.allocated_ranges(0, SIZE) == want
    vd.trim(11 * BS, 2 * BS)
    assert vd.allocated_ranges(10 * BS, 4 * BS) == [
        (10 * BS, BS, True), (11 * BS, 2 * BS, False), (13 * BS, BS, True)]
    # a sub-range is clipped to the request, mid-block included
    assert vd.allocated_ranges(3 * BS + 7, 2 * BS) == [
        (3 * BS + 7, BS - 7, True), (4 * BS, BS + 7, False)]


def test_snapshot_keeps_its_allocation(make_cluster):
    c = make_cluster()
    vd = c.create_vdisk("v", SIZE)
    vd.write(2 * BS, b"z" * BS)
    snap = vd.snapshot("s")
    vd.trim(2 * BS, BS)
    vd.write(5 * BS, b"w" * BS)
    assert snap.allocated_ranges(0, SIZE) == [
        (0, 2 * BS, False), (2 * BS, BS, True), (3 * BS, SIZE - 3 * BS, False)]
    assert vd.allocated_ranges(0, 8 * BS) == [
        (0, 5 * BS, False), (5 * BS, BS, True), (6 * BS, 2 * BS, False)]


def test_bad_ranges_raise(make_cluster):
    c = make_cluster()
    vd = c.create_vdisk("v", SIZE)
    with pytest.raises(nxstore.errors.OutOfRange):
        vd.allocated_ranges(SIZE - 1, 2)
    with pytest.raises(nxstore.errors.InvalidArgument):
        vd.allocated_ranges("0", 1)


_names = itertools.count()
ops = st.lists(st.tuples(st.sampled_from(["write", "trim", "drain"]),
                         st.integers(0, 63), st.integers(1, 8)), max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, lo=st.integers(0, SIZE - 1), span=st.integers(0, SIZE))
def test_matches_a_block_model(make_cluster, ops, lo, span):
    c = make_cluster(name=f"m{next(_names)}")
    vd = c.create_vdisk("v", SIZE)
    model = [False] * (SIZE // BS)
    for op, block, count in ops:
        count = min(count, SIZE // BS - block)
        if op == "write":
            vd.write(block * BS, bytes([block % 251 + 1]) * (count * BS))
        elif op == "trim":
            vd.trim(block * BS, count * BS)
        else:
            vd.drain()
            continue
        model[block:block + count] = [op == "write"] * count
    length = min(span, SIZE - lo)
    runs = vd.allocated_ranges(lo, length)
    check_shape(runs, lo, length)
    for b, allocated in blocks_of(runs).items():
        assert allocated == model[b], (b, runs)
