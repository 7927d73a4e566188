"""ExtentStore: round trips, dedup, reopen, torn tails, gc, and a model-based test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import nxstore.store.extent_store as es_mod
from nxstore.errors import ClosedError, Corruption, InvalidArgument, NotFound
from nxstore.store.extent_group import HEADER_BYTES, group_file_name
from nxstore.store.extent_store import ExtentStore
from nxstore.store.native import fingerprint_blocks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rand_blocks(rng, n, bs):
    return rng.integers(0, 256, n * bs, dtype=np.uint8)


def text_block(rng, bs):
    words = [b"alpha ", b"beta ", b"gamma ", b"delta ", b"storage ", b"extent "]
    out = b"".join(words[i] for i in rng.integers(0, len(words), bs // 4))
    return np.frombuffer(out[:bs], np.uint8)


def read(store, ids):
    out = np.empty(len(ids) * store.block_size, np.uint8)
    store.read_blocks(np.asarray(ids, np.uint64), out)
    return out


def abandon(store):
    """Drop a store like a killed process would: no sync, no checkpoint."""
    for fd in store._fds.values():
        os.close(fd)
    store._fds.clear()
    store._closed = True


def mixed(rng, bs):
    """random, duplicate, zero and compressible blocks."""
    a, b = rand_blocks(rng, 2, bs).reshape(2, bs)
    t = text_block(rng, bs)
    z = np.zeros(bs, np.uint8)
    rows = [a, z, t, b, a, a, z, t, rand_blocks(rng, 1, bs)]
    return np.concatenate(rows), len(rows)


@pytest.mark.parametrize("bs", [4096, 65536])
def test_round_trip_and_reopen(tmp_path, bs):
    rng = np.random.default_rng(bs)
    data, n = mixed(rng, bs)
    s = ExtentStore.open(str(tmp_path / "ex"), bs, create=True)
    ids = s.put_blocks(data)
    assert ids.dtype == np.uint64 and len(ids) == n
    assert ids[1] == ids[6] == 0
    assert ids[0] == ids[4] == ids[5] and ids[2] == ids[7]
    assert len(set(ids[ids != 0].tolist())) == 4
    assert (read(s, ids) == data).all()
    st_ = s.stats()
    assert st_["extents"] == 4 and st_["compressed_extents"] == 1
    assert st_["stored_bytes"] < 4 * bs and st_["raw_bytes"] == 4 * bs
    assert st_["index_entries"] == 4 and st_["table_memory_bytes"] > 0
    s.close()
    s = ExtentStore.open(str(tmp_path / "ex"), bs)
    assert (read(s, ids) == data).all() and s.stats()["extents"] == 4
    assert (s.put_blocks(data) == ids).all()  # index survived
    ids2 = s.put_blocks(rand_blocks(rng, 3, bs))
    s.close(checkpoint=False)  # tail scan on the next open
    s = ExtentStore.open(str(tmp_path / "ex"), bs)
    assert (read(s, ids) == data).all()
    assert s.contains(ids2) and s.stats()["extents"] == 7
    assert s.scrub() == []
    s.close()
    with pytest.raises(ClosedError):
        s.put_blocks(data)


def test_open_errors(tmp_path):
    with pytest.raises(NotFound):
        ExtentStore.open(str(tmp_path / "nope"), 4096)
    ExtentStore.open(str(tmp_path / "ex"), 4096, create=True).close()
    with pytest.raises(InvalidArgument):
        ExtentStore.open(str(tmp_path / "ex"), 8192)
    with pytest.raises(InvalidArgument):
        ExtentStore.open(str(tmp_path / "ex2"), 5000, create=True)
    s = ExtentStore.open(str(tmp_path / "ex"), 4096)
    with pytest.raises(InvalidArgument):
        s.put_blocks(np.zeros(100, np.uint8))
    with pytest.raises(InvalidArgument):
        s.read_blocks(np.array([1], np.uint64), np.empty(10, np.uint8))
    s.close()


def test_dedup_counts_lookup_fingerprints(tmp_path):
    bs = 4096
    rng = np.random.default_rng(1)
    s = ExtentStore.open(str(tmp_path / "ex"), bs, create=True)
    data = rand_blocks(rng, 8, bs)
    ids = s.put_blocks(np.concatenate([data, data]))
    assert (ids[:8] == ids[8:]).all() and s.stats()["extents"] == 8
    assert (s.put_blocks(data) == ids[:8]).all() and s.stats()["extents"] == 8
    fps, _ = fingerprint_blocks(data, bs)
    assert (s.lookup(fps) == ids[:8]).all()
    assert (s.fingerprints(ids[:8]) == fps).all()
    zfp, _ = fingerprint_blocks(np.zeros(bs, np.uint8), bs)
    assert (s.fingerprints(np.array([0], np.uint64)) == zfp).all()
    assert s.lookup(rand_blocks(rng, 1, 16).reshape(1, 16))[0] == 0
    assert s.contains(np.array([0, 1, 8], np.uint64)) and not s.contains(np.array([9], np.uint64))
    assert s.contains_each(np.array([0, 9], np.uint64)).tolist() == [True, False]
    with pytest.raises(Corruption):
        s.fingerprints(np.array([99], np.uint64))
    # put_blocks_known: same ids, no rehash
    assert (s.put_blocks_known(data, fps) == ids[:8]).all()
    new = rand_blocks(rng, 2, bs)
    nfps, _ = fingerprint_blocks(new, bs)
    kids = s.put_blocks_known(
        np.concatenate([new, np.zeros(bs, np.uint8)]), np.concatenate([nfps, zfp])
    )
    assert kids[2] == 0 and (read(s, kids[:2]) == new).all()
    s.close()


def test_dedup_false(tmp_path):
    bs = 4096
    rng = np.random.default_rng(2)
    s = ExtentStore.open(str(tmp_path / "ex"), bs, create=True)
    data = rand_blocks(rng, 4, bs)
    a = s.put_blocks(data)
    b = s.put_blocks(np.concatenate([data, np.zeros(bs, np.uint8)]), dedup=False)
    assert b[4] == 0 and len(set(a.tolist()) | set(b[:4].tolist())) == 8
    assert s.stats()["index_entries"] == 4 and s.stats()["extents"] == 8
    assert (read(s, b[:4]) == data).all()
    s.close()
    s = ExtentStore.open(str(tmp_path / "ex"), bs)  # the unindexed extents stay unindexed
    assert s.stats()["index_entries"] == 4 and (s.put_blocks(data) == a).all()
    s.close()


def test_verify_dedup(tmp_path, monkeypatch):
    """A fingerprint collision (faked: hash only the first 64 bytes) is caught."""
    bs = 4096
    real = es_mod.fingerprint_blocks

    def weak(buf, block_size):
        rows = np.ascontiguousarray(buf).reshape(-1, block_size)
        fps, _ = real(np.ascontiguousarray(rows[:, :64]), 64)
        return fps, ~rows.any(axis=1)

    def weak_verify(blocks, table, ids):  # reads check with the same weak hash
        fps, _ = weak(blocks, blocks.shape[1])
        bad = np.flatnonzero((fps != table[ids.astype(np.int64)]).any(axis=1))
        return int(bad[0]) if bad.size else len(ids)

    monkeypatch.setattr(es_mod, "fingerprint_blocks", weak)
    monkeypatch.setattr(es_mod, "verify_blocks", weak_verify)
    rng = np.random.default_rng(3)
    s = ExtentStore.open(str(tmp_path / "ex"), bs, create=True)
    a = rand_blocks(rng, 1, bs)
    b = a.copy()
    b[100:] ^= 0xFF  # same first 64 bytes: "collides" with a
    c = rand_blocks(rng, 1, bs)
    (ia,) = s.put_blocks(a)
    ib, ic, ib2 = s.put_blocks(np.concatenate([b, c, b]), verify_dedup=True)
    assert ib != ia and ib2 != ia and ic not in (ia, ib)
    assert (read(s, [ia, ib, ic, ib2]) == np.concatenate([a, b, c, b])).all()
    # in-batch collision: a2 shares a's prefix and is new in the batch with its twin
    d = rand_blocks(rng, 1, bs)
    d2 = d.copy()
    d2[-1] ^= 1
    i1, i2 = s.put_blocks(np.concatenate([d, d2]), verify_dedup=True)
    assert i1 != i2 and (read(s, [i1, i2]) == np.concatenate([d, d2])).all()
    (same,) = s.put_blocks(a, verify_dedup=True)  # a true duplicate still dedups
    assert same == ia
    (wrong,) = s.put_blocks(b)  # without verification the collision wins
    assert wrong == ia
    s.close()


def test_reopen_tail_scan_after_checkpoint(tmp_path):
    bs = 4096
    rng = np.random.default_rng(4)
    s = ExtentStore.open(str(tmp_path / "ex"), bs, create=True)
    d1 = rand_blocks(rng, 10, bs)
    i1 = s.put_blocks(d1)
    s.checkpoint()
    d2 = np.concatenate([rand_blocks(rng, 5, bs), np.tile(text_block(rng, bs), 1)])
    i2 = s.put_blocks(d2)
    s.sync()
    abandon(s)
    s = ExtentStore.open(str(tmp_path / "ex"), bs)
    assert (read(s, i1) == d1).all() and (read(s, i2) == d2).all()
    assert (s.put_blocks(d2) == i2).all()  # scanned extents were indexed
    assert s.stats()["extents"] == 16 and s.stats()["compressed_extents"] == 1
    s.close()


@pytest.mark.parametrize("checkpointed", [False, True])
def test_torn_tail_at_many_offsets(tmp_path, checkpointed):
    bs = 4096
    rng = np.random.default_rng(5)
    d1 = rand_blocks(rng, 4, bs)
    last = rand_blocks(rng, 1, bs)
    rec = HEADER_BYTES + bs
    cuts = sorted({1, 2, 7, 8, 55, 56, 57, 63, 64, 65, 100, 2048, rec - 1, rec - 64, rec - 65})
    for cut in [*cuts, "garbage", "zeros"]:
        d = str(tmp_path / f"ex{cut}")
        s = ExtentStore.open(d, bs, create=True)
        i1 = s.put_blocks(d1)
        if checkpointed:
            s.checkpoint()
        (il,) = s.put_blocks(last)
        s.sync()
        abandon(s)
        path = os.path.join(d, group_file_name(1))
        size = os.path.getsize(path)
        if cut == "garbage":
            with open(path, "r+b") as f:
                f.seek(size - 10)
                f.write(b"\xff" * 10)
        elif cut == "zeros":  # size extended but data never written
            with open(path, "r+b") as f:
                f.seek(size - rec + HEADER_BYTES)
                f.write(bytes(bs))
        else:
            os.truncate(path, size - cut)
        s = ExtentStore.open(d, bs)
        assert os.path.getsize(path) == size - rec, cut
        assert (read(s, i1) == d1).all() and not s.contains([il])
        assert s.stats()["extents"] == 4 and s.scrub() == []
        (again,) = s.put_blocks(last)
        assert (read(s, [again]) == last).all()
        s.close()
        s = ExtentStore.open(d, bs)
        assert (read(s, [again]) == last).all() and (read(s, i1) == d1).all()
        s.close()


def test_group_rollover(tmp_path, monkeypatch):
    monkeypatch.setattr(es_mod, "EXTENT_GROUP_BYTES", 40_000)
    bs = 4096
    rng = np.random.default_rng(6)
    s = ExtentStore.open(str(tmp_path / "ex"), bs, create=True)
    data = rand_blocks(rng, 50, bs)
    ids = s.put_blocks(data)
    assert s.stats()["groups"] >= 5
    for g in range(1, s.stats()["groups"]):
        assert os.path.getsize(tmp_path / "ex" / group_file_name(g)) < 40_000 + HEADER_BYTES + bs
    s.close(checkpoint=False)
    s = ExtentStore.open(str(tmp_path / "ex"), bs)
    assert (read(s, ids) == data).all()
    s.close()


def test_gc_frees_and_compacts(tmp_path, monkeypatch):
    monkeypatch.setattr(es_mod, "EXTENT_GROUP_BYTES", 60_000)
    bs = 4096
    rng = np.random.default_rng(7)
    s = ExtentStore.open(str(tmp_path / "ex"), bs, create=True)
    data = np.concatenate([rand_blocks(rng, 30, bs), np.tile(text_block(rng, bs), 1)])
    ids = s.put_blocks(data)
    groups_before = s.stats()["groups"]
    keep = np.arange(0, 31, 3)
    live = np.concatenate([ids[keep], ids[keep], [0]]).astype(np.uint64)
    stats = s.gc(live)
    assert stats["extents_freed"] == 31 - len(keep)
    assert stats["bytes_freed"] > 0 and stats["groups_compacted"] >= 1
    assert stats["file_bytes_reclaimed"] > 0
    assert (read(s, ids[keep]) == data.reshape(31, bs)[keep].reshape(-1)).all()
    assert not s.contains(ids[1:2]) and s.stats()["extents"] == len(keep)
    assert s.scrub() == []
    names = [n for n in os.listdir(tmp_path / "ex") if n.endswith(".eg")]
    assert len(names) == s.stats()["groups"] and max(names) > group_file_name(groups_before)
    # a freed block put again gets a fresh id
    (fresh,) = s.put_blocks(data[bs : 2 * bs])
    assert fresh > ids.max()
    s.close()
    s = ExtentStore.open(str(tmp_path / "ex"), bs)
    assert (read(s, ids[keep]) == data.reshape(31, bs)[keep].reshape(-1)).all()
    assert s.stats()["extents"] == len(keep) + 1 and s.scrub() == []
    assert s.gc(np.zeros(0, np.uint64))["extents_freed"] == len(keep) + 1
    assert s.stats()["extents"] == 0
    s.close()


class Crash(BaseException):
    pass


@pytest.mark.parametrize("point", ["before_sync", "in_checkpoint", "before_index", "before_unlink"])
def test_gc_crash_points(tmp_path, monkeypatch, point):
    import nxstore.store.extent_maintenance as em

    monkeypatch.setattr(es_mod, "EXTENT_GROUP_BYTES", 60_000)
    bs = 4096
    rng = np.random.default_rng(8)
    d = str(tmp_path / "ex")
    s = ExtentStore.open(d, bs, create=True)
    data = rand_blocks(rng, 40, bs)
    ids = s.put_blocks(data)
    s.checkpoint()
    keep = np.arange(1, 40, 4)

    def boom(*a, **k):
        raise Crash(point)

    if point == "before_sync":
        monkeypatch.setattr(s, "sync", boom)
    elif point == "in_checkpoint":
        monkeypatch.setattr(es_mod.ExtentTable, "save", boom)
    elif point == "before_index":
        monkeypatch.setattr(es_mod, "save_index", boom)
    else:
        monkeypatch.setattr(em.os, "unlink", boom)
    with pytest.raises(Crash):
        s.gc(ids[keep])
    monkeypatch.undo()
    abandon(s)
    s = ExtentStore.open(d, bs)
    assert (read(s, ids[keep]) == data.reshape(40, bs)[keep].reshape(-1)).all()
    assert s.scrub() == []
    s.gc(ids[keep])
    assert s.stats()["extents"] == len(keep)
    assert (read(s, ids[keep]) == data.reshape(40, bs)[keep].reshape(-1)).all()
    s.close()
    s = ExtentStore.open(d, bs)
    assert s.stats()["extents"] == len(keep) and s.scrub() == []
    s.close()


CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    import nxstore.store.extent_store as es
    es.EXTENT_GROUP_BYTES = 200_000
    d, bs = sys.argv[1], 4096
    s = es.ExtentStore.open(d, bs)
    live = np.load(d + "/../live.npy")
    rng = np.random.default_rng()
    print("go", flush=True)
    while True:
        s.put_blocks(rng.integers(0, 256, 20 * bs, dtype=np.uint8), dedup=False)
        s.sync()
        s.gc(live)
    """
)


