"""The remote side of NearSync: episode chains, restore points, composing and restoring.

A replica vDisk's episodes form chains: each chain starts on a vDisk snapshot (the seed, or a
snapshot composed earlier) with an episode marked `first`, and every later episode names its
predecessor (`prev_seq`). The image at an LWS point is the chain's snapshot plus the episodes up
to that point, applied in order: full blocks by fingerprint, partial ranges patched onto the
block as it was. `accumulate` computes that as block-map entries over the snapshot's layer
(patched blocks are stored as new extents), which serves both uses:

* compose: the entries become a new frozen layer and snapshot of the replica (same name and
  time as the source's snapshot taken with that marker, so later incremental replication finds
  it as a common base), in one catalogue transaction (`replica.commit_layer`): a crash leaves
  the previous snapshot and every episode as they were, and composing again is idempotent.
* restore: a clone of the chain's snapshot gets the entries' bytes written into it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from ..constants import NEARSYNC_DIR
from ..errors import InvalidArgument, NotFound
from ..protection.modes import RestorePoint
from ..replication.rows import ReplicaRow
from ..store.block_map import MapLayer, chain_lookup
from ..store.catalog import VDiskRow
from ..store.snapshot import Snapshot
from . import episode_file
from .episode import range_positions
from .rows import LWSEpisodeRow

if TYPE_CHECKING:
    from ..store.engine import Engine
    from ..store.vdisk import VDisk

log = logging.getLogger(__name__)

RESTORE_CHUNK_BYTES = 16 * 1024 * 1024  # bytes written per call when restoring


def episode_path(cluster: Engine, row: LWSEpisodeRow) -> str:
    return os.path.join(cluster.path, NEARSYNC_DIR, row.file)


def episode_rel(vdisk_id: int, seq: int) -> str:
    return os.path.join(str(vdisk_id), episode_file.file_name(seq))


def snapshot_named(cluster: Engine, vdisk_name: str, name: str) -> Snapshot | None:
    return next((s for s in cluster.vdisk(vdisk_name).snapshots() if s.name == name), None)


def chain(cluster: Engine, vdisk_id: int, base_snapshot: str,
          upto_seq: int | None = None) -> list[LWSEpisodeRow]:
    """The unbroken chain of episodes on `base_snapshot` (up to `upto_seq`), oldest first."""
    rows = cluster._ctx.catalog.rows(LWSEpisodeRow, "vdisk_id = ? AND base_snapshot = ?",
                                     (vdisk_id, base_snapshot))
    out: list[LWSEpisodeRow] = []
    for row in sorted(rows, key=lambda r: r.seq):
        if upto_seq is not None and row.seq > upto_seq:
            break
        if not (row.first if not out else row.prev_seq == out[-1].seq):
            break
        out.append(row)
    return out


def accumulate(cluster: Engine, vd: VDisk, base: Snapshot,
               episodes: list[LWSEpisodeRow]) -> MapLayer:
    """Block-map entries over `base`'s layer that make it read as after `episodes`."""
    ctx = cluster._ctx
    bs = ctx.block_size
    store = ctx.store
    container = ctx.containers[vd._row.container_id]
    acc = MapLayer()
    for row in episodes:
        ep = episode_file.read(episode_path(cluster, row))
        if ep.indices.size:
            ids = np.zeros(ep.indices.size, dtype=np.uint64)
            nonzero = ep.fingerprints.any(axis=1)
            ids[nonzero] = store.lookup(ep.fingerprints[nonzero])
            if (ids[nonzero] == 0).any():
                raise NotFound(f"{vd.name}: blocks of episode {row.name} are not stored here")
            acc.set(ep.indices, ids)
        if ep.offsets.size:
            blocks = np.unique(ep.offsets // np.uint64(bs))
            cur, found = acc.lookup(blocks)
            if not found.all():
                with ctx.map_lock:
                    cur[~found] = chain_lookup(ctx.tree.chain(base.layer_id), blocks[~found])
            buf = np.empty(blocks.size * bs, dtype=np.uint8)
            store.read_blocks(cur, buf)
            buf[range_positions(ep.offsets, ep.lengths, blocks, bs)] = ep.range_data
            acc.set(blocks, store.put_blocks(buf, dedup=container.dedup,
                                             compress=container.compression,
                                             verify_dedup=container.verify_dedup,
                                             container_id=container.id))
    return acc


def compose(cluster: Engine, row: LWSEpisodeRow, name: str | None = None) -> Snapshot | None:
    """Compose replica snapshot `name` (default `row.compose_as`), timed as the LWS, from the
    chain's snapshot plus the episodes up to `row` (see module docstring). Idempotent; None if
    its chain is broken."""
    from ..replication.replica import commit_layer

    name = name or row.compose_as
    vd = _replica_vdisk(cluster, row.vdisk_id)
    existing = snapshot_named(cluster, vd.name, name)
    if existing is not None:
        return existing
    base = snapshot_named(cluster, vd.name, row.base_snapshot)
    episodes = chain(cluster, row.vdisk_id, row.base_snapshot, row.seq)
    if base is None or not episodes or episodes[-1].seq != row.seq:
        log.warning("%s: cannot compose %s: its episode chain is incomplete", vd.name, name)
        return None
    layer = accumulate(cluster, vd, base, episodes)
    snap = commit_layer(cluster, vd, base.layer_id, layer, name, row.created_at, row.size)
    log.info("%s: composed snapshot %s from %s + %d LWS episodes", vd.name, snap.name,
             base.name, len(episodes))
    return snap


def compose_pending(cluster: Engine) -> list[Snapshot]:
    """Compose every snapshot an episode asks for that does not exist yet (after a crash or
    a restart), oldest first; drop episodes whose chain's snapshot is gone and episode files
    no row names. Returns the snapshots composed."""
    drop_orphans(cluster)
    made = []
    rows = cluster._ctx.catalog.rows(LWSEpisodeRow, "compose_as != ''")
    for row in sorted(rows, key=lambda r: r.seq):
        vd = _replica_vdisk(cluster, row.vdisk_id)
        if snapshot_named(cluster, vd.name, row.compose_as) is None:
            snap = compose(cluster, row)
            if snap is not None:
                made.append(snap)
    return made


def drop_orphans(cluster: Engine) -> int:
    """Delete episodes whose replica or chain snapshot no longer exists (remote retention
    pruned it), then episode files no row names (a crash between file and row)."""
    cat = cluster._ctx.catalog
    doomed = []
    for row in cat.rows(LWSEpisodeRow):
        vds = cat.rows(VDiskRow, "id = ?", (row.vdisk_id,))
        if not vds or snapshot_named(cluster, vds[0].name, row.base_snapshot) is None:
            doomed.append(row)
    if doomed:
        with cat.transaction():
            for row in doomed:
                cat.delete(LWSEpisodeRow, row.id)
    named = {r.file for r in cat.rows(LWSEpisodeRow)}
    top = os.path.join(cluster.path, NEARSYNC_DIR)
    removed = 0
    for sub, _, files in os.walk(top):
        for name in files:
            rel = os.path.relpath(os.path.join(sub, name), top)
            if rel not in named:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(top, rel))
                removed += 1
    return removed


