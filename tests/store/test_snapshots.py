"""Snapshot, clone and restore semantics (issue 3): immutability (guarantee 3),
the changed_blocks "differs" promise, and snapshot_group's consistency point."""

from __future__ import annotations

import random
import struct
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model import differing_blocks, pattern, ranges_to_blocks

import nxstore

BS = 4096
SIZE = 32 * BS


def full(obj) -> bytes:
    return obj.read(0, obj.size)


def test_snapshot_basics_and_clock(make_cluster, clock):
    c = make_cluster(clock=clock)
    vd = c.create_vdisk("v", SIZE)
    data = pattern(1, SIZE)
    vd.write(0, data)  # still in the OpLog: the snapshot must include it
    clock.advance(10)
    s = vd.snapshot("one")
    assert isinstance(s, nxstore.Snapshot)
    assert (s.name, s.vdisk_name, s.size) == ("one", "v", SIZE)
    assert s.created_at == clock()
    assert full(s) == data
    assert s.read(BS - 3, 10) == data[BS - 3 : BS + 7]
    clock.advance(5)
    s2 = c.snapshot_group([vd], "two")[0]
    assert s2.created_at == clock() and s2.created_at > s.created_at
    assert [x.name for x in vd.snapshots()] == ["one", "two"]
    assert c.snapshot("v", "one") == s
    c2 = make_cluster.reopen(c, clock=clock)
    s = c2.snapshot("v", "one")
    assert s.created_at == clock() - 5 and full(s) == data


def test_snapshots_are_immutable(make_cluster):
    c = make_cluster()
    vd = c.create_vdisk("v", SIZE)
    base = bytearray(pattern(2, SIZE))
    base[4 * BS : 6 * BS] = bytes(2 * BS)
    vd.write(0, bytes(base))
    s = vd.snapshot("s")
    frozen = bytes(base)

    def check():
        assert full(c.snapshot("v", "s")) == frozen

    vd.write(0, b"X" * (3 * BS + 5))
    check()
    vd.write(4 * BS, pattern(3, 2 * BS))  # into what was a hole
    check()
    vd.trim(10 * BS, 4 * BS)
    vd.trim(100, 50)
    check()
    vd.write(0, pattern(4, SIZE))  # whole disk, aligned
    c.drain()
    check()
    k = c.clone(s, "k")
    k.write(7, b"clone write")
    k.trim(20 * BS, BS)
    c.drain()
    check()
    later = vd.snapshot("later")
    vd.restore(s)
    check()
    assert full(vd) == frozen
    vd.write(BS, b"after restore")
    vd.restore(later)
    check()
    later.delete()
    c.gc()
    check()
    c = make_cluster.reopen(c)
    check()
    c.gc()
    check()
    assert c.scrub() == []


def test_clone_is_independent_and_shares_space(make_cluster):
    c = make_cluster()
    vd = c.create_vdisk("v", SIZE)
    data = pattern(5, SIZE)
    vd.write(0, data)
    c.drain()
    s = vd.snapshot("s")
    stored = c.stats()["stored_bytes"]
    clones = [c.clone(s, f"k{i}") for i in range(5)]
    assert c.stats()["stored_bytes"] <= stored + BS  # O(1): no data copied
    for i, k in enumerate(clones):
        assert k.size == SIZE and full(k) == data
        k.write(i * BS, b"%d" % i * 100)
    vd.write(0, bytes(SIZE))
    for i, k in enumerate(clones):
        exp = bytearray(data)
        exp[i * BS : i * BS + len(b"%d" % i * 100)] = b"%d" % i * 100
        assert full(k) == bytes(exp)
    assert full(vd) == bytes(SIZE)
    assert full(s) == data
    # clone of a clone
    ks = clones[0].snapshot("ks")
    kk = c.clone(ks, "kk")
    assert full(kk) == full(clones[0])
    clones[0].write(0, b"moved on")
    assert full(kk) == full(ks) != full(clones[0])
    c = make_cluster.reopen(c)
    assert full(c.vdisk("kk")) == full(c.snapshot("k0", "ks"))


def test_restore_keeps_later_snapshots_and_size(make_cluster):
    c = make_cluster()
    vd = c.create_vdisk("v", SIZE)
    states = []
    for i in range(4):
        vd.write(i * BS, pattern(10 + i, 2 * BS))
        vd.snapshot(f"s{i}")
        states.append(full(vd))
    vd.resize(SIZE + 3 * BS)
    vd.write(SIZE, b"grown")
    vd.restore(c.snapshot("v", "s1"))
    assert vd.size == SIZE and full(vd) == states[1]
    assert [s.name for s in vd.snapshots()] == ["s0", "s1", "s2", "s3"]
    for i, st_ in enumerate(states):
        assert full(c.snapshot("v", f"s{i}")) == st_
    vd.restore(c.snapshot("v", "s3"))
    assert full(vd) == states[3]
    vd.write(0, b"new")
    c = make_cluster.reopen(c)
    assert full(c.vdisk("v")) == b"new" + states[3][3:]
    c.vdisk("v").restore(c.snapshot("v", "s0"))
    c.vdisk("v").flush()
    c = make_cluster.reopen(c)
    assert full(c.vdisk("v")) == states[0]


