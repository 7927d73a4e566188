"""Target-side replica application (nxstore.replica) without a network."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash

import nxstore
from nxstore.errors import InvalidArgument, NotFound, ReadOnly
from nxstore.replication.replica import apply_snapshot, prune_replica, replica_snapshots

BS = 4096
SIZE = 64 * BS


def _blocks(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n * BS, dtype=np.uint8)


def _fps(data: np.ndarray) -> np.ndarray:
    rows = data.reshape(-1, BS)
    return np.frombuffer(b"".join(xxhash.xxh3_128_digest(r.tobytes()) for r in rows),
                         dtype=np.uint8).reshape(-1, 16)


def _receive(c: nxstore.Cluster, data: np.ndarray) -> np.ndarray:
    fps = _fps(data)
    c._ctx.store.put_blocks_known(data, fps)
    return fps


def _apply(c, name, indices, fps, base=None, created=1.0):
    return apply_snapshot(c, source_cluster="src", source_site="paris", vdisk="db",
                          container="default", snapshot=name, created_at=created, size=SIZE,
                          base_snapshot=base, indices=np.asarray(indices, dtype=np.uint64),
                          fingerprints=fps)


def test_seed_incremental_and_read_only(make_cluster):
    c = make_cluster(block_size=BS)
    data = _blocks(1, 8)
    fps = _receive(c, data)
    s1 = _apply(c, "s1", range(8), fps)
    assert s1.read(0, 8 * BS) == data.tobytes()
    assert s1.read(8 * BS, BS) == bytes(BS)
    # incremental: block 2 rewritten, block 3 zeroed
    new = _blocks(2, 1)
    fps2 = np.concatenate([_receive(c, new), np.zeros((1, 16), np.uint8)])
    s2 = _apply(c, "s2", [2, 3], fps2, base="s1", created=2.0)
    expect = bytearray(data.tobytes())
    expect[2 * BS:3 * BS] = new.tobytes()
    expect[3 * BS:4 * BS] = bytes(BS)
    assert s2.read(0, 8 * BS) == bytes(expect)
    assert s1.read(0, 8 * BS) == data.tobytes()  # the previous replica snapshot is intact
    vd = c.vdisk("paris:db")
    assert vd.read_only and vd.read(0, 8 * BS) == bytes(expect)
    for op in (lambda: vd.write(0, b"x"), lambda: vd.trim(0, BS), lambda: vd.snapshot("x"),
               lambda: vd.restore(s1), lambda: vd.resize(2 * SIZE)):
        with pytest.raises(ReadOnly):
            op()
    assert _apply(c, "s2", [2, 3], fps2, base="s1", created=2.0).id == s2.id  # idempotent
    c = make_cluster.reopen(c)
    assert [s.name for s in replica_snapshots(c, "src", "db")] == ["s1", "s2"]
    assert c.snapshot("paris:db", "s2").read(0, 8 * BS) == bytes(expect)
    assert [r.vdisk for r in c.replicas()] == ["paris:db"]


def test_nothing_changes_when_blocks_or_base_are_missing(make_cluster):
    c = make_cluster(block_size=BS)
    fps = _receive(c, _blocks(3, 4))
    _apply(c, "s1", range(4), fps)
    unknown = _fps(_blocks(4, 1))
    with pytest.raises(NotFound, match="not stored"):
        _apply(c, "s2", [0], unknown, base="s1", created=2.0)
    with pytest.raises(NotFound, match="base snapshot"):
        _apply(c, "s2", [0], fps[:1], base="nope", created=2.0)
    with pytest.raises(InvalidArgument):
        _apply(c, "s2", [SIZE // BS], fps[:1], base="s1", created=2.0)
    assert [s.name for s in replica_snapshots(c, "src", "db")] == ["s1"]
    assert c.scrub() == []


def test_prune_keeps_the_newest(make_cluster):
    c = make_cluster(block_size=BS)
    fps = _receive(c, _blocks(5, 4))
    _apply(c, "s0", range(4), fps, created=0.0)
    for i in range(1, 5):
        _apply(c, f"s{i}", [i % 4], fps[i % 4: i % 4 + 1], base=f"s{i - 1}", created=float(i))
    assert prune_replica(c, "src", "db", 2) == ["s0", "s1", "s2"]
    assert [s.name for s in replica_snapshots(c, "src", "db")] == ["s3", "s4"]
    assert c.snapshot("paris:db", "s4").read(0, 4 * BS) == _blocks(5, 4).tobytes()
    with pytest.raises(InvalidArgument):
        prune_replica(c, "src", "db", 0)