def gc_roots(cluster: Engine) -> np.ndarray:
    """Extent ids of the full blocks every stored episode names (gc must keep them)."""
    parts = [np.zeros(0, dtype=np.uint64)]
    for row in cluster._ctx.catalog.rows(LWSEpisodeRow):
        with contextlib.suppress(OSError):
            fps = episode_file.read(episode_path(cluster, row)).fingerprints
            parts.append(cluster._ctx.store.lookup(fps[fps.any(axis=1)]))
    return np.concatenate(parts)


# -- restore points ---------------------------------------------------------------------------

def restore_points(cluster: Engine, pd_name: str) -> list[RestorePoint]:
    """The restore points of protection domain `pd_name` held here, oldest first: vDisk
    snapshots present on every replica vDisk its LWS episodes name, and every LWS whose
    episode every member holds on an unbroken chain. NotFound if nothing of it is here."""
    cat = cluster._ctx.catalog
    episodes = cat.rows(LWSEpisodeRow, "group_name = ?", (pd_name,))
    if not episodes:
        raise NotFound(f"no NearSync restore points of protection domain {pd_name!r} here")
    vdisks = {r.vdisk_id: _replica_vdisk(cluster, r.vdisk_id).name for r in episodes}
    points: list[RestorePoint] = []
    names = sorted(vdisks.values())
    snaps = [{s.name: s for s in cluster.vdisk(n).snapshots()} for n in names]
    for name in set.intersection(*(set(s) for s in snaps)):
        points.append(RestorePoint("snapshot", name, snaps[0][name].created_at, 0, tuple(names)))
    held: dict[int, list[LWSEpisodeRow]] = {}
    for vid in vdisks:
        for base in {r.base_snapshot for r in episodes if r.vdisk_id == vid}:
            for row in chain(cluster, vid, base):
                held.setdefault(row.seq, []).append(row)
    for seq, rows in held.items():
        if len(rows) == rows[0].members:
            points.append(RestorePoint("lws", rows[0].name, rows[0].created_at, seq,
                                       tuple(sorted(vdisks[r.vdisk_id] for r in rows))))
    return sorted(points, key=lambda p: (p.created_at, p.seq))


