"""Replicated data is stored as the target container says: into a container with dedup off,
every block a replica snapshot maps gets an extent of its own (duplicates inside the snapshot,
blocks the target held already in another container, blocks of an earlier snapshot), as a
write into that container would; into one with dedup on, blocks are shared. Snapshots
composed from NearSync episodes likewise. Real `nxstore serve` targets; counts read from
their stats with the daemon stopped."""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import pytest
from sites_helper import Daemon

import nxstore
from nxstore.nearsync.rows import LWSEpisodeRow

BS = 4096
SECRET = "container policy shared secret"


def assert_own_extents(t: nxstore.Cluster, vdisk: str) -> int:
    """Every extent the snapshots of `vdisk` map (their own layers) is mapped once and is not
    in the dedup index (nothing else can share it); returns how many there are."""
    ids = np.concatenate([t._ctx.tree.layer(s.layer_id).items()[1]
                          for s in t.vdisk(vdisk).snapshots()])
    ids = ids[ids != 0]
    assert np.unique(ids).size == ids.size
    assert (t._ctx.store.lookup(t._ctx.store.fingerprints(ids)) != ids).all()
    return int(ids.size)


def _secret(tmp_path) -> str:
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    os.chmod(secret, 0o600)
    return str(secret)


@pytest.mark.parametrize("dedup", [False, True])
def test_replica_follows_the_target_containers_dedup_policy(tmp_path, dedup):
    a, b, c = (os.urandom(BS) for _ in range(3))
    tail = os.urandom(15 * BS)
    target = str(tmp_path / "canada")
    with nxstore.Cluster.create(target, block_size=BS, background=False) as t:
        t.create_container("dr", dedup=dedup, compression=False)
        local = t.create_vdisk("local", 4 * BS)  # block c, already held in another container
        local.write(0, c)
        local.flush()
        t.drain()
        assert t.stats()["extents"] == 1
    d = Daemon.start(target, _secret(tmp_path))
    try:
        with nxstore.Cluster.create(str(tmp_path / "paris"), block_size=BS,
                                    background=False) as src:
            src.add_remote_site("canada", d.address, SECRET, vstore_mapping={"default": "dr"})
            vd = src.create_vdisk("db", 64 * BS)
            vd.write(0, a * 16 + b * 16 + c + tail)   # 48 mapped blocks, 18 distinct
            vd.flush()
            s1 = vd.snapshot("s1")
            src.replicate(s1, "canada")
            vd.write(40 * BS, a + os.urandom(BS))    # an old block again, and a new one
            vd.flush()
            s2 = vd.snapshot("s2")
            src.replicate(s2, "canada")
            want = {s.name: s.read(0, s.size) for s in (s1, s2)}
    finally:
        d.stop()
    with nxstore.Cluster.open(target, background=False) as t:
        replica = t.vdisk("paris:db")
        assert replica.container == "dr"
        assert {s.name: s.read(0, s.size) for s in replica.snapshots()} == want
        # dedup off: the local block + one extent per mapped block of s1 (48) and per block
        # s2 changed (2); dedup on: a, b, the 15 of the tail and the new block (c is shared).
        expected = 1 + 48 + 2 if not dedup else 1 + 2 + 15 + 1
        stats = t.stats()
        assert stats["extents"] == expected
        assert stats["unique_bytes"] == expected * BS
        t.gc()
        assert t.stats()["extents"] == expected  # nothing was left over for gc to reclaim
        assert t.scrub() == []
        if not dedup:
            assert assert_own_extents(t, "paris:db") == 48 + 2


def test_composed_snapshots_follow_a_no_dedup_container(tmp_path, make_cluster, clock):
    """A NearSync PD into a container with dedup off: each composed snapshot's blocks get
    extents of their own, though the episodes' blocks arrive indexed (episodes name them by
    fingerprint)."""
    target = str(tmp_path / "canada")
    with nxstore.Cluster.create(target, block_size=BS, background=False) as t:
        t.create_container("dr", dedup=False, compression=False)
    d = Daemon.start(target, _secret(tmp_path))
    try:
        src = make_cluster("paris", site_name="paris", clock=clock)
        src.configure_nearsync(compose_every=2)
        src.add_remote_site("canada", d.address, SECRET, vstore_mapping={"default": "dr"})
        vd = src.create_vdisk("db", 16 * BS)
        pd = src.create_protection_domain("pd", entities=[vd])
        pd.add_schedule(every=timedelta(seconds=1), keep_local=9, keep_remote={"canada": 9})
        block = os.urandom(BS)
        for i in range(6):
            vd.write((i % 4) * BS, block)            # one block in several places
            vd.write((8 + i) * BS, os.urandom(BS))
            clock.advance(1)
            assert all(run.ok for run in src.run_schedules())
        want = {s.name: s.read(0, s.size) for s in vd.snapshots()}
    finally:
        d.stop()
    with nxstore.Cluster.open(target, background=False) as t:
        got = {s.name: s.read(0, s.size) for s in t.vdisk("paris:db").snapshots()}
        assert all(got[n] == want[n] for n in got), sorted(got)
        episodes = t._ctx.catalog.rows(LWSEpisodeRow)
        assert len({r.compose_as for r in episodes if r.compose_as} & set(got)) >= 2
        assert_own_extents(t, "paris:db")
