"""Snapshots: immutable, metadata-only images of a vDisk, and what is built on them.

Taking a snapshot drains the vDisk's dirty blocks (bounded by the OpLog, not by
the disk size), freezes its head layer and gives the vDisk a new empty head in
one catalogue transaction. Clones and restores are new heads on a snapshot's
layer. Nothing copies block data.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING

import numpy as np

from ..errors import AlreadyExists, NotFound
from ..names import check_name
from .block_map import chain_lookup, flatten, written_blocks
from .catalog import SnapshotRow
from .context import ClusterContext
from .vdisk import (
    Run,
    allocated_runs,
    block_ranges,
    check_range,
    lock_group,
    read_image,
    rows_restored_on_error,
)
from .verify import Progress as VerifyProgress
from .verify import RangeFingerprints, VerifyResult, block_fingerprints, verify_image

if TYPE_CHECKING:
    from .vdisk import VDisk


class Snapshot:
    """A read-only point-in-time image of a vDisk."""

    def __init__(self, ctx: ClusterContext, row: SnapshotRow, vdisk_name: str) -> None:
        self._ctx = ctx
        self._row = row
        self.vdisk_name = vdisk_name

    @property
    def name(self) -> str:
        return self._row.name

    @property
    def id(self) -> int:
        return self._row.id

    @property
    def vdisk_id(self) -> int:
        return self._row.vdisk_id

    @property
    def created_at(self) -> float:
        """Seconds since the epoch on the cluster's clock."""
        return self._row.created_at

    @property
    def size(self) -> int:
        return self._row.size

    @property
    def layer_id(self) -> int:
        return self._row.layer_id

    def __repr__(self) -> str:
        return f"Snapshot({self.vdisk_name!r}@{self.name!r}, size={self.size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("snapshot", self.id))

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the image; verified like vDisk reads (Corruption on damage)."""
        self._check_alive()
        offset, length = check_range(f"read of snapshot {self}", offset, length, self.size)
        return read_image(
            self._ctx, self.layer_id, f"snapshot {self.vdisk_name}@{self.name}", offset, length
        )

    def allocated_ranges(self, offset: int, length: int) -> list[Run]:
        """Which parts of [offset, offset+length) of the image hold data; the contract of
        VDisk.allocated_ranges (allocated False: unwritten or trimmed when the snapshot
        was taken)."""
        self._check_alive()
        offset, length = check_range(f"allocation of snapshot {self}", offset, length,
                                     self.size)
        return allocated_runs(self._ctx, self.layer_id, offset, length)

    def verify(self, progress: VerifyProgress | None = None) -> VerifyResult:
        """Read and verify every allocated block of the snapshot; the contract of
        VDisk.verify. Raises NotFound (deleted)."""
        self._check_alive()
        return verify_image(self._ctx, self.layer_id, f"snapshot {self.vdisk_name}@{self.name}",
                            self.size, progress=progress)

    def block_fingerprints(self, first: int, count: int, *,
                           reread: bool = False) -> RangeFingerprints:
        """Extent ids and content fingerprints of blocks first .. first + count - 1 of the
        snapshot; the contract of VDisk.block_fingerprints."""
        self._check_alive()
        nblocks = -(-self.size // self._ctx.block_size)
        first, count = check_range(f"blocks of snapshot {self}", first, count, nblocks)
        return block_fingerprints(self._ctx, self.layer_id, first, count, reread=reread)

    def delete(self) -> None:
        """Delete the snapshot. Clones and later snapshots built on it stay intact:
        the layers they need are kept (folded together); space of blocks nothing
        references any more returns at the next `gc()`."""
        self._check_alive()
        with self._ctx.catalog.transaction():
            self._ctx.catalog.delete(SnapshotRow, self.id)
        self._ctx.prune()

    def _check_alive(self) -> None:
        if not self._ctx.catalog.rows(SnapshotRow, "id = ?", (self.id,)):
            raise NotFound(f"snapshot {self.vdisk_name}@{self.name} was deleted")


def take_snapshots(ctx: ClusterContext, vdisks: Sequence[VDisk], name: str, *,
                   replicas: bool = False) -> list[Snapshot]:
    """Snapshot every vDisk in `vdisks` at one crash-consistent point, named `name`.

    All members' locks are held together while their dirty blocks drain and the
    catalogue commits, so no write is in one member's snapshot while an earlier
    acknowledged write is missing from another's. Read-only replicas only with `replicas`
    (a synchronous standby freezes what it received before it is promoted); ReadOnly
    otherwise.
    """
    check_name("snapshot", name, composed=True)  # users' names are checked by the callers
    with lock_group(vdisks, "a vDisk is named twice in the snapshot group",
                    writable=not replicas) as members:
        for vd in members:
            if ctx.catalog.rows(SnapshotRow, "vdisk_id = ? AND name = ?", (vd.id, name)):
                raise AlreadyExists(f"vDisk {vd.name!r} already has a snapshot {name!r}")
        for vd in members:
            vd.drain_all_locked()
        rows = []
        with (ctx.map_lock, rows_restored_on_error(*(vd._row for vd in members)),
              ctx.catalog.transaction()):
            seq = ctx.oplog.last_seq
            ctx.oplog.sync(seq)  # a durable created_seq must name durable records
            now = ctx.clock()
            for vd in members:
                head = vd._row.head_layer
                rows.append(ctx.catalog.insert(SnapshotRow(0, vd.id, name, head, now, vd.size)))
                ctx.tree.freeze(head)
                vd._row.head_layer = ctx.tree.create(head, seq)
                ctx.catalog.update(vd._row)
    return [Snapshot(ctx, row, vd.name) for row, vd in zip(rows, members, strict=True)]


def restore_vdisk(ctx: ClusterContext, vd: VDisk, snapshot: Snapshot) -> None:
    """Point `vd` at a new head on `snapshot` (its later snapshots stay)."""
    snapshot._check_alive()
    with vd._lock:
        vd._check_writable()
        vd.check_mirror_allows("restore")
        with ctx.map_lock, rows_restored_on_error(vd._row), ctx.catalog.transaction():
            seq = ctx.oplog.last_seq
            ctx.oplog.sync(seq)  # a durable created_seq must name durable records
            vd._row.head_layer = ctx.tree.create(snapshot.layer_id, seq)
            vd._row.size = snapshot.size
            ctx.catalog.update(vd._row)
            # Undrained writes belong to the old head, which is dropped; the OpLog
            # records behind them predate the new head's created_seq, so recovery
            # never replays them.
            vd.discard_unpersisted()
    ctx.prune()


def changed_blocks(
    ctx: ClusterContext, base: Snapshot, target: Snapshot | None, live: VDisk
) -> list[tuple[int, int]]:
    """See VDisk.changed_blocks (the "differs" promise)."""
    with ExitStack() as stack:
        if target is None:
            stack.enter_context(live._lock)
            live.drain_all_locked()
            top, size = live.head_layer, live.size
        else:
            target._check_alive()
            top, size = target.layer_id, target.size
        keys, _ = block_delta(ctx, base, top)
    return block_ranges(keys, ctx.block_size, max(size, base.size))


def block_delta(
    ctx: ClusterContext, base: Snapshot | None, top_layer: int
) -> tuple[np.ndarray, np.ndarray]:
    """(block indices, extent ids at `top_layer`) of every block whose content differs
    between `base` (None: an empty disk) and the image seen from `top_layer`.

    Reads only the layers above the two images' common ancestor: the cost grows
    with the changes, not the disk size. Zero blocks have extent id 0.
    """
    with ctx.map_lock:
        if base is None:
            keys, ids = flatten(ctx.tree.chain(top_layer), is_root=True).items()
            nonzero = ids != 0
            return keys[nonzero].copy(), ids[nonzero].copy()
        base._check_alive()
        path_a, path_b = ctx.tree.path(base.layer_id), ctx.tree.path(top_layer)
        common = set(path_a) & set(path_b)
        above = [lid for lid in path_a + path_b if lid not in common]
        keys = written_blocks([ctx.tree.layer(lid) for lid in above])
        if keys.size == 0:
            return keys, np.zeros(0, dtype=np.uint64)
        ids_a = chain_lookup(ctx.tree.chain(base.layer_id), keys)
        ids_b = chain_lookup(ctx.tree.chain(top_layer), keys)
    differ = ids_a != ids_b
    # Distinct extents may hold equal bytes (dedup off, or verify-on-dedup misses):
    # compare fingerprints where both sides hold data.
    both = np.flatnonzero(differ & (ids_a != 0) & (ids_b != 0))
    if both.size:
        fps_a = ctx.store.fingerprints(ids_a[both])
        fps_b = ctx.store.fingerprints(ids_b[both])
        differ[both] = (fps_a != fps_b).any(axis=1)
    return keys[differ], ids_b[differ]