def restore(cluster: Engine, point: RestorePoint, prefix: str) -> list[VDisk]:
    """New writable vDisks `<prefix><source vDisk>` reading exactly as `point` (a clone of
    the chain's snapshot with the episodes applied, for an LWS). Raises InvalidArgument (bad
    point or prefix), AlreadyExists, NotFound. Durable on return."""
    if not isinstance(point, RestorePoint) or point.kind not in ("snapshot", "lws"):
        raise InvalidArgument(f"not a restore point: {point!r}")
    if not isinstance(prefix, str) or not prefix:
        raise InvalidArgument("restore needs a non-empty name prefix")
    made: list[VDisk] = []
    for name in point.vdisks:
        replica = cluster.vdisk(name)
        rep = cluster._ctx.catalog.rows(ReplicaRow, "vdisk_id = ?", (replica.id,))
        target = prefix + (rep[0].source_vdisk if rep else name)
        if point.kind == "snapshot":
            made.append(cluster.clone(cluster.snapshot(name, point.name), target))
            continue
        rows = cluster._ctx.catalog.rows(LWSEpisodeRow, "vdisk_id = ? AND seq = ?",
                                         (replica.id, point.seq))
        if not rows:
            raise NotFound(f"{name} holds no episode of LWS {point.name}")
        base = cluster.snapshot(name, rows[0].base_snapshot)
        layer = accumulate(cluster, replica, base,
                           chain(cluster, replica.id, rows[0].base_snapshot, point.seq))
        vd = cluster.clone(base, target)
        if rows[0].size > vd.size:
            vd.resize(rows[0].size)
        _write_entries(cluster, vd, layer)
        made.append(vd)
    return made


def _write_entries(cluster: Engine, vd: VDisk, layer: MapLayer) -> None:
    """Write the blocks `layer` maps into `vd`, one call per run of consecutive blocks."""
    keys, ids = layer.items()
    bs = cluster.block_size
    if keys.size:
        keys = keys.astype(np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(keys) != 1) + 1, keys.size]
        per = max(1, RESTORE_CHUNK_BYTES // bs)
        for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
            for a in range(lo, hi, per):
                b = min(hi, a + per)
                buf = np.empty((b - a) * bs, dtype=np.uint8)
                cluster._ctx.store.read_blocks(ids[a:b], buf)
                off = int(keys[a]) * bs
                vd.write(off, buf[: max(0, min(buf.size, vd.size - off))])
    vd.flush()


def _replica_vdisk(cluster: Engine, vdisk_id: int) -> VDisk:
    rows = cluster._ctx.catalog.rows(VDiskRow, "id = ?", (vdisk_id,))
    if not rows:
        raise NotFound(f"replica vDisk id {vdisk_id} was deleted")
    return cluster.vdisk(rows[0].name)
