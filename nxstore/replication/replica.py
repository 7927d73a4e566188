"""Replica vDisks: the target side of replication, in engine terms.

A replica vDisk is read-only and named `<source site>:<vDisk>`; each snapshot
received becomes one of its snapshots, with the source's name and time. A
received snapshot is applied in one step: the new map layer is written, then
one catalogue transaction adds the layer, the snapshot and the vDisk's new
head. Until that commit the previous replica snapshot is what the vDisk shows;
after a crash before it, the orphaned layer file is removed at open.

A replica in a container with dedup off is stored as a write into that container would be:
every block its snapshots map has an extent of its own, unindexed (nothing dedups against it).
The wire still sends only the blocks the target lacks; a block the target held already, or
one the snapshot maps more than once, is copied here into a new extent of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InUse, InvalidArgument, NotFound
from ..names import check_name
from ..store.block_map import MapLayer
from ..store.catalog import Catalog, ContainerRow, SnapshotRow, VDiskRow
from ..store.snapshot import Snapshot
from ..store.vdisk import check_size, rows_restored_on_error
from .rows import ReplicaRow

if TYPE_CHECKING:
    from ..store.engine import Engine
    from ..store.vdisk import VDisk

log = logging.getLogger(__name__)
ZERO_FP = bytes(16)
COPY_BATCH_BYTES = 8 << 20  # bytes of blocks copied per step into a container with dedup off


@dataclass(frozen=True)
class ReplicaInfo:
    """One replica vDisk and its snapshots (oldest first)."""

    vdisk: str
    source_site: str
    source_cluster: str
    source_vdisk: str
    snapshots: tuple[Snapshot, ...]


def attach(engine: Engine) -> None:
    """Make deleting a replica vDisk drop its replica rows in the same transaction."""
    engine.on_vdisk_deleted(_drop_replica_rows)


def _drop_replica_rows(cat: Catalog, vdisk_id: int) -> None:
    for rep in cat.rows(ReplicaRow, "vdisk_id = ?", (vdisk_id,)):
        cat.delete(ReplicaRow, rep.id)


def promote_replica(engine: Engine, name: str, new_name: str | None = None) -> VDisk:
    """Turn replica vDisk `name` into a writable vDisk called `new_name` (default: `name`),
    keeping its snapshots (an activated or migrated PD runs on them).

    Raises NotFound (no vDisk `name`), InvalidArgument (it is not a replica, or a bad
    `new_name`), AlreadyExists (`new_name` is taken). Durable on return."""
    engine.vdisk(name)
    new_name = name if new_name is None else check_name("vDisk", new_name)

    def unlink(cat: Catalog, row: VDiskRow) -> bool:
        reps = cat.rows(ReplicaRow, "vdisk_id = ?", (row.id,))
        if not reps:
            raise InvalidArgument(f"vDisk {name!r} is not a replica")
        for rep in reps:
            cat.delete(ReplicaRow, rep.id)
        return True

    vd = engine.relabel_vdisk(name, read_only=False, new_name=new_name, in_transaction=unlink)
    log.info("replica vDisk %s promoted to writable vDisk %s", name, new_name)
    return vd


def make_replica(engine: Engine, name: str, source_cluster: str, source_site: str,
                 source_vdisk: str | None = None) -> None:
    """Turn writable vDisk `name` into the read-only replica of `source_vdisk` (default:
    `name`) of cluster `source_cluster` at site `source_site`: replication from there then
    finds its snapshots as the common base. A replica of the same source held by another
    vDisk is superseded (it stays, read-only, unlinked).

    Raises NotFound (no vDisk), InUse (a vDisk guard refuses: a VM or protection domain
    still uses it). Idempotent; durable on return."""
    engine.vdisk(name)
    engine.check_vdisk_unused(name)
    source = name if source_vdisk is None else source_vdisk
    engine.drain()  # a replica's head has nothing pending in RAM

    def link(cat: Catalog, row: VDiskRow) -> bool:
        for rep in cat.rows(ReplicaRow, "vdisk_id = ?", (row.id,)):
            if (rep.source_cluster, rep.source_vdisk) == (source_cluster, source):
                return False
            cat.delete(ReplicaRow, rep.id)
        for rep in cat.rows(ReplicaRow, "source_cluster = ? AND source_vdisk = ?",
                            (source_cluster, source)):
            cat.delete(ReplicaRow, rep.id)
        cat.insert(ReplicaRow(0, row.id, source_cluster, source_site, source))
        return True

    engine.relabel_vdisk(name, read_only=True, in_transaction=link)
    log.info("vDisk %s is now a replica of %s at site %s", name, source, source_site)


def replica_name(source_site: str, vdisk: str) -> str:
    return f"{source_site}:{vdisk}"


def find_replica(cluster: Engine, source_cluster: str, vdisk: str) -> VDiskRow | None:
    rows = cluster._ctx.catalog.rows(
        ReplicaRow, "source_cluster = ? AND source_vdisk = ?", (source_cluster, vdisk)
    )
    if not rows:
        return None
    found = cluster._ctx.catalog.rows(VDiskRow, "id = ?", (rows[0].vdisk_id,))
    return found[0] if found else None


def replica_snapshots(cluster: Engine, source_cluster: str, vdisk: str) -> list[Snapshot]:
    """Snapshots of the replica of (source_cluster, vdisk), oldest first ([] if none)."""
    row = find_replica(cluster, source_cluster, vdisk)
    return cluster.vdisk(row.name).snapshots() if row else []


def list_replicas(cluster: Engine) -> list[ReplicaInfo]:
    out = []
    for rep in cluster._ctx.catalog.rows(ReplicaRow):
        rows = cluster._ctx.catalog.rows(VDiskRow, "id = ?", (rep.vdisk_id,))
        if rows:
            snaps = tuple(cluster.vdisk(rows[0].name).snapshots())
            out.append(ReplicaInfo(rows[0].name, rep.source_site, rep.source_cluster,
                                   rep.source_vdisk, snaps))
    return out


def apply_snapshot(
    cluster: Engine, *, source_cluster: str, source_site: str, vdisk: str, container: str,
    snapshot: str, created_at: float, size: int, base_snapshot: str | None,
    indices: np.ndarray, fingerprints: np.ndarray,
    received: tuple[np.ndarray, np.ndarray] | None = None,
) -> Snapshot:
    """Apply a received snapshot atomically: the map entries (block index ->
    fingerprint, zero fingerprint = zeros) on top of `base_snapshot`'s layer.
    `received`: (fingerprints, extent ids) of the blocks stored unindexed for this
    snapshot alone (its container has dedup off); entries find them there first.

    Every fingerprint must already be stored (NotFound otherwise, nothing
    changes). Idempotent: a snapshot already applied is returned as is.
    """
    ctx = cluster._ctx
    existing = {s.name: s for s in replica_snapshots(cluster, source_cluster, vdisk)}
    if snapshot in existing:
        return existing[snapshot]
    parent = 0
    if base_snapshot is not None:
        if base_snapshot not in existing:
            raise NotFound(f"replica of {source_site}:{vdisk} has no base snapshot {base_snapshot!r}")
        parent = existing[base_snapshot].layer_id
    size = check_size(f"size of snapshot {snapshot!r}", size)
    indices = np.asarray(indices, dtype=np.uint64)
    fps = np.asarray(fingerprints, dtype=np.uint8).reshape(-1, 16)
    if indices.size != len(fps):
        raise InvalidArgument("map entries: indices and fingerprints differ in count")
    if indices.size and int(indices.max()) * ctx.block_size >= max(size, 1):
        raise InvalidArgument("map entries: a block index lies beyond the snapshot size")
    zero = ~fps.any(axis=1)
    ids = _resolve(cluster, fps, np.flatnonzero(~zero), received)
    lacking = int(np.count_nonzero(ids[~zero] == 0))
    if lacking:
        raise NotFound(f"{lacking} block(s) of snapshot {snapshot!r} are not stored here")
    order = np.argsort(indices, kind="stable")
    layer = MapLayer(indices[order], ids[order])
    vd = cluster.vdisk(row.name) if (row := find_replica(cluster, source_cluster, vdisk)) else None
    if vd is None:
        def link(cat: Catalog, row: VDiskRow) -> None:
            cat.insert(ReplicaRow(0, row.id, source_cluster, source_site, vdisk))

        vd = cluster.new_vdisk(replica_name(source_site, vdisk), size,
                               cluster.container(container).id, 0, read_only=True,
                               in_transaction=link)
    fresh = received[1] if received is not None else None
    return commit_layer(cluster, vd, parent, layer, snapshot, created_at, size, fresh)


def _resolve(cluster: Engine, fps: np.ndarray, nonzero: np.ndarray,
             received: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Extent ids of the entries `nonzero` of `fps` (0 elsewhere, and where not stored):
    from the blocks `received` for this snapshot alone first, then from the index."""
    ids = np.zeros(len(fps), dtype=np.uint64)
    if received is not None and received[0].size:
        keys = np.ascontiguousarray(received[0], np.uint8).view("V16").ravel()
        order = np.argsort(keys, kind="stable")
        wanted = np.ascontiguousarray(fps[nonzero]).view("V16").ravel()
        pos = np.minimum(np.searchsorted(keys[order], wanted), keys.size - 1)
        hit = keys[order][pos] == wanted
        ids[nonzero[hit]] = np.asarray(received[1], np.uint64)[order][pos[hit]]
        nonzero = nonzero[~hit]
    if nonzero.size:
        ids[nonzero] = cluster._ctx.store.lookup(fps[nonzero])
    return ids


