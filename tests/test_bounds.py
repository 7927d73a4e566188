"""Offsets, lengths and sizes of any integer type (issue 11, items 7 and 8).

A numpy uint64 offset used to wrap the range check (offset + length computed in
numpy), so writes outside the vDisk were stored; sizes of 2**63 and more raised
OverflowError from the catalogue and left a wrong size in RAM. Every check now
compares Python ints: the result depends on the value only, never on its type.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model import pattern
from test_cli import nx, one_error_line

import nxstore
from nxstore import errors
from nxstore.constants import MAX_VDISK_SIZE
from nxstore.store.snapshot import block_delta

BS = 4096
SIZE = 16 * BS
INT_TYPES = [int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
EXTREMES = [0, 1, BS, SIZE - 1, SIZE, SIZE + 1, 2**31 - 1, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
            2**64 - BS, 2**64 - 1, 2**64, -1, -BS, -(2**63), -(2**64)]
NOT_INTEGERS = [1.0, 0.0, float("nan"), np.float64(4096), True, False, np.bool_(True), "4096",
                None, b"1", 1 + 0j]


@st.composite
def any_integer(draw: st.DrawFn) -> object:
    """A value of any integer type, often at an edge: (typed value, Python int)."""
    kind = draw(st.sampled_from(INT_TYPES))
    if kind is int:
        lo, hi = -(2**70), 2**70
    else:
        info = np.iinfo(kind)
        lo, hi = int(info.min), int(info.max)
    edges = [x for x in EXTREMES if lo <= x <= hi] + [lo, hi]
    value = draw(st.one_of(st.sampled_from(edges), st.integers(lo, hi),
                           st.integers(max(lo, -2 * BS), min(hi, SIZE + 2 * BS))))
    return kind(value), value


def _inside(offset: int, length: int) -> bool:
    return offset >= 0 and length >= 0 and offset + length <= SIZE


def test_range_checks_compare_values_not_types(make_cluster) -> None:
    c = make_cluster(block_size=BS)
    vd = c.create_vdisk("v", SIZE)
    base = vd.snapshot("base")
    image = bytearray(SIZE)

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(op=st.sampled_from(["write", "read", "trim", "snapshot-read"]), offset=any_integer(),
           length=any_integer(), seed=st.integers(0, 2**16))
    def check(op: str, offset: tuple[object, int], length: tuple[object, int], seed: int) -> None:
        (off, off_int), (n, n_int) = offset, length
        if op == "write":
            n_int = n_int % (3 * BS)
            data = pattern(seed, n_int)
            ok = _inside(off_int, n_int)
            with pytest.raises(errors.OutOfRange) if not ok else _no_error():
                vd.write(off, data)
            if ok:
                image[off_int:off_int + n_int] = data
            return
        ok = _inside(off_int, n_int)
        with pytest.raises(errors.OutOfRange) if not ok else _no_error():
            if op == "read":
                assert vd.read(off, n) == bytes(image[off_int:off_int + n_int])
            elif op == "trim":
                vd.trim(off, n)
                image[off_int:off_int + n_int] = bytes(n_int)
            else:
                assert base.read(off, n) == bytes(n_int)

    check()
    assert vd.read(0, SIZE) == bytes(image)
    # nothing was stored outside the disk: every block a replication would ship lies inside
    after = vd.snapshot("after")
    blocks, _ = block_delta(c._ctx, None, after.layer_id)
    assert blocks.size == 0 or int(blocks.max()) < SIZE // BS
    assert all(o + n <= SIZE for o, n in vd.changed_blocks(base, after))
    assert c.scrub() == []
    c2 = make_cluster.reopen(c)
    assert c2.vdisk("v").read(0, SIZE) == bytes(image)


class _no_error:  # noqa: N801 - reads like pytest.raises at the call site
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def test_the_wrapping_offsets_of_the_issue(make_cluster) -> None:
    c = make_cluster(block_size=BS)
    vd = c.create_vdisk("v", SIZE)
    for offset, data in [(np.uint64(2**64 - BS), bytes(BS)), (np.uint64(2**64 - 1), b"x"),
                         (np.int64(SIZE), b"x"), (np.uint32(SIZE - 1), b"xy")]:
        with pytest.raises(errors.OutOfRange):
            vd.write(offset, data)
    with pytest.raises(errors.OutOfRange):
        vd.read(np.uint64(BS), np.uint64(2**64 - BS))  # offset + length wraps to 0 in numpy
    with pytest.raises(errors.OutOfRange):
        vd.trim(np.uint64(2**64 - 1), np.uint64(1))
    vd.write(np.uint64(SIZE - 2), b"ok")  # inside: numpy integers are fine
    assert vd.read(np.int8(0), np.uint32(SIZE))[-2:] == b"ok"


@pytest.mark.parametrize("bad", NOT_INTEGERS, ids=repr)
def test_non_integers_are_invalid(make_cluster, bad: object) -> None:
    c = make_cluster(block_size=BS)
    vd = c.create_vdisk("v", SIZE)
    snap = vd.snapshot("s")
    for call in (lambda: vd.write(bad, b"x"), lambda: vd.read(bad, 1), lambda: vd.read(0, bad),
                 lambda: vd.trim(bad, 1), lambda: vd.trim(0, bad), lambda: snap.read(bad, 1),
                 lambda: vd.resize(bad), lambda: c.create_vdisk("w", bad),
                 lambda: c.defragment(max_bytes=bad)):
        with pytest.raises(errors.InvalidArgument):
            call()
    assert vd.size == SIZE
    assert [v.name for v in c.vdisks()] == ["v"]


@settings(max_examples=60, deadline=None)
@given(size=any_integer())
def test_vdisk_sizes_of_any_type(tmp_path_factory, size: tuple[object, int]) -> None:
    typed, value = size
    with nxstore.Cluster.create(str(tmp_path_factory.mktemp("c") / "c"), block_size=BS,
                                background=False) as c:
        if 0 < value <= MAX_VDISK_SIZE:
            assert c.create_vdisk("v", typed).size == value
            assert type(c.vdisk("v").size) is int
        else:
            with pytest.raises(errors.OutOfRange if value > 0 else errors.InvalidArgument):
                c.create_vdisk("v", typed)
            assert c.vdisks() == []


def test_failed_resize_keeps_the_size(make_cluster) -> None:
    c = make_cluster(block_size=BS)
    vd = c.create_vdisk("v", SIZE)
    for bad in [2**63, 2**64, MAX_VDISK_SIZE + 1, np.uint64(2**64 - 1)]:
        with pytest.raises(errors.OutOfRange):
            vd.resize(bad)
        assert vd.size == SIZE
    vd.resize(np.uint64(2 * SIZE))
    assert vd.size == 2 * SIZE and type(vd.size) is int
    c2 = make_cluster.reopen(c)
    assert c2.vdisk("v").size == 2 * SIZE


def test_the_largest_vdisk_works_at_its_last_byte(make_cluster) -> None:
    c = make_cluster(block_size=BS)
    vd = c.create_vdisk("big", MAX_VDISK_SIZE)
    last = MAX_VDISK_SIZE - 3 * BS
    vd.write(last, pattern(1, 3 * BS))
    vd.write(MAX_VDISK_SIZE - 1, b"z")
    with pytest.raises(errors.OutOfRange):
        vd.write(MAX_VDISK_SIZE, b"z")
    with pytest.raises(errors.OutOfRange):
        vd.resize(MAX_VDISK_SIZE + 1)
    vd.flush()
    snap = vd.snapshot("s")
    clone = c.clone(snap, "clone")
    assert clone.read(last, 3 * BS) == pattern(1, 3 * BS)[:-1] + b"z"
    assert snap.read(MAX_VDISK_SIZE - 1, 1) == b"z"
    blocks, _ = block_delta(c._ctx, None, snap.layer_id)
    assert int(blocks.max()) == (MAX_VDISK_SIZE - 1) // BS
    assert vd.changed_blocks(snap) == []
    c2 = make_cluster.reopen(c)
    assert c2.vdisk("big").read(MAX_VDISK_SIZE - 1, 1) == b"z"
    assert c2.scrub() == []


def test_cli_sizes_too_large_are_one_clean_error(tmp_path) -> None:
    path = str(tmp_path / "cl")
    nx("create", path, "--block-size", "4K")
    one_error_line(nx("vdisk", "create", path, "x", "99999999999T", rc=1), "exceeds the maximum")
    nx("vdisk", "create", path, "x", "1G")
    one_error_line(nx("vdisk", "resize", path, "x", "99999999999T", rc=1), "exceeds the maximum")
    one_error_line(nx("vdisk", "resize", path, "x", "8388608T", rc=1), "exceeds the maximum")
    assert "1.0 GiB" in nx("vdisk", "list", path).stdout
