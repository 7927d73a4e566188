"""Cluster: one directory, one writer process, the owner of every other object.

Directory layout (docs/format.md has the byte-level formats):

    LOCK          flock()ed by the process that has the cluster open
    catalog.db    SQLite catalogue: meta, containers, vDisks, layers, snapshots
    oplog/        OpLog segments (write-ahead log of small writes)
    extents/      extent groups, the extent-table checkpoint, the fingerprint index
    maps/         block-map layers (base + delta per layer)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..constants import (
    CATALOG_FILE,
    CHAIN_COLLAPSE_DEPTH,
    CLUSTER_FORMAT_VERSION,
    DEFAULT_BLOCK_SIZE,
    DEFRAG_DRAIN_MAX_BYTES,
    DEFRAG_MAX_BYTES,
    EXTENT_DIR,
    LOCK_FILE,
    MAP_DIR,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    OPLOG_DIR,
    OPLOG_DIRTY_CAP_BYTES,
    SALVAGE_DIR,
)
from ..errors import (
    AlreadyExists,
    ClosedError,
    InUse,
    InvalidArgument,
    Locked,
    NotFound,
    raise_os_error,
)
from ..names import check_name
from ..nearsync import retention as nearsync_retention
from ..nearsync import state as nearsync_state
from ..replication import sites
from ..replication.replica import ReplicaInfo, list_replicas
from ..replication.sites import RemoteSite
from . import defrag
from .block_map import flatten
from .catalog import (
    Catalog,
    ContainerRow,
    PDEntityRow,
    ReplicaRow,
    SnapshotRow,
    VDiskRow,
    VMRow,
)
from .context import ClusterContext
from .drainer import Drainer
from .extent_store import ExtentStore
from .fileutil import fsync_dir, make_private_dirs, open_private, tighten_dir
from .layers import LayerTree
from .lockorder import Level, ordered_lock
from .map_store import MapStore
from .oplog import OpLog, RecordType, Salvage
from .snapshot import Snapshot, take_snapshots
from .vdisk import VDisk, check_int, check_size, rows_restored_on_error

if TYPE_CHECKING:
    from ..nearsync import LWS, NearSyncConfig
    from ..nearsync.compose import RestorePoint
    from ..replication.source import ReplicationResult

log = logging.getLogger(__name__)
_Part = TypeVar("_Part")


class Cluster:
    """An open cluster. Use `Cluster.create` / `Cluster.open`, ideally as a context manager."""

    def __init__(self, path: str, *, clock: Callable[[], float] | None = None,
                 salvage: bool = False, background: bool = True,
                 collapse_depth: int = CHAIN_COLLAPSE_DEPTH) -> None:
        """Open the cluster at `path` (prefer `Cluster.open`)."""
        self.path = os.path.abspath(path)
        if not os.path.isfile(os.path.join(self.path, CATALOG_FILE)):
            raise NotFound(f"no nxstore cluster at {self.path}")
        tighten_dir(self.path)  # made by an older version, before its modes were owner-only
        self._lock_fd = self._take_lock()
        self._closed = False
        self._parts: dict[type, object] = {}
        try:
            if check_int("collapse_depth", collapse_depth) < 1:
                raise InvalidArgument(f"collapse_depth must be positive, not {collapse_depth!r}")
            self._open(clock or time.time, salvage, int(collapse_depth))
        except OSError as exc:  # recovery writes too (a truncated tail, a new segment)
            os.close(self._lock_fd)
            raise_os_error(exc, f"opening cluster {self.path}")
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._drainer = Drainer(self) if background else None
        if self._drainer:
            self._ctx.oplog.on_pressure = self._drainer.kick
            self._drainer.start()

    # -- parts the layers above attach ---------------------------------------------
    def attach(self, part: object) -> None:
        """Keep `part` for the layers above, one object per type (a later one of the same
        type replaces it). The engine itself never reads what is attached."""
        self._parts[type(part)] = part

    def part(self, kind: type[_Part]) -> _Part | None:
        """The object of type `kind` given to `attach`, or None."""
        found = self._parts.get(kind)
        return found if isinstance(found, kind) else None

    # -- lifecycle ---------------------------------------------------------------
    @classmethod
    def create(cls, path: str, block_size: int = DEFAULT_BLOCK_SIZE, *,
               site_name: str | None = None, **kwargs: Any) -> Cluster:
        """Create a new cluster directory and open it. `site_name` (default: the
        directory's name) is how peers name this cluster's replicas.

        Raises AlreadyExists if `path` exists and is not an empty directory,
        InvalidArgument unless block_size is a power of two in 4-64 KiB, NoSpace.
        Atomic: built under a temporary name and renamed into place.
        """
        bs = check_int("block_size", block_size)
        if bs & (bs - 1) or not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE:
            raise InvalidArgument(
                f"block_size must be a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}, "
                f"not {block_size!r}"
            )
        path = os.path.abspath(path)
        site_name = check_name("site", site_name or os.path.basename(path))
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise AlreadyExists(f"{path} exists and is not an empty directory")
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise NotFound(f"parent directory {parent} does not exist")
        tmp = f"{path}.creating.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            cls._build(tmp, bs, site_name)
            if os.path.isdir(path):
                os.rmdir(path)
            os.rename(tmp, path)
            fsync_dir(parent)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise_os_error(exc, f"creating cluster {path}")
            raise
        return cls(path, **kwargs)

    @staticmethod
    def _build(tmp: str, block_size: int, site_name: str) -> None:
        """Lay out an empty cluster in directory `tmp` (made here), durably."""
        make_private_dirs(tmp)
        for sub in (OPLOG_DIR, EXTENT_DIR, MAP_DIR):
            make_private_dirs(os.path.join(tmp, sub))
        # SQLite creates a new database 0644, then its -wal and -shm with the database's mode.
        os.close(open_private(os.path.join(tmp, CATALOG_FILE), os.O_WRONLY))
        catalog = Catalog(os.path.join(tmp, CATALOG_FILE), create=True)
        catalog.init_meta({
            "format_version": CLUSTER_FORMAT_VERSION,
            "block_size": block_size,
            "cluster_id": uuid.uuid4().hex,
            "site_name": site_name,
            "created_at": time.time(),
        })
        with catalog.transaction():
            catalog.insert(ContainerRow(0, "default", True, True, False))
        catalog.close()
        ExtentStore.open(os.path.join(tmp, EXTENT_DIR), block_size, create=True).close()
        for sub in (OPLOG_DIR, EXTENT_DIR, MAP_DIR, "."):
            fsync_dir(os.path.join(tmp, sub))

    @classmethod
    def open(cls, path: str, **kwargs: Any) -> Cluster:
        """Open an existing cluster.

        Raises NotFound (no cluster there), Locked (open elsewhere), FormatError
        (newer format), Corruption (damaged metadata or OpLog; `salvage=True`
        drops a damaged OpLog tail instead). Replays the OpLog: every write
        acknowledged by a returned flush() before a crash reads back.
        Keyword arguments: clock (callable returning seconds), salvage,
        background (run the drain thread; default True), collapse_depth (layers a
        read may fall through before the drain collapses the chain; default
        CHAIN_COLLAPSE_DEPTH).
        """
        return cls(path, **kwargs)

    def _take_lock(self) -> int:
        fd = open_private(os.path.join(self.path, LOCK_FILE), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise Locked(f"cluster {self.path} is open in another process (pid {holder or '?'})") from None
        with contextlib.suppress(OSError):  # the pid only informs; a full disk must not stop an open
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _open(self, clock: Callable[[], float], salvage: bool, collapse_depth: int) -> None:
        catalog = Catalog(os.path.join(self.path, CATALOG_FILE))
        meta = catalog.meta()
        self.block_size: int = meta["block_size"]
        self.id: str = meta["cluster_id"]
        self.site_name: str = meta["site_name"]
        store = ExtentStore.open(os.path.join(self.path, EXTENT_DIR), self.block_size)
        tree = LayerTree(catalog, MapStore(os.path.join(self.path, MAP_DIR)), collapse_depth)
        oplog = OpLog(os.path.join(self.path, OPLOG_DIR), salvage=salvage)
        containers = {row.id: row for row in catalog.rows(ContainerRow)}
        self._ctx = ClusterContext(self.path, self.block_size, catalog, oplog, store, tree,
                                   containers, clock)
        self._ctx.prune = self._prune
        self._ctx.throttle = self._throttle
        # A MAP record may only become durable after the extents it names.
        oplog.before_sync = store.sync
        self._ctx.problems.extend(oplog.problems)
        self._dirty_cap = OPLOG_DIRTY_CAP_BYTES
        # Replaced whole (never mutated) under the registry lock and the map lock, so
        # readers need no lock and holders of the map lock see it in step with the
        # layer tree (nxstore.lockorder).
        self._vdisks: dict[str, VDisk] = {
            row.name: VDisk(self._ctx, row) for row in catalog.rows(VDiskRow)
        }
        self._registry_lock = ordered_lock(Level.REGISTRY, "vDisk registry", reentrant=True)
        removed = tree.remove_orphans()
        if removed:
            log.info("removed %d orphaned map layer files", removed)
        self._replay()
        if store.floor_lost:  # hand out no id that a durable map or record names
            with self._ctx.map_lock:
                named = [self._ctx.tree.all_extent_ids(), np.zeros(1, np.uint64)]
            named += [r.extent_ids() for r in oplog.records() if r.type == RecordType.MAP]
            store.raise_floor(int(np.concatenate(named).max()) + 1)
        nearsync_retention.install(self)
        nearsync_state.load(self)  # the NearSync settings kept in the catalogue
        # What replication targets serve beyond snapshots (moves to the facade, issue 13)
        from ..nearsync import receive as nearsync_receive
        from ..protection import remote as protection_remote
        from ..replication.protocols import target_protocols

        nearsync_receive.register(target_protocols(self), self)
        protection_remote.register(target_protocols(self), self._protection)

    def _replay(self) -> None:
        """Re-apply the OpLog records the persisted maps do not reflect yet.

        A MAP record naming extents the store does not hold is skipped when it may never
        have been synced (its extents were lost with it: never acknowledged). One that was
        synced names extents that were durable before it, so they were damaged away: it is
        applied anyway (those blocks then fail to read, never read older data) and reported.
        """
        by_id = {vd.id: vd for vd in self._vdisks.values()}
        with self._ctx.map_lock:
            starts = {vd.id: self._ctx.tree.applied_seq(vd.head_layer) for vd in by_id.values()}
        if not starts:
            return
        oplog = self._ctx.oplog
        self._drop_torn_bypass_writes(by_id, starts)
        replayed = skipped = 0
        for record in oplog.records(min(starts.values()) + 1):
            vd = by_id.get(record.vdisk_id)
            if vd is None or record.seq <= starts[vd.id] or record.type == RecordType.MARKER:
                continue
            if record.type == RecordType.MAP and record.seq <= oplog.recovered_durable_seq:
                store = self._ctx.store
                missing = record.extent_ids()[~store.contains_each(record.extent_ids())]
                if missing.size:
                    cut = f" (open cut torn tails of {', '.join(store.cut_tails)})"
                    self._ctx.problems.append(
                        f"OpLog record {record.seq} (vDisk {vd.name!r}, blocks {record.offset}.."
                        f"{record.offset + record.length - 1}) was synced but names "
                        f"{missing.size} extent(s) the extent store lacks, e.g. "
                        f"{int(missing[0])}: an extent group is damaged or truncated"
                        f"{cut if store.cut_tails else ''}")
                    log.error("%s", self._ctx.problems[-1])
                vd.replay(record, require_extents=False)
                replayed += 1
            elif vd.replay(record):
                replayed += 1
            else:
                skipped += 1
        if replayed or skipped:
            log.info("replayed %d OpLog records (%d unacknowledged skipped)", replayed, skipped)

    def _drop_torn_bypass_writes(self, by_id: dict[int, VDisk], starts: dict[int, int]) -> None:
        """Cut the OpLog at the first unsynced MAP record whose extents did not survive the
        crash: that write was never acknowledged, and left in the log, the next sync would
        make it look acknowledged (its blocks would then fail to read after a reopen).
        Every later record is unsynced too, so none of them was acknowledged either."""
        oplog, store = self._ctx.oplog, self._ctx.store
        first = max(oplog.recovered_durable_seq, min(starts.values())) + 1
        for record in oplog.records(first):
            vd = by_id.get(record.vdisk_id)
            if (record.type == RecordType.MAP and vd is not None and record.seq > starts[vd.id]
                    and not store.contains(record.extent_ids())):
                oplog.drop_unacknowledged(record.seq)
                return

    def close(self) -> None:
        """Make every write durable, persist maps, release the lock. Idempotent.

        The cluster is closed and its lock released even when persisting fails (NoSpace,
        say): the error is raised afterwards, and a reopen recovers from the OpLog."""
        if self._closed:
            return
        with contextlib.ExitStack() as release:  # runs every step, last registered first
            release.callback(os.close, self._lock_fd)  # drops the flock
            release.callback(self._ctx.catalog.close)
            release.callback(self._ctx.store.close)  # checkpoints the extent table and index
            release.callback(self._ctx.oplog.close)
            release.callback(setattr, self, "_closed", True)
            if self._drainer:
                self._drainer.stop()
            for vd in self._all_vdisks():
                with vd._lock:
                    vd._persist()
            self._ctx.oplog.sync()
            self._ctx.tree.store.seal()  # the delta watermarks the last appends left in RAM

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"cluster {self.path} is closed")

    # -- containers ------------------------------------------------------------
    def create_container(self, name: str, dedup: bool = True, compression: bool = True,
                         verify_dedup: bool = False) -> ContainerRow:
        """A storage container: a namespace with its own dedup/compression policy.
        Containers with dedup on share one dedup domain (the cluster's)."""
        self._check_open()
        check_name("container", name)
        with self._ctx.catalog.transaction():
            row = self._ctx.catalog.insert(
                ContainerRow(0, name, bool(dedup), bool(compression), bool(verify_dedup)))
        self._ctx.containers[row.id] = row
        return row

    def containers(self) -> list[ContainerRow]:
        return sorted(self._ctx.containers.values(), key=lambda c: c.id)

    def _container(self, name: str) -> ContainerRow:
        for row in self._ctx.containers.values():
            if row.name == name:
                return row
        raise NotFound(f"no container {name!r}")

    # -- vDisks -------------------------------------------------------------------
    def create_vdisk(self, name: str, size: int, container: str = "default") -> VDisk:
        """A new thin vDisk of `size` bytes (costs no data space until written).
        Raises AlreadyExists, NotFound (container), InvalidArgument (size not a
        positive integer), OutOfRange (size above constants.MAX_VDISK_SIZE)."""
        self._check_open()
        check_name("vDisk", name)
        return self._new_vdisk(name, size, self._container(container).id, parent_layer=0)

    def _new_vdisk(self, name: str, size: int, container_id: int, parent_layer: int,
                   replica: ReplicaRow | None = None) -> VDisk:
        size = check_size(f"size of vDisk {name!r}", size)
        with self._registry_lock:
            if name in self._vdisks:
                raise AlreadyExists(f"vDisk {name!r} exists")
            with self._ctx.map_lock:
                with self._ctx.catalog.transaction():
                    seq = self._ctx.oplog.last_seq
                    self._ctx.oplog.sync(seq)  # a durable created_seq must name durable records
                    head = self._ctx.tree.create(parent_layer, seq)
                    row = self._ctx.catalog.insert(VDiskRow(
                        0, name, container_id, size, head, self._ctx.clock(), replica is not None))
                    if replica is not None:
                        replica.vdisk_id = row.id
                        self._ctx.catalog.insert(replica)
                vd = VDisk(self._ctx, row)
                self._vdisks = {**self._vdisks, name: vd}
        return vd

    def _create_replica_vdisk(self, name: str, size: int, container: str,
                              replica: ReplicaRow) -> VDisk:
        return self._new_vdisk(name, size, self._container(container).id, 0, replica)

    def vdisk(self, name: str) -> VDisk:
        """The vDisk called `name` (NotFound otherwise)."""
        self._check_open()
        try:
            return self._vdisks[name]
        except (KeyError, TypeError):
            raise NotFound(f"no vDisk {name!r}") from None

    def vdisks(self) -> list[VDisk]:
        self._check_open()
        return sorted(self._all_vdisks(), key=lambda vd: vd.name)

    def _all_vdisks(self) -> list[VDisk]:
        return list(self._vdisks.values())

    def delete_vdisk(self, name: str, *, with_snapshots: bool = False) -> None:
        """Delete a vDisk. If it has snapshots this raises InUse unless
        `with_snapshots=True`, which deletes them too. Clones of its snapshots
        are unaffected (they keep the layers they share)."""
        vd = self.vdisk(name)
        self._check_unprotected(name)
        snaps = vd.snapshots()
        if snaps and not with_snapshots:
            raise InUse(f"vDisk {name!r} has {len(snaps)} snapshot(s); "
                        "pass with_snapshots=True to delete them too")
        with self._registry_lock, vd._lock, self._ctx.map_lock:
            with self._ctx.catalog.transaction():
                for snap in snaps:
                    self._ctx.catalog.delete(SnapshotRow, snap.id)
                self._ctx.catalog.delete(VDiskRow, vd.id)
                for rep in self._ctx.catalog.rows(ReplicaRow, "vdisk_id = ?", (vd.id,)):
                    self._ctx.catalog.delete(ReplicaRow, rep.id)
            vd._deleted = True
            vd.discard_unpersisted()
            self._vdisks = {n: v for n, v in self._vdisks.items() if n != name}
        self._prune()

    # -- snapshots and clones --------------------------------------------------------
    def snapshot(self, vdisk_name: str, snap_name: str) -> Snapshot:
        """The snapshot `snap_name` of vDisk `vdisk_name` (NotFound otherwise)."""
        for snap in self.vdisk(vdisk_name).snapshots():
            if snap.name == snap_name:
                return snap
        raise NotFound(f"vDisk {vdisk_name!r} has no snapshot {snap_name!r}")

    def snapshot_group(self, vdisks: Sequence[VDisk], name: str) -> list[Snapshot]:
        """Snapshots of several vDisks at one crash-consistent point (a consistency group)."""
        self._check_open()
        if not vdisks:
            raise InvalidArgument("snapshot_group needs at least one vDisk")
        return take_snapshots(self._ctx, [self.vdisk(vd.name) for vd in vdisks],
                              check_name("snapshot", name))

    def clone(self, snapshot: Snapshot, name: str) -> VDisk:
        """A writable vDisk sharing every block of `snapshot`; O(1)."""
        self._check_open()
        check_name("vDisk", name)
        if not isinstance(snapshot, Snapshot):
            raise InvalidArgument(f"clone needs a Snapshot, not {type(snapshot).__name__}")
        snapshot._check_alive()
        source = next((r for r in self._ctx.catalog.rows(VDiskRow, "id = ?", (snapshot.vdisk_id,))), None)
        container_id = source.container_id if source else min(self._ctx.containers)
        return self._new_vdisk(name, snapshot.size, container_id, parent_layer=snapshot.layer_id)

    def _check_unprotected(self, vdisk_name: str) -> None:
        """InUse if a VM or a protection domain still names the vDisk."""
        cat = self._ctx.catalog
        for vm in cat.rows(VMRow):
            if vdisk_name in json.loads(vm.vdisks):
                raise InUse(f"vDisk {vdisk_name!r} belongs to VM {vm.name!r}; delete the VM first")
        if cat.rows(PDEntityRow, "kind = 'vdisk' AND name = ?", (vdisk_name,)):
            raise InUse(f"vDisk {vdisk_name!r} is protected by a protection domain; "
                        "remove it from the domain first")

    def _throttle(self) -> None:
        """Back-pressure on RAM: while undrained blocks exceed the cap, a writer drains
        (or, with the drain thread running, waits for it). Called without locks held."""
        while sum(vd.dirty_bytes for vd in self._all_vdisks()) > self._dirty_cap:
            if self._drainer is None or not self._drainer.is_alive():
                self.drain()
                return
            self._drainer.kick()
            time.sleep(0.01)

    def _prune(self) -> None:
        """Drop layers nothing needs; fold unnamed parents into vDisk heads. The caller
        holds no vDisk, map or catalogue lock (a fold takes a vDisk lock)."""
        with self._ctx.map_lock:  # the registry changes only under it too: one state
            vdisks = self._all_vdisks()
            named = {vd.head_layer for vd in vdisks}
            named |= {row.layer_id for row in self._ctx.catalog.rows(SnapshotRow)}
            folds = self._ctx.tree.prune(named)
        heads = {vd.head_layer: vd for vd in vdisks}
        for head, parent in folds:
            if head in heads:
                heads[head].fold_parent(parent)  # takes its vDisk lock, then the map lock

    # -- upkeep ---------------------------------------------------------------------
    def drain(self) -> None:
        """Move all OpLog data into the extent store, persist maps, free OpLog space,
        and collapse read chains deeper than the configured depth; a vDisk whose
        chain was just collapsed is also defragmented (at most
        DEFRAG_DRAIN_MAX_BYTES moved per drain, see `defragment`)."""
        self._check_open()
        # Read before listing the vDisks: every record of a vDisk created meanwhile
        # (a clone, say) comes after this bound, so releasing up to it cannot drop one.
        bound = self._ctx.oplog.last_seq
        vdisks = self._all_vdisks()
        for vd in vdisks:
            vd.drain()
        upto = min([bound, *(vd.release_point() for vd in vdisks)])
        floor = self._ctx.release_floor()  # NearSync: episodes not every remote holds stay
        self._ctx.oplog.release(upto if floor is None else min(upto, floor))
        with self._ctx.map_lock:  # a vDisk deleted meanwhile may have lost its head already
            collapsed = [vd for vd in vdisks
                         if not vd._deleted and self._ctx.tree.shortcut_for(vd.head_layer)]
        if collapsed:  # a deep chain was just flattened: its scattered rewrites, too
            defrag.defragment(self._ctx, collapsed, DEFRAG_DRAIN_MAX_BYTES)

    def defragment(self, vdisk_name: str | None = None, *,
                   max_bytes: int = DEFRAG_MAX_BYTES) -> dict[str, int]:
        """Rewrite contiguously the scattered extents of the fragmented 1 MiB windows
        of vDisk `vdisk_name`'s image (None: of every vDisk), at most `max_bytes` of
        records (see nxstore.defrag). Extent ids stay, so snapshots and clones sharing
        them read the same; gc reclaims the old copies. Returns vdisks, defragmented,
        extents_moved, bytes_moved, damaged (not moved; scrub reports them),
        runs_before, runs_after (preadv runs of reading each window once), windows
        (1 MiB windows with data). Raises NotFound, InvalidArgument.
        Durable and crash-safe (ExtentStore.relocate)."""
        self._check_open()
        max_bytes = check_int("max_bytes", max_bytes)
        if max_bytes < 0:
            raise InvalidArgument(f"max_bytes must be a non-negative int, not {max_bytes!r}")
        vdisks = self._all_vdisks() if vdisk_name is None else [self.vdisk(vdisk_name)]
        return defrag.defragment(self._ctx, vdisks, max_bytes)

    def gc(self) -> dict[str, int]:
        """Reclaim space of extents no vDisk, snapshot or clone references
        (mark and sweep, then extent-group compaction). Returns counters."""
        self._check_open()
        with self._ctx.map_lock:
            # Recovery rebuilds the maps from persisted layers plus the OpLog; once
            # every record is durable, it rebuilds exactly the in-memory maps, so
            # marking from them cannot sweep an extent a recovered map names.
            self._ctx.store.sync()
            self._ctx.oplog.sync()
            live = [self._ctx.tree.all_extent_ids()]
            live += [vd.unpersisted_extents() for vd in self._all_vdisks()]
            live.append(self._ctx.gc_roots())  # NearSync episodes not shipped / composed yet
            return self._ctx.store.gc(np.concatenate(live))

    def scrub(self, progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Verify every extent, map layer and catalogue row; return the problems found."""
        self._check_open()
        from .scrub import scrub_cluster

        return scrub_cluster(self._ctx, progress)

    @property
    def salvaged(self) -> Salvage | None:
        """What opening with salvage=True cut from a damaged OpLog (None: nothing)."""
        return self._ctx.oplog.salvaged

    @property
    def salvage_dir(self) -> str:
        """Where salvage keeps the OpLog bytes it dropped."""
        return os.path.join(self._ctx.oplog.directory, SALVAGE_DIR)

    def repair_watermarks(self) -> list[str]:
        """Rewrite the damaged synced-watermark slots of the map delta logs loaded so far
        (scrub loads them all) from their verified records; return the files rewritten."""
        self._check_open()
        return self._ctx.tree.store.repair_watermarks()

    def stats(self) -> dict[str, float]:
        """Space counters: logical_bytes (data the vDisk heads hold), unique_bytes,
        stored_bytes, dedup_ratio, compression_ratio, oplog_bytes, and more."""
        self._check_open()
        bs = self.block_size
        logical = 0
        for vd in self._all_vdisks():
            with vd._lock, self._ctx.map_lock:
                if vd._deleted:
                    continue
                keys, vals = flatten(self._ctx.tree.chain(vd.head_layer), is_root=True).items()
                dirty, dirty_nonzero = vd._dirty.keys()
            mapped = np.setdiff1d(keys[vals != 0], dirty, assume_unique=True)
            logical += (mapped.size + int(np.count_nonzero(dirty_nonzero))) * bs
        store = self._ctx.store.stats()
        unique = int(store["raw_bytes"])
        stored = int(store["stored_bytes"])
        ram, disk = self._ctx.tree.map_bytes()
        return {
            "vdisks": len(self._vdisks),
            "logical_bytes": logical,
            "unique_bytes": unique,
            "stored_bytes": stored,
            "dedup_ratio": logical / unique if unique else 1.0,
            "compression_ratio": unique / stored if stored else 1.0,
            "oplog_bytes": self._ctx.oplog.bytes_used,
            "extents": int(store["extents"]),
            "map_ram_bytes": ram,
            "map_disk_bytes": disk,
            "index_memory_bytes": int(store.get("index_memory_bytes", 0)),
        }

    # -- replication -------------------------------------------------------------------
    def add_remote_site(self, name: str, address: str, secret: str,
                        network_mapping: dict[str, str] | None = None,
                        vstore_mapping: dict[str, str] | None = None,
                        tls_ca: str | None = None) -> RemoteSite:
        """Register a peer cluster reached at `address` (HOST:PORT of its `nxstore serve`),
        authenticated with the shared `secret`. vstore_mapping maps local containers
        to the peer's (default: same name). `tls_ca`: connect over TLS and require
        the site's certificate to chain to this PEM CA file (the site runs
        `nxstore serve --tls-cert/--tls-key`). Raises AlreadyExists, InvalidArgument."""
        self._check_open()
        check_name("site", name)
        return sites.add_site(self._ctx.catalog, RemoteSite(
            name, address, secret, network_mapping or {}, vstore_mapping or {}, tls_ca or ""))

    def remote_sites(self) -> list[RemoteSite]:
        self._check_open()
        return sites.list_sites(self._ctx.catalog)

    def remove_remote_site(self, name: str) -> None:
        self._check_open()
        sites.remove_site(self._ctx.catalog, name)

    def replicate(self, snapshot_or_group: Snapshot | Sequence[Snapshot], site: str,
                  progress: Callable[[str, int, int, int], None] | None = None,
                  bandwidth_limit: float | None = None) -> ReplicationResult:
        """Ship a snapshot (or a consistency group's snapshots) to remote `site`.

        Incremental from the newest snapshot both sides hold, else a full seed;
        only blocks the target lacks cross the wire (lz4 where it pays, every
        frame checksummed, every block verified by the target). The target applies
        the snapshot atomically; a cut-off transfer can simply be run again and
        sends only what the target does not hold yet. progress(phase, done, total,
        bytes_on_wire). Raises NotFound (site), AuthenticationError, ProtocolError,
        Corruption, NxError (connection)."""
        self._check_open()
        from ..replication import source

        snaps = [snapshot_or_group] if isinstance(snapshot_or_group, Snapshot) else list(
            snapshot_or_group)
        if not snaps or not all(isinstance(s, Snapshot) for s in snaps):
            raise InvalidArgument("replicate needs a Snapshot or a list of Snapshots")
        remote = sites.get_site(self._ctx.catalog, site)
        return source.run(source.replicate(self, snaps, remote, progress, bandwidth_limit))

    def replicas(self) -> list[ReplicaInfo]:
        """The replica vDisks this cluster holds for other sites, with their snapshots."""
        self._check_open()
        return list_replicas(self)

    def prune_remote(self, site: str, vdisk_name: str, keep: int) -> list[str]:
        """Keep only the newest `keep` replica snapshots of `vdisk_name` at `site`;
        returns the names deleted there (remote retention)."""
        self._check_open()
        keep = check_int("keep", keep)
        if keep < 1:
            raise InvalidArgument(f"keep must be a positive int, not {keep!r}")
        from ..replication import source

        remote = sites.get_site(self._ctx.catalog, site)
        return source.run(source.prune_remote(self, remote, vdisk_name, keep))


    # -- data protection: VMs, protection domains, schedules (nxstore.protection) -------------
    def _protection(self) -> Any:
        """The protection layer's per-cluster state, made on first use."""
        self._check_open()
        mgr = self.__dict__.get("_protection_mgr")
        if mgr is None:
            from ..protection.manager import ProtectionManager

            with self._registry_lock:
                mgr = self.__dict__.get("_protection_mgr")
                if mgr is None:
                    mgr = self.__dict__["_protection_mgr"] = ProtectionManager(self)
        return mgr

    def create_vm(self, name: str, vdisks: Sequence[Any] = (),
                  nics: Sequence[dict[str, str]] | None = None,
                  categories: dict[str, str] | None = None, power: str = "on") -> Any:
        """Register VM `name` owning `vdisks` (VDisk objects or names). See
        nxstore.protection.vm.create_vm for the errors. Durable on return."""
        from ..protection.vm import create_vm

        return create_vm(self._protection(), name, vdisks, nics, categories, power)

    def vm(self, name: str) -> Any:
        """The VM called `name` (NotFound otherwise)."""
        from ..protection.vm import get_vm

        return get_vm(self._protection(), name)

    def vms(self) -> list[Any]:
        from ..protection.vm import list_vms

        return list_vms(self._protection())

    def delete_vm(self, name: str, keep_vdisks: bool = False) -> None:
        """Delete a VM and (unless keep_vdisks) its vDisks. InUse while a PD protects it."""
        from ..protection.vm import delete_vm

        delete_vm(self._protection(), name, keep_vdisks)

    def create_protection_domain(self, name: str, entities: Sequence[Any] = ()) -> Any:
        """A new protection domain owned by this cluster, protecting `entities`
        (VMs, vDisks or their names). InUse if one is already protected."""
        from ..protection.domain import create_protection_domain

        return create_protection_domain(self._protection(), name, entities)

    def protection_domain(self, name: str) -> Any:
        """The protection domain called `name` (NotFound otherwise)."""
        from ..protection.domain import get_protection_domain

        return get_protection_domain(self._protection(), name)

    def protection_domains(self) -> list[Any]:
        from ..protection.domain import list_protection_domains

        return list_protection_domains(self._protection())

    def activate(self, pd_name: str, force: bool = False,
                 point: RestorePoint | str | int | None = None) -> Any:
        """Unplanned failover: bring protection domain `pd_name` (owned by a site that is
        gone) up here from its newest fully replicated PD snapshot, or from the newest
        NearSync LWS every member holds when that is newer; `point` picks a restore point
        (`restore_points(pd)`, a name, an LWS seq). InUse if the owner answers and still
        owns it, unless `force` (see nxstore.protection.failover.activate)."""
        from ..protection.failover import activate

        return activate(self._protection(), pd_name, force, point)

    def delete_protection_domain(self, name: str, delete_snapshots: bool = False) -> None:
        """Delete a PD (its entities become unprotected; vDisk snapshots stay unless
        delete_snapshots)."""
        from ..protection.domain import delete_protection_domain

        delete_protection_domain(self._protection(), name, delete_snapshots)

    def run_schedules(self) -> list[Any]:
        """Run every protection-domain schedule due on the cluster clock; returns a
        ScheduleRun per schedule that ran (see nxstore.protection.schedule)."""
        from ..protection.schedule import run_schedules

        return run_schedules(self._protection())

    # -- replica roles (failover: nxstore.protection.ownership) --------------------------------
    def promote_replica(self, name: str, new_name: str | None = None) -> VDisk:
        """Turn replica vDisk `name` into a writable vDisk called `new_name` (default:
        `name`), keeping its snapshots (an activated or migrated PD runs on them).

        Raises NotFound (no vDisk `name`), InvalidArgument (it is not a replica, or a
        bad `new_name`), AlreadyExists (`new_name` is taken). Durable on return."""
        vd = self.vdisk(name)
        new_name = name if new_name is None else check_name("vDisk", new_name)
        cat = self._ctx.catalog
        with self._registry_lock, vd._lock, rows_restored_on_error(vd._row):
            reps = cat.rows(ReplicaRow, "vdisk_id = ?", (vd.id,))
            if not reps:
                raise InvalidArgument(f"vDisk {name!r} is not a replica")
            if new_name != name and new_name in self._vdisks:
                raise AlreadyExists(f"vDisk {new_name!r} exists")
            with self._ctx.map_lock:
                with cat.transaction():
                    for rep in reps:
                        cat.delete(ReplicaRow, rep.id)
                    vd._row.read_only = False
                    vd._row.name = new_name
                    cat.update(vd._row)
                self._vdisks = {**{n: v for n, v in self._vdisks.items() if n != name},
                                new_name: vd}
        log.info("replica vDisk %s promoted to writable vDisk %s", name, new_name)
        return vd

    def make_replica(self, name: str, source_cluster: str, source_site: str,
                     source_vdisk: str | None = None) -> None:
        """Turn writable vDisk `name` into the read-only replica of `source_vdisk`
        (default: `name`) of cluster `source_cluster` at site `source_site`: replication
        from there then finds its snapshots as the common base. A replica of the same
        source held by another vDisk is superseded (it stays, read-only, unlinked).

        Raises NotFound (no vDisk), InUse (a VM or protection domain still uses it).
        Idempotent; durable on return."""
        vd = self.vdisk(name)
        self._check_unprotected(name)
        source_vdisk = name if source_vdisk is None else source_vdisk
        self.drain()  # a replica's head has nothing pending in RAM
        cat = self._ctx.catalog
        with vd._lock, rows_restored_on_error(vd._row), cat.transaction():
            for rep in cat.rows(ReplicaRow, "vdisk_id = ?", (vd.id,)):
                if (rep.source_cluster, rep.source_vdisk) == (source_cluster, source_vdisk):
                    return
                cat.delete(ReplicaRow, rep.id)
            for rep in cat.rows(ReplicaRow, "source_cluster = ? AND source_vdisk = ?",
                                (source_cluster, source_vdisk)):
                cat.delete(ReplicaRow, rep.id)
            vd._row.read_only = True
            cat.update(vd._row)
            cat.insert(ReplicaRow(0, vd.id, source_cluster, source_site, source_vdisk))
        log.info("vDisk %s is now a replica of %s at site %s", name, source_vdisk, source_site)

    # -- NearSync: light-weight snapshots (nxstore.nearsync) ---------------------------------
    def lws_group(self, vdisks: Sequence[VDisk] = (), name: str | None = None, *,
                  pd: str | None = None) -> LWS:
        """A light-weight snapshot of several vDisks at one crash-consistent point: one OpLog
        marker, O(1), no drain (see nxstore.nearsync.lws). With `pd` (and no `vdisks`), or
        when one protection domain protects every one of `vdisks`, it covers that PD's
        vDisks and the PD's NearSync schedule ships it with the next run (the remotes list
        it by name). Raises InvalidArgument, ReadOnly, NotFound. Durable on return."""
        self._check_open()
        from ..nearsync import lws

        return lws.take_group(self, vdisks, name, pd)

    def configure_nearsync(self, **settings: float) -> NearSyncConfig:
        """Change NearSync settings (max_interval, lag_threshold, compose_every, ship_timeout;
        seconds); returns them all. Durable in the catalogue on return: every later open of
        the cluster (`nxstore serve` too) uses them. InvalidArgument for bad ones."""
        from ..nearsync.state import configure

        return configure(self, **settings)

    def nearsync_config(self) -> NearSyncConfig:
        """The NearSync settings in force (defaults for those never configured)."""
        from ..nearsync.state import config

        return config(self)

    def restore_points(self, pd: str) -> list[RestorePoint]:
        """At a remote: the restore points of protection domain `pd` held here (vDisk
        snapshots and LWS, with their source times), oldest first. NotFound if none."""
        self._check_open()
        from ..nearsync.compose import restore_points

        return restore_points(self, pd)

    def restore_point(self, point: RestorePoint, prefix: str) -> list[VDisk]:
        """New writable vDisks `<prefix><vDisk>` reading exactly as restore point `point`
        (the newest vDisk snapshot at or before it, plus the LWS episodes up to it)."""
        self._check_open()
        from ..nearsync.compose import restore

        return restore(self, point, prefix)

    def compose_pending(self) -> list[Snapshot]:
        """At a remote: compose the vDisk snapshots received LWS episodes ask for that do not
        exist yet (`nxstore serve` does this itself); returns them."""
        self._check_open()
        from ..nearsync.compose import compose_pending

        return compose_pending(self)