def _own_extents(cluster: Engine, container: ContainerRow, layer: MapLayer,
                 fresh: np.ndarray | None) -> MapLayer:
    """`layer` with an extent of its own behind every nonzero entry (module docstring): an
    extent of `fresh` (stored unindexed for this layer) stays with the first entry naming
    it; every other entry's block is copied into a new unindexed extent."""
    ctx = cluster._ctx
    keys, vals = layer.items()
    vals = vals.copy()
    nonzero = np.flatnonzero(vals)
    _, first = np.unique(vals[nonzero], return_index=True)
    mine = np.zeros(nonzero.size, dtype=bool)
    if fresh is not None:
        mine[first] = np.isin(vals[nonzero[first]], fresh)
    copy = nonzero[~mine]
    step = max(1, COPY_BATCH_BYTES // ctx.block_size)
    for lo in range(0, copy.size, step):
        part = copy[lo:lo + step]
        # as stored: verified by put_stored, never recompressed
        vals[part] = ctx.store.put_stored(
            ctx.store.read_stored(vals[part]), dedup=False, compress=container.compression,
            container_id=container.id)
    return MapLayer(keys, vals)


def commit_layer(cluster: Engine, vd: VDisk, parent: int, layer: MapLayer, snapshot: str,
                 created_at: float, size: int, fresh: np.ndarray | None = None) -> Snapshot:
    """Make `layer` (entries over `parent`'s image) replica `vd`'s new snapshot `snapshot` and
    head, in one catalogue transaction after the layer file is durable. Used for received
    snapshots and for snapshots composed from NearSync episodes. In a container with dedup
    off every entry gets an extent of its own first (`fresh`: see `_own_extents`)."""
    ctx = cluster._ctx
    container = ctx.containers[vd._row.container_id]
    if not container.dedup:
        layer = _own_extents(cluster, container, layer, fresh)
    ctx.store.sync()  # the extents before the map that names them
    with vd._lock, ctx.map_lock:
        seq = ctx.oplog.last_seq
        ctx.oplog.sync(seq)
        with rows_restored_on_error(vd._row), ctx.catalog.transaction():
            layer_id = ctx.tree.create(parent, seq)
            ctx.tree.rewrite(layer_id, layer, seq)
            ctx.tree.freeze(layer_id)
            snap_row = ctx.catalog.insert(
                SnapshotRow(0, vd.id, snapshot, layer_id, created_at, size))
            vd._row.head_layer = ctx.tree.create(layer_id, seq)
            vd._row.size = size
            ctx.catalog.update(vd._row)
        # Writes a synchronous mirror applied to the old head are superseded by this
        # snapshot (their source sent it): drop them with the head, as restore does.
        vd.discard_unpersisted()
    ctx.prune()
    return Snapshot(ctx, snap_row, vd.name)


def _by_age(cluster: Engine, source_cluster: str, vdisk: str) -> list[Snapshot]:
    return sorted(replica_snapshots(cluster, source_cluster, vdisk),
                  key=lambda s: (s.created_at, s.id))


def prune_replica(cluster: Engine, source_cluster: str, vdisk: str, keep: int) -> list[str]:
    """Delete the oldest replica snapshots beyond the newest `keep`; return their names."""
    if not isinstance(keep, int) or keep < 1:
        raise InvalidArgument(f"keep must be a positive int, not {keep!r}")
    snaps = _by_age(cluster, source_cluster, vdisk)
    doomed = snaps[:-keep] if len(snaps) > keep else []
    for snap in doomed:
        snap.delete()
    return [s.name for s in doomed]


def delete_replica_snapshots(cluster: Engine, source_cluster: str, vdisk: str,
                             names: tuple[str, ...] | list[str]) -> list[str]:
    """Delete the replica snapshots of (source_cluster, vdisk) called `names` (names not
    held are skipped: a retried request finds them gone); return the names deleted,
    oldest first. Raises InUse, deleting nothing, if one is the newest replica snapshot:
    the source's next transfer is incremental on it (source._common_base)."""
    snaps = _by_age(cluster, source_cluster, vdisk)
    wanted = set(names)
    if snaps and snaps[-1].name in wanted:
        raise InUse(f"replica snapshot {vdisk}@{snaps[-1].name} is the newest one held here, "
                    "the base of the next incremental transfer: not deleted (nothing was)")
    doomed = [s for s in snaps if s.name in wanted]
    for snap in doomed:
        snap.delete()
    return [s.name for s in doomed]