def test_deep_chain_collapse_and_deletes(make_cluster):
    c = make_cluster()
    vd = c.create_vdisk("v", SIZE)
    rng = random.Random(7)
    model = bytearray(SIZE)
    frozen = {}
    for i in range(30):
        for _ in range(3):
            off = rng.randrange(SIZE - 200)
            payload = pattern(rng.randrange(10**9), rng.randrange(1, 2 * BS))[: SIZE - off]
            vd.write(off, payload)
            model[off : off + len(payload)] = payload
        vd.snapshot(f"s{i}")
        frozen[f"s{i}"] = bytes(model)
        if i % 7 == 3:
            c.drain()
    c.drain()
    for name, data in frozen.items():
        assert full(c.snapshot("v", name)) == data, name
    for i in range(0, 30, 2):
        c.snapshot("v", f"s{i}").delete()
        del frozen[f"s{i}"]
    c.gc()
    c.drain()
    for name, data in frozen.items():
        assert full(c.snapshot("v", name)) == data, name
    assert full(vd) == bytes(model)
    c = make_cluster.reopen(c)
    for name, data in frozen.items():
        assert full(c.snapshot("v", name)) == data, name
    assert full(c.vdisk("v")) == bytes(model)
    assert c.scrub() == []


# -- changed_blocks: the "differs" promise -------------------------------------------------

_write = st.tuples(
    st.integers(0, SIZE - 1),                      # offset
    st.integers(1, 3 * BS),                        # length
    st.sampled_from(["random", "zeros", "same", "byte"]),
    st.integers(0, 2**32),
)


def _apply(vd, model: bytearray, op) -> None:
    off, n, kind, seed = op
    n = min(n, len(model) - off)
    if kind == "same":  # rewrite what is already there: written, but does not differ
        payload = bytes(model[off : off + n])
    else:
        payload = pattern(seed, n, "random" if kind == "random" else kind)
    if kind == "zeros" and seed % 2:
        vd.trim(off, n)
    else:
        vd.write(off, payload)
    model[off : off + n] = payload


def _check_promise(got, base: bytes, target: bytes) -> None:
    blocks = ranges_to_blocks(got, BS)
    assert blocks == sorted(set(blocks)), f"ranges overlap or are unsorted: {got}"
    for off, n in got:  # whole blocks, the last clipped to the size
        assert n % BS == 0 or off + n == len(target), (off, n)
        assert off + n <= max(len(target), len(base))
    assert blocks == differing_blocks(base, target, BS)
    rebuilt = bytearray(base)
    for off, n in got:
        rebuilt[off : off + n] = target[off : off + n]
    assert bytes(rebuilt) == target


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(before=st.lists(_write, max_size=8), after=st.lists(_write, max_size=12),
       more=st.lists(_write, max_size=6), drain=st.booleans(), dedup=st.booleans())
def test_changed_blocks_property(make_cluster, before, after, more, drain, dedup):
    c = make_cluster(f"c{uuid.uuid4().hex}")
    if not dedup:
        c.create_container("nodedup", dedup=False, compression=False)
    vd = c.create_vdisk("v", SIZE, container="default" if dedup else "nodedup")
    model = bytearray(SIZE)
    for op in before:
        _apply(vd, model, op)
    base = vd.snapshot("base")
    base_bytes = bytes(model)
    for op in after:
        _apply(vd, model, op)
        if drain and op[3] % 3 == 0:
            c.drain()
    _check_promise(vd.changed_blocks(base), base_bytes, bytes(model))  # against the live disk
    mid = vd.snapshot("mid")
    mid_bytes = bytes(model)
    for op in more:
        _apply(vd, model, op)
    top = vd.snapshot("top")
    _check_promise(vd.changed_blocks(base, mid), base_bytes, mid_bytes)
    _check_promise(vd.changed_blocks(base, top), base_bytes, bytes(model))  # descendant
    _check_promise(vd.changed_blocks(mid, top), mid_bytes, bytes(model))
    assert vd.changed_blocks(top, top) == []
    # across a clone: the clone's snapshot against the snapshot it was cloned from
    k = c.clone(mid, "k")
    kmodel = bytearray(mid_bytes)
    for op in more[::-1]:
        _apply(k, kmodel, op)
    ks = k.snapshot("ks")
    _check_promise(k.changed_blocks(mid, ks), mid_bytes, bytes(kmodel))
    _check_promise(k.changed_blocks(base, ks), base_bytes, bytes(kmodel))
    _check_promise(k.changed_blocks(mid), mid_bytes, bytes(kmodel))
    c.close()