def test_gc_sigkill(tmp_path):
    bs = 4096
    rng = np.random.default_rng(9)
    d = str(tmp_path / "ex")
    s = ExtentStore.open(d, bs, create=True)
    data = rand_blocks(rng, 60, bs)
    ids = s.put_blocks(data)
    keep = np.arange(0, 60, 2)
    np.save(str(tmp_path / "live.npy"), ids[keep])
    s.close()
    env = {**os.environ, "PYTHONPATH": REPO}
    for delay in (0.05, 0.3, 0.8, 1.5):
        p = subprocess.Popen([sys.executable, "-c", CHILD, d], stdout=subprocess.PIPE, env=env)
        assert p.stdout.readline().strip() == b"go"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        s = ExtentStore.open(d, bs)
        assert (read(s, ids[keep]) == data.reshape(60, bs)[keep].reshape(-1)).all(), delay
        assert s.scrub() == []
        s.close()


# -- model-based ---------------------------------------------------------------------
BS = 4096
_SEEDS = np.random.default_rng(99).integers(0, 256, (6, BS), dtype=np.uint8)
_SEEDS[5] = 0
_SEEDS[4] = np.frombuffer((b"abcdefgh" * (BS // 8)), np.uint8)


class ExtentStoreMachine(RuleBasedStateMachine):
    """Random put/read/gc/checkpoint/reopen against a dict id -> bytes."""

    @initialize()
    def setup(self):
        import tempfile

        self.orig_group = es_mod.EXTENT_GROUP_BYTES
        es_mod.EXTENT_GROUP_BYTES = 30_000
        self.dir = tempfile.mkdtemp(prefix="nxes-")
        self.store = ExtentStore.open(self.dir, BS, create=True)
        self.model: dict[int, bytes] = {}
        self.counter = 0

    def teardown(self):
        import shutil

        if hasattr(self, "store"):
            self.store.close()
            es_mod.EXTENT_GROUP_BYTES = self.orig_group
            shutil.rmtree(self.dir, ignore_errors=True)

    @rule(picks=st.lists(st.integers(0, 7), min_size=1, max_size=12), dedup=st.booleans(),
          verify=st.booleans())  # fmt: skip
    def put(self, picks, dedup, verify):
        rows = []
        for p in picks:
            if p < 6:
                rows.append(_SEEDS[p])
            else:  # unique block
                self.counter += 1
                b = _SEEDS[0].copy()
                b[:8] = np.frombuffer(self.counter.to_bytes(8, "little"), np.uint8)
                rows.append(b)
        data = np.concatenate(rows)
        ids = self.store.put_blocks(data, dedup=dedup, verify_dedup=verify)
        for i, row in zip(ids.tolist(), rows, strict=True):
            if i == 0:
                assert not row.any()
            else:
                assert self.model.setdefault(i, row.tobytes()) == row.tobytes()

    @rule(data=st.data())
    def gc(self, data):
        keys = sorted(self.model)
        keep = data.draw(st.lists(st.sampled_from(keys), unique=True)) if keys else []
        self.store.gc(np.array(keep, np.uint64))
        self.model = {k: self.model[k] for k in keep}

    @rule()
    def checkpoint(self):
        self.store.checkpoint()

    @rule(clean=st.booleans())
    def reopen(self, clean):
        if clean:
            self.store.close()
        else:
            self.store.sync()
            abandon(self.store)
        self.store = ExtentStore.open(self.dir, BS)

    @invariant()
    def reads_match(self):
        if not hasattr(self, "store"):
            return
        keys = sorted(self.model)
        assert self.store.stats()["extents"] == len(keys)
        if keys:
            got = read(self.store, keys)
            assert got.tobytes() == b"".join(self.model[k] for k in keys)


TestExtentStoreMachine = ExtentStoreMachine.TestCase
TestExtentStoreMachine.settings = settings(
    max_examples=40, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip


# -- the coalescing read path (extent_read.load_records) --------------------------------------
def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def scattered_store(tmp_path, monkeypatch, n=96, bs=4096, seed=20):
    """A store over several groups whose vDisk-like id array `vids` (for the blocks
    in `data`) has every other block rewritten in random order, one at a time,
    with some compressible blocks: reads hit many small runs and gaps."""
    monkeypatch.setattr(es_mod, "EXTENT_GROUP_BYTES", 100_000)
    rng = np.random.default_rng(seed)
    s = ExtentStore.open(str(tmp_path / "ex"), bs, create=True)
    data = rand_blocks(rng, n, bs).reshape(n, bs)
    data[5] = text_block(rng, bs)
    vids = s.put_blocks(data.reshape(-1)).copy()
    for i in rng.permutation(np.arange(0, n, 2)).tolist():
        data[i] = text_block(rng, bs) if i % 6 == 0 else rand_blocks(rng, 1, bs)
        vids[i] = s.put_blocks(data[i])[0]
    assert s.stats()["groups"] >= 4 and s.stats()["compressed_extents"] >= 5
    return s, data, vids


def test_read_many_small_runs_in_several_groups(tmp_path, monkeypatch):
    s, data, vids = scattered_store(tmp_path, monkeypatch)
    bs, n = s.block_size, len(vids)
    assert (read(s, vids) == data.reshape(-1)).all()
    rng = np.random.default_rng(21)
    for _ in range(5):  # any order, with repeats and zero blocks
        pick = rng.integers(0, n, 150)
        q = vids[pick].copy()
        q[::7] = 0
        want = data[pick].copy()
        want[::7] = 0
        assert (read(s, q) == want.reshape(-1)).all()
    # the same through a non-contiguous destination (scrub-like callers)
    from nxstore.store.extent_read import load_records

    dst = np.zeros((n, 2 * bs), np.uint8)[:, :bs]
    assert load_records(s, vids, dst, np.arange(n)[::-1].copy()) == {}
    assert (dst[::-1] == data).all()
    assert s.scrub() == []
    s.close()


def spy_runs(monkeypatch):
    """Record the runs array (fd, offset, first iovec, iovecs) and iov limit of
    every native read call of extent_read."""
    import nxstore.store.extent_read as er

    calls = []
    real = er.preadv_runs

    def spy(buffers, iovecs, runs, iov_limit):
        calls.append((runs.copy(), iov_limit))
        return real(buffers, iovecs, runs, iov_limit)

    monkeypatch.setattr(er, "preadv_runs", spy)
    return calls


def test_read_across_more_groups_than_one_call_takes(tmp_path, monkeypatch):
    """A read over more groups than GROUPS_PER_CALL takes several native calls of
    at most that many groups, so opening one call's fds never closes another of
    its fds (here the fd cache holds just two)."""
    import nxstore.store.extent_read as er

    s, data, vids = scattered_store(tmp_path, monkeypatch)
    groups = set(s._table.group[vids.astype(np.int64)].tolist())
    monkeypatch.setattr(er, "GROUPS_PER_CALL", 2)
    monkeypatch.setattr(es_mod, "_MAX_FDS", 2)
    calls = spy_runs(monkeypatch)
    assert (read(s, vids) == data.reshape(-1)).all()
    assert len(groups) >= 4 and len(calls) == -(-len(groups) // 2)
    assert all(len(set(runs[:, 0].tolist())) <= 2 for runs, _ in calls)
    s.close()


@pytest.mark.parametrize("limit", [None, 7])
def test_read_more_iovecs_than_iov_max(tmp_path, monkeypatch, limit):
    """~1,440 adjacent records are one run of ~4,300 iovecs: the native call
    splits it into several preadv calls (the kernel fails one of more than
    IOV_MAX = 1024 iovecs with EINVAL, so a missed split fails the read); with a
    tiny limit, runs with gaps and compressed records are split every few iovecs."""
    import nxstore.store.extent_read as er

    if limit is not None:
        monkeypatch.setattr(er, "_IOV_LIMIT", limit)
    bs, n = 4096, 1500
    rng = np.random.default_rng(22)
    data = rand_blocks(rng, n, bs).reshape(n, bs)
    data[::50] = text_block(rng, bs)  # repeated: one compressed extent read many times
    data[1::50] = np.arange(bs) % 251  # compressible, another one
    s = ExtentStore.open(str(tmp_path / "ex"), bs, create=True)
    ids = s.put_blocks(data.reshape(-1))
    assert s.stats()["compressed_extents"] == 2
    calls = spy_runs(monkeypatch)
    assert (read(s, ids) == data.reshape(-1)).all()
    assert (read(s, ids[::2]) == data[::2].reshape(-1)).all()  # gaps coalesced
    assert [len(runs) for runs, _ in calls] == [1, 1]
    assert all(runs[0, 3] > 1024 and lim == (limit or 1024) for runs, lim in calls)
    s.close()


def test_corrupt_header_mid_coalesced_run_names_the_extent(tmp_path, monkeypatch):
    bs, n = 4096, 400
    rng = np.random.default_rng(23)
    data = rand_blocks(rng, n, bs)
    s = ExtentStore.open(str(tmp_path / "ex"), bs, create=True)
    ids = s.put_blocks(data)
    calls = spy_runs(monkeypatch)
    query = ids[::3][::-1].copy()  # gaps of two records, reverse batch order
    assert (read(s, query) == data.reshape(n, bs)[::3][::-1].reshape(-1)).all()
    assert len(calls) == 1 and len(calls[0][0]) == 1  # one coalesced run
    path = os.path.join(str(tmp_path / "ex"), group_file_name(1))
    mid, later = int(query[60]), int(query[20])  # later in the file, earlier in the batch
    flip_byte(path, int(s._table.offset[mid]) + 25)  # container: only the checksum sees it
    with pytest.raises(Corruption) as ei:
        read(s, query)
    assert ei.value.extent_id == mid and ei.value.batch_index == 60
    assert ei.value.group == 1 and ei.value.offset == int(s._table.offset[mid])
    assert "bad record header" in str(ei.value)
    flip_byte(path, int(s._table.offset[later]) + HEADER_BYTES + 100)  # a payload byte
    with pytest.raises(Corruption) as ei:
        read(s, query)
    assert ei.value.extent_id == later and ei.value.batch_index == 20
    # the extents around them still read, and a repeated bad extent is named first
    ok = np.delete(query, [20, 60])
    assert (
        read(s, ok)
        == data.reshape(n, bs)[::3][::-1][np.delete(np.arange(len(query)), [20, 60])].reshape(-1)
    ).all()
    with pytest.raises(Corruption) as ei:
        read(s, np.array([ids[1], mid, ids[2], mid], np.uint64))
    assert ei.value.extent_id == mid and ei.value.batch_index == 1
    s.close()


def test_truncated_group_mid_run(tmp_path):
    bs, n = 4096, 20
    rng = np.random.default_rng(24)
    data = rand_blocks(rng, n, bs)
    s = ExtentStore.open(str(tmp_path / "ex"), bs, create=True)
    ids = s.put_blocks(data)
    s.sync()
    cut = int(s._table.offset[int(ids[12])]) + 100  # inside record 12's payload
    os.truncate(os.path.join(str(tmp_path / "ex"), group_file_name(1)), cut)
    assert (read(s, ids[:12]) == data[: 12 * bs]).all()
    with pytest.raises(Corruption, match="truncated") as ei:
        read(s, ids[::-1])
    assert ei.value.extent_id == int(ids[-1]) and ei.value.batch_index == 0
    with pytest.raises(Corruption, match="truncated") as ei:
        read(s, ids[10:])
    assert ei.value.extent_id == int(ids[12]) and ei.value.batch_index == 2
    s.close(checkpoint=False)


def test_read_with_a_missing_group_among_several(tmp_path, monkeypatch):
    s, data, vids = scattered_store(tmp_path, monkeypatch)
    in2 = s._table.group[vids.astype(np.int64)] == 2
    assert in2.any() and not in2.all()
    d = s.directory
    s.close()
    os.unlink(os.path.join(d, group_file_name(2)))
    s = ExtentStore.open(d, s.block_size)
    first = int(np.argmax(in2))
    with pytest.raises(Corruption, match="missing") as ei:
        read(s, vids)
    assert ei.value.batch_index == first and ei.value.extent_id == int(vids[first])
    assert ei.value.group == 2
    assert (read(s, vids[~in2]) == data[~in2].reshape(-1)).all()
    s.close()
