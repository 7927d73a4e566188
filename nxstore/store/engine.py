"""Engine: one cluster directory (`store/layout.py`), one writer process, the owner of the
engine's objects: containers, vDisks, snapshots, clones, and the OpLog, block maps, extent
store and catalogue under them.

Kept as one file (about 590 lines) because it is the engine's one object: open and close,
the vDisk registry, snapshots and clones, upkeep and the registration points share its
locks and registry; recovery (recovery.py) and the directory layout (layout.py) are apart.

It knows nothing of the layers above (replication, protection, NearSync). They plug in
through registration points: vDisk guards (`add_vdisk_guard`), actions in a vDisk's delete
transaction (`on_vdisk_deleted`), the OpLog release floor and extra gc roots
(`add_release_floor`, `add_gc_roots`), typed parts (`attach`/`part`) and a vDisk's write
mirror (`set_mirror`, nxstore.store.mirror). The public API is the facade
`nxstore.Cluster`, an Engine with every layer attached; an Engine alone is for the
engine's own tests and tools (it enforces no VM or protection-domain guard).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from ..constants import (
    CATALOG_FILE,
    CHAIN_COLLAPSE_DEPTH,
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
from . import defrag
from .block_map import flatten
from .catalog import Catalog, ContainerRow, SnapshotRow, VDiskRow
from .context import ClusterContext
from .drainer import Drainer
from .extent_store import ExtentStore
from .fileutil import fsync_dir, open_private, tighten_dir
from .group_backend import check_empty_backend, parse_extent_store
from .layers import LayerTree
from .layout import build_cluster_dir
from .lockorder import Level, ordered_lock
from .map_store import MapStore
from .mirror import WriteMirror
from .oplog import OpLog, RecordType, Salvage
from .recovery import replay_oplog
from .snapshot import Snapshot, take_snapshots
from .vdisk import VDisk, check_int, check_size, rows_restored_on_error

log = logging.getLogger(__name__)
_Part = TypeVar("_Part")


_E = TypeVar("_E", bound="Engine")


class Engine:
    """An open cluster's engine. Use `create` / `open`, ideally as a context manager."""

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
        self._vdisk_guards: list[Callable[[str], None]] = []
        self._delete_actions: list[Callable[[Catalog, int], None]] = []
        self._release_floors: list[Callable[[], int | None]] = []
        self._gc_roots: list[Callable[[], np.ndarray]] = []
        self._drainer: Drainer | None = None
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
        if background:
            self.start_background()

    def start_background(self) -> None:
        """Start the drain thread (once). The facade calls it after attaching the layers
        above, so the first drain already respects their release floors and gc roots."""
        if self._drainer is None:
            self._drainer = Drainer(self)
            self._ctx.oplog.on_pressure = self._drainer.kick
            self._drainer.start()

    @property
    def ctx(self) -> ClusterContext:
        """The shared parts of the open cluster (catalogue, OpLog, store, layer tree), for
        the layers above; the engine's own objects hold the same one."""
        return self._ctx

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
    def create(cls: type[_E], path: str, block_size: int = DEFAULT_BLOCK_SIZE, *,
               site_name: str | None = None, clock: Callable[[], float] | None = None,
               salvage: bool = False, background: bool = True,
               collapse_depth: int = CHAIN_COLLAPSE_DEPTH, extent_store: str | None = None,
               s3_endpoint: str | None = None, s3_credentials_file: str | None = None,
               s3_cache_bytes: int | None = None) -> _E:  # fmt: skip
        """Create a new cluster directory and open it. `site_name` (default: the
        directory's name) is how peers name this cluster's replicas.

        `extent_store` "s3://BUCKET[/PREFIX]" keeps sealed extent groups in that bucket
        (default None: all on the local disk) at `s3_endpoint` (an http(s) URL; None: AWS),
        with the keys of `s3_credentials_file` (AWS INI form; None: the AWS_ACCESS_KEY_ID
        and AWS_SECRET_ACCESS_KEY environment variables) and a local read cache of at
        most `s3_cache_bytes` (default S3_CACHE_BYTES); recorded in the cluster, so `open`
        uses it. The bucket is checked first: NotFound (no bucket), AuthenticationError
        (credentials refused), ObjectStoreError (unreachable), AlreadyExists (the prefix
        already holds extent groups); nothing is created then.

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
        backend = None
        if extent_store is not None:
            backend = parse_extent_store(extent_store, endpoint=s3_endpoint,
                                         credentials_file=s3_credentials_file,
                                         cache_bytes=s3_cache_bytes)  # fmt: skip
            check_empty_backend(backend)
        elif (s3_endpoint, s3_credentials_file, s3_cache_bytes) != (None, None, None):
            raise InvalidArgument("S3 options need extent_store='s3://BUCKET[/PREFIX]'")
        tmp = f"{path}.creating.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            build_cluster_dir(tmp, bs, site_name, backend)
            if os.path.isdir(path):
                os.rmdir(path)
            os.rename(tmp, path)
            fsync_dir(parent)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise_os_error(exc, f"creating cluster {path}")
            raise
        return cls(path, clock=clock, salvage=salvage, background=background,
                   collapse_depth=collapse_depth)

    @classmethod
    def open(cls: type[_E], path: str, *, clock: Callable[[], float] | None = None,
             salvage: bool = False, background: bool = True,
             collapse_depth: int = CHAIN_COLLAPSE_DEPTH) -> _E:
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
        return cls(path, clock=clock, salvage=salvage, background=background,
                   collapse_depth=collapse_depth)

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
        # layer tree (nxstore.store.lockorder).
        self._vdisks: dict[str, VDisk] = {
            row.name: VDisk(self._ctx, row) for row in catalog.rows(VDiskRow)
        }
        self._registry_lock = ordered_lock(Level.REGISTRY, "vDisk registry", reentrant=True)
        removed = tree.remove_orphans()
        if removed:
            log.info("removed %d orphaned map layer files", removed)
        replay_oplog(self._ctx, list(self._vdisks.values()))
        if store.floor_lost:  # hand out no id that a durable map or record names
            with self._ctx.map_lock:
                named = [self._ctx.tree.all_extent_ids(), np.zeros(1, np.uint64)]
            named += [r.extent_ids() for r in oplog.records() if r.type == RecordType.MAP]
            store.raise_floor(int(np.concatenate(named).max()) + 1)
        self._ctx.release_floor = self._release_floor
        self._ctx.gc_roots = self._extra_gc_roots

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

    def __enter__(self: _E) -> _E:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"cluster {self.path} is closed")

    # -- registration points for the layers above ---------------------------------------
    def add_vdisk_guard(self, guard: Callable[[str], None]) -> None:
        """Run `guard(vdisk_name)` before a vDisk is deleted or made a replica; it raises
        (InUse, say) to refuse. Protection registers one: a VM's or a PD's vDisk stays."""
        self._vdisk_guards.append(guard)

    def check_vdisk_unused(self, name: str) -> None:
        """Run every vDisk guard on `name` (see `add_vdisk_guard`); raises what they raise."""
        for guard in self._vdisk_guards:
            guard(name)

    def on_vdisk_deleted(self, action: Callable[[Catalog, int], None]) -> None:
        """Run `action(catalog, vdisk_id)` inside the catalogue transaction that deletes a
        vDisk, so rows naming it go in the same commit (replication drops its replica rows)."""
        self._delete_actions.append(action)

    def add_release_floor(self, floor: Callable[[], int | None]) -> None:
        """The drain releases OpLog records only up to the lowest seq any registered
        `floor()` returns (None: no limit). NearSync keeps episodes not yet shipped."""
        self._release_floors.append(floor)

    def add_gc_roots(self, roots: Callable[[], np.ndarray]) -> None:
        """gc keeps every extent id `roots()` returns besides those the block maps name."""
        self._gc_roots.append(roots)

    def set_mirror(self, vdisk_name: str, mirror: WriteMirror | None) -> None:
        """Install `mirror` on vDisk `vdisk_name` (None: remove it); nxstore.store.mirror says
        when the vDisk calls it. Takes effect between two writes: those applied before this
        returns are not given to the new mirror, every later one is. RAM only: install it
        again after each open. Raises NotFound."""
        vd = self.vdisk(vdisk_name)
        with vd._lock:
            vd._mirror = mirror

    def _release_floor(self) -> int | None:
        floors = [f for f in (floor() for floor in self._release_floors) if f is not None]
        return min(floors) if floors else None

    def _extra_gc_roots(self) -> np.ndarray:
        return np.concatenate([np.zeros(0, np.uint64)]
                              + [np.asarray(r(), np.uint64) for r in self._gc_roots])

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

    def container(self, name: str) -> ContainerRow:
        """The container called `name` (NotFound otherwise)."""
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
        return self.new_vdisk(name, size, self.container(container).id, parent_layer=0)

    def new_vdisk(self, name: str, size: int, container_id: int, parent_layer: int, *,
                  read_only: bool = False,
                  in_transaction: Callable[[Catalog, VDiskRow], None] | None = None) -> VDisk:
        """A new vDisk `name` of `size` bytes in container `container_id` whose head sits on
        layer `parent_layer` (0: empty; a snapshot's layer: a clone). `in_transaction(catalog,
        row)` runs in the catalogue transaction that inserts it (replication adds the replica
        row). Raises AlreadyExists, InvalidArgument, OutOfRange. Durable on return."""
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
                        0, name, container_id, size, head, self._ctx.clock(), read_only))
                    if in_transaction is not None:
                        in_transaction(self._ctx.catalog, row)
                vd = VDisk(self._ctx, row)
                self._vdisks = {**self._vdisks, name: vd}
        return vd

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
        self.check_vdisk_unused(name)
        snaps = vd.snapshots()
        if snaps and not with_snapshots:
            raise InUse(f"vDisk {name!r} has {len(snaps)} snapshot(s); "
                        "pass with_snapshots=True to delete them too")
        with self._registry_lock, vd._lock, self._ctx.map_lock:
            with self._ctx.catalog.transaction():
                for snap in snaps:
                    self._ctx.catalog.delete(SnapshotRow, snap.id)
                self._ctx.catalog.delete(VDiskRow, vd.id)
                for action in self._delete_actions:
                    action(self._ctx.catalog, vd.id)
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
        return self.new_vdisk(name, snapshot.size, container_id, parent_layer=snapshot.layer_id)

    def relabel_vdisk(self, name: str, *, read_only: bool, new_name: str | None = None,
                      in_transaction: Callable[[Catalog, VDiskRow], bool]) -> VDisk:
        """Set vDisk `name`'s read-only flag and, given `new_name`, rename it, in one
        catalogue transaction that first runs `in_transaction(catalog, row)`: when that
        returns False nothing changes; when it raises, nothing changes and the error
        propagates. Raises NotFound, AlreadyExists (`new_name` is taken). Durable on return."""
        vd = self.vdisk(name)
        cat = self._ctx.catalog
        with self._registry_lock, vd._lock, rows_restored_on_error(vd._row), \
                self._ctx.map_lock:
            with cat.transaction():
                if not in_transaction(cat, vd._row):
                    return vd
                if new_name not in (None, name) and new_name in self._vdisks:
                    raise AlreadyExists(f"vDisk {new_name!r} exists")
                vd._row.read_only = read_only
                vd._row.name = new_name or name
                cat.update(vd._row)
            self._vdisks = {**{n: v for n, v in self._vdisks.items() if n != name},
                                vd._row.name: vd}
        return vd

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