def test_changed_blocks_clipped_to_size(make_cluster):
    c = make_cluster()
    size = 5 * BS + 100
    vd = c.create_vdisk("v", size)
    s = vd.snapshot("s")
    vd.write(size - 10, b"0123456789")
    vd.write(0, b"x")
    assert vd.changed_blocks(s) == [(0, BS), (5 * BS, 100)]
    vd.write(BS, b"y" * (4 * BS))
    assert vd.changed_blocks(s) == [(0, size)]


def test_changed_blocks_ignores_identical_rewrites(make_cluster):
    c = make_cluster()
    vd = c.create_vdisk("v", SIZE)
    data = pattern(3, SIZE)
    vd.write(0, data)
    s = vd.snapshot("s")
    vd.write(0, data)  # the very same bytes: written since, but nothing differs
    vd.write(3 * BS, pattern(4, 10))
    c.drain()
    assert vd.changed_blocks(s) == [(3 * BS, BS)]


# -- snapshot_group under concurrent writers ---------------------------------------------------

NBLK = 16


def _block(tid: int, k: int) -> bytes:
    head = struct.pack("<QQ", tid, k)
    return head + bytes([k % 251]) * (BS - len(head))


def test_snapshot_group_is_crash_consistent(make_cluster):
    c = make_cluster()
    nthreads = 3
    vds = [c.create_vdisk(f"v{t}", NBLK * BS) for t in range(nthreads)]
    order: list[tuple[int, int]] = []      # acknowledged writes, in acknowledgement order
    order_lock = threading.Lock()
    seen_at_issue: dict[tuple[int, int], int] = {}  # write -> len(order) when it was issued
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            k = 0
            while not stop.is_set():
                k += 1
                with order_lock:
                    seen_at_issue[(t, k)] = len(order)
                vds[t].write((k % NBLK) * BS, _block(t, k))
                with order_lock:
                    order.append((t, k))
                if k % 50 == 0:
                    vds[t].flush()
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    groups = []
    try:
        for g in range(25):
            time.sleep(0.01)
            groups.append(c.snapshot_group(vds, f"g{g}"))
            if g % 8 == 7:
                c.drain()
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert not failures, failures
    assert len(order) > 100, "writers made too little progress to test anything"

    def latest(image: bytes, t: int) -> int:
        """The newest write of thread t in `image`, checking the image is exactly
        the result of writes 1..latest (per-disk order)."""
        m = max(struct.unpack_from("<QQ", image, b * BS)[1] for b in range(NBLK))
        for b in range(NBLK):
            # the newest k <= m with k % NBLK == b, or a hole if none
            k = m - ((m - b) % NBLK)
            want = _block(t, k) if k >= 1 else bytes(BS)
            assert image[b * BS : (b + 1) * BS] == want, f"v{t} block {b} not write {k}"
        return m

    for group in groups:
        assert [s.vdisk_name for s in group] == [f"v{t}" for t in range(nthreads)]
        included = {t: latest(full(s), t) for t, s in enumerate(group)}
        for u, m in included.items():
            if m == 0:
                continue
            acked_before = order[: seen_at_issue[(u, m)]]
            for t, j in acked_before:
                assert j <= included[t], (
                    f"{group[0].name}: write {m} of v{u} is in, but write {j} of v{t}, "
                    f"acknowledged before it was issued, is missing (v{t} has {included[t]})")
    images = {(s.vdisk_name, s.name): full(s) for group in groups for s in group}
    c = make_cluster.reopen(c)
    for (disk, name), image in images.items():
        assert full(c.snapshot(disk, name)) == image


def test_read_depth_is_bounded_by_collapse(make_cluster):
    c = make_cluster(collapse_depth=4)
    vd = c.create_vdisk("v", SIZE)
    rng = random.Random(11)
    model = bytearray(SIZE)
    frozen = {}
    for i in range(20):
        off = rng.randrange(SIZE - BS)
        payload = pattern(i, BS)
        vd.write(off, payload)
        model[off : off + BS] = payload
        vd.snapshot(f"s{i}")
        frozen[f"s{i}"] = bytes(model)
        c.drain()  # the drain collapses chains past the configured depth
        assert vd.read_depth <= 5, (i, vd.read_depth)
    assert full(vd) == bytes(model)
    for name, data in frozen.items():
        assert full(c.snapshot("v", name)) == data, name
    c = make_cluster.reopen(c, collapse_depth=4)
    assert c.vdisk("v").read_depth <= 5
    for name, data in frozen.items():
        assert full(c.snapshot("v", name)) == data, name


def test_collapse_depth_must_be_positive(make_cluster):
    c = make_cluster()
    path = c.path
    c.close()
    with pytest.raises(nxstore.errors.InvalidArgument):
        nxstore.Cluster.open(path, collapse_depth=0)
    nxstore.Cluster.open(path).close()
