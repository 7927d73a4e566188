"""VDisk: a thin, byte-addressed virtual disk.

Kept as one file (about 615 lines) because `VDisk` is one object whose write, replay, drain
and persist paths share its lock, dirty blocks and safe point; the functions above it are
its read and argument-check primitives, which snapshot.py reuses.

Write path: small or unaligned writes are appended to the OpLog and folded
into the vDisk's dirty blocks (reads see them at once); block-aligned runs of
at least OPLOG_BYPASS_BYTES go straight to the extent store and are logged as
a MAP record. Either way a write is acknowledged as durable by `flush()`.
The drain later moves dirty blocks into the extent store and the head layer of
the block map, and persists the map with the OpLog sequence number it is
complete up to (`safe_point`); recovery replays the OpLog past that point.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

import numpy as np

from ..constants import MAX_VDISK_SIZE, OPLOG_BYPASS_BYTES
from ..errors import Corruption, InvalidArgument, NotFound, OutOfRange, ReadOnly
from ..names import check_name
from .block_map import collapse
from .catalog import SnapshotRow, VDiskRow
from .context import ClusterContext
from .dirty import DirtyBlocks
from .lockorder import Level, ordered_lock
from .lws import LWS
from .lws import take as take_lws
from .oplog import Record, RecordType

if TYPE_CHECKING:
    from .mirror import WriteMirror
    from .snapshot import Snapshot
    from .verify import Progress as VerifyProgress
    from .verify import RangeFingerprints, VerifyResult

DRAIN_BATCH_BLOCKS = 256  # blocks moved per drain step (bounds how long writers wait)
READ_BUFFER_MAX = 16 << 20  # bytes: reads up to this size are assembled in a pooled buffer
READ_BUFFERS = 4  # pooled read buffers kept at most (RAM: READ_BUFFERS x READ_BUFFER_MAX)

_read_pool: list[np.ndarray] = []  # list pop/append are atomic: threads share it unlocked


def as_buffer(data: object) -> memoryview:
    """`data` as a flat byte memoryview (bytes, bytearray, memoryview, uint8 ndarray)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise InvalidArgument(f"numpy data must be uint8, not {data.dtype}")
        data = np.ascontiguousarray(data).reshape(-1)
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"data must be bytes-like or a uint8 numpy array, not {type(data).__name__}")
    view = memoryview(data)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def check_int(what: str, value: object) -> int:
    """`value` as a Python int: an int or any integer type with __index__ (numpy
    integer scalars), never a bool. InvalidArgument otherwise (floats included).
    Callers compare the result, never `value`: numpy arithmetic wraps around."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            pass
    raise InvalidArgument(f"{what} must be an integer, not {type(value).__name__}")


def check_size(what: str, size: object) -> int:
    """`size` as an int in 1..MAX_VDISK_SIZE: InvalidArgument (not an integer, not
    positive), OutOfRange (too large)."""
    n = check_int(what, size)
    if n <= 0:
        raise InvalidArgument(f"{what} must be positive, not {n}")
    if n > MAX_VDISK_SIZE:
        raise OutOfRange(f"{what} of {n} bytes exceeds the maximum of {MAX_VDISK_SIZE}")
    return n


def check_range(what: str, offset: object, length: object, size: int) -> tuple[int, int]:
    """(offset, length) as Python ints; InvalidArgument unless both are integers,
    OutOfRange unless [offset, offset+length) lies in [0, size)."""
    off = check_int(f"{what}: offset", offset)
    n = check_int(f"{what}: length", length)
    if off < 0 or n < 0 or off + n > size:
        raise OutOfRange(f"{what}: range [{off}, {off + n}) is outside [0, {size})")
    return off, n


def read_image(
    ctx: ClusterContext, top_layer: int, name: str, offset: int, length: int,
    dirty: DirtyBlocks | None = None,
) -> bytes:
    """Bytes [offset, offset+length) of the image seen from `top_layer` (plus dirty blocks).

    Every extent is verified; a mismatch raises Corruption naming `name` and the offset.
    """
    if length == 0:
        return b""
    bs = ctx.block_size
    first = offset // bs
    nblocks = (offset + length - 1) // bs - first + 1
    with _read_buffer(nblocks * bs) as out:
        full, partial = dirty.overlay(first, nblocks, out) if dirty is not None else (None, [])
        some_dirty = full is not None and bool(full.any())
        if not some_dirty:
            # the common case: one range lookup, extents read straight into `out`
            with ctx.map_lock:
                ids = ctx.tree.lookup_range(top_layer, first, nblocks)
            read_extents(ctx, ids, out, name, first)
        elif not full.all():
            blocks = np.flatnonzero(~full).astype(np.uint64) + np.uint64(first)
            with ctx.map_lock:
                ids = ctx.tree.lookup(top_layer, blocks)
            target = np.empty(blocks.size * bs, dtype=np.uint8)
            read_extents(ctx, ids, target, name, blocks)
            out.reshape(nblocks, bs)[~full] = target.reshape(-1, bs)
        if partial:
            dirty.patch(partial, out)  # type: ignore[union-attr]
        start = offset - first * bs
        return out[start : start + length].tobytes()


Run = tuple[int, int, bool]  # (offset, length, allocated)


def allocated_runs(
    ctx: ClusterContext, top_layer: int, offset: int, length: int,
    dirty: DirtyBlocks | None = None,
) -> list[Run]:
    """Allocation of [offset, offset+length) of the image seen from `top_layer` (plus
    dirty blocks), as VDisk.allocated_ranges states it. One range lookup of the map and
    numpy run detection: no per-block Python loop (dirty blocks aside, which the OpLog
    bounds)."""
    if length == 0:
        return []
    bs = ctx.block_size
    first = offset // bs
    nblocks = (offset + length - 1) // bs - first + 1
    with ctx.map_lock:
        ids = ctx.tree.lookup_range(top_layer, first, nblocks)
    allocated = ids != 0
    if dirty is not None:
        dirty.mark_allocated(first, allocated)
    breaks = np.flatnonzero(allocated[1:] != allocated[:-1]) + 1
    if not breaks.size:  # the common case, and np.concatenate costs more than the lookup
        return [(offset, length, bool(allocated[0]))]
    heads = np.concatenate(([0], breaks))
    starts = (heads + first) * bs
    ends = (np.concatenate((breaks, [nblocks])) + first) * bs
    starts[0], ends[-1] = offset, offset + length  # the first and last run are clipped
    return list(zip(starts.tolist(), (ends - starts).tolist(), allocated[heads].tolist(),
                    strict=True))


@contextmanager
def _read_buffer(nbytes: int) -> Iterator[np.ndarray]:
    """A uint8 array of `nbytes` to assemble one read in, for the `with` block.

    Reads up to READ_BUFFER_MAX borrow a buffer from a small pool: a fresh one
    per read, next to the `bytes` the read returns, makes malloc hand the memory
    back to the kernel and fault it in again, which costs more than a warm read
    itself (measured 2-4x slower 1 MiB reads)."""
    if nbytes > READ_BUFFER_MAX:
        yield np.empty(nbytes, np.uint8)
        return
    try:
        buf = _read_pool.pop()
    except IndexError:
        buf = np.empty(nbytes, np.uint8)
    if buf.size < nbytes:
        buf = np.empty(nbytes, np.uint8)
    try:
        yield buf[:nbytes]
    finally:
        if len(_read_pool) < READ_BUFFERS:
            _read_pool.append(buf)


def read_extents(
    ctx: ClusterContext, ids: np.ndarray, out: np.ndarray, name: str, blocks: np.ndarray | int
) -> None:
    """Read (and verify) extents into `out`; Corruption names `name` and the offset.
    `blocks`: the block of each id, or the first of consecutive blocks."""
    try:
        ctx.store.read_blocks(ids, out)
    except Corruption as exc:
        i = getattr(exc, "batch_index", 0) or 0
        where = (blocks + i if isinstance(blocks, int) else int(blocks[i])) * ctx.block_size
        raise Corruption(f"{name} at offset {where}: {exc}") from exc


@contextmanager
def rows_restored_on_error(*rows: object) -> Iterator[None]:
    """Undo changes made to these catalogue row objects if the block fails (wrap the
    catalogue transaction that writes them, so a failed commit is undone too): RAM
    keeps saying what the catalogue says."""
    saved = [dict(vars(row)) for row in rows]
    try:
        yield
    except BaseException:
        for row, fields in zip(rows, saved, strict=True):
            vars(row).update(fields)
        raise


@contextmanager
def lock_group(vdisks: Sequence[VDisk], duplicate_error: str, *,
               writable: bool = True) -> Iterator[list[VDisk]]:
    """Hold the locks of `vdisks`, each checked writable (unless `writable` is False), and
    yield them in vDisk-id order: the one order every group operation (snapshot_group, LWS)
    takes them in, so two never deadlock. InvalidArgument(duplicate_error) if one is named
    twice."""
    members = sorted({vd.id: vd for vd in vdisks}.values(), key=lambda vd: vd.id)
    if len(members) != len(vdisks):
        raise InvalidArgument(duplicate_error)
    with ExitStack() as stack:
        for vd in members:
            stack.enter_context(vd._lock)
            if writable:
                vd._check_writable()  # a replica's snapshots and LWS come from its source
        yield members


def _run_bounds(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (starts, stops) of the runs of consecutive numbers in sorted `blocks`."""
    breaks = np.flatnonzero(np.diff(blocks.astype(np.int64)) != 1) + 1
    return np.r_[0, breaks], np.r_[breaks, blocks.size]


def _runs(blocks: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index pairs of the runs of consecutive numbers in sorted `blocks`."""
    return list(zip(*(a.tolist() for a in _run_bounds(blocks)), strict=True))


def block_ranges(blocks: np.ndarray, block_size: int, size: int) -> list[tuple[int, int]]:
    """Sorted block indices -> merged (offset, length) byte ranges clipped to `size`."""
    if blocks.size == 0:
        return []
    blocks = blocks.astype(np.int64)
    first, stop = _run_bounds(blocks)
    starts = blocks[first] * block_size
    ends = np.minimum((blocks[stop - 1] + 1) * block_size, size)
    return list(zip(starts.tolist(), (ends - starts).tolist(), strict=True))


class VDisk:
    """A thin virtual disk; get one from `Cluster.create_vdisk` / `Cluster.vdisk`.

    Thread-safe: writes to one vDisk are applied in one order (its lock).
    """

    def __init__(self, ctx: ClusterContext, row: VDiskRow) -> None:
        self._ctx = ctx
        self._row = row
        self._lock = ordered_lock(Level.VDISK, f"vDisk {row.name}", rank=row.id, reentrant=True)
        self._dirty = DirtyBlocks(ctx.block_size)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # map entries not yet persisted
        # Extent ids the head named before an unpersisted update replaced them: recovery
        # replays the OpLog onto the persisted map, so gc must keep these until persist.
        self._superseded: list[np.ndarray] = []
        self._last_seq = 0
        self._deleted = False
        self._mirror: WriteMirror | None = None  # Engine.set_mirror (nxstore.store.mirror)

    # -- properties ------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._row.name

    @property
    def id(self) -> int:
        return self._row.id

    @property
    def size(self) -> int:
        return self._row.size

    @property
    def container(self) -> str:
        return self._ctx.containers[self._row.container_id].name

    @property
    def head_layer(self) -> int:
        return self._row.head_layer

    @property
    def read_depth(self) -> int:
        """Map layers a read of this vDisk may consult (bounded by chain collapse)."""
        with self._ctx.map_lock:
            return self._ctx.tree.read_depth(self._row.head_layer)

    @property
    def dirty_bytes(self) -> int:
        """RAM held by undrained blocks (an upper bound)."""
        return self._dirty.nbytes

    def __repr__(self) -> str:
        return f"VDisk({self.name!r}, size={self.size})"

    # -- I/O --------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        """Bytes at [offset, offset+length); unwritten and trimmed ranges read as zeros.

        Raises OutOfRange/InvalidArgument for a bad range, Corruption if stored
        data fails verification (never returns wrong bytes).
        """
        with self._lock:
            offset, length = check_range(f"read of {self.name}", offset, length, self.size)
            return read_image(
                self._ctx, self._row.head_layer, self.name, offset, length, self._dirty
            )

    def allocated_ranges(self, offset: int, length: int) -> list[Run]:
        """Which parts of [offset, offset+length) hold data: consecutive
        (offset, length, allocated) runs, in order, that cover the range exactly, each
        of nonzero length, neighbours differing in `allocated` (so [] for length 0).

        allocated False: never written since creation, or trimmed since (at the time of
        the call): reads as zeros and takes no space. True: written, unwritten runs
        aside; it may still read as zeros (a written zero block). Block granular: a run
        boundary inside the range falls on a block boundary. Costs one range lookup of
        the block map (memory: 8 bytes per block of the range). Raises
        OutOfRange/InvalidArgument for a bad range.
        """
        with self._lock:
            offset, length = check_range(f"allocation of {self.name}", offset, length,
                                         self.size)
            return allocated_runs(self._ctx, self._row.head_layer, offset, length,
                                  self._dirty)

    def write(self, offset: int, data: object) -> None:
        """Write `data` at `offset`. Durable once a later `flush()` returns."""
        self._write(offset, data, mirrored=False)

    def trim(self, offset: int, length: int) -> None:
        """Discard [offset, offset+length): it reads as zeros. Durable after `flush()`."""
        self._trim(offset, length, mirrored=False)

    def write_blocks(self, blocks: np.ndarray, data: np.ndarray) -> None:
        """Write whole blocks, scattered: row i of `data` (uint8, (n, block_size)) becomes
        block `blocks[i]` (integers, strictly increasing). Like a large aligned `write`, the
        rows go straight to the extent store, deduplicated and compressed as one batch, and
        are logged as one MAP record per run of consecutive blocks: no block is written
        twice. Durable once a later `flush()` returns. Raises InvalidArgument (shapes,
        dtype, order), OutOfRange (a block not wholly inside the vDisk), ReadOnly; nothing
        is written then."""
        bs = self._ctx.block_size
        rows = np.ascontiguousarray(data)
        nums = np.asarray(blocks)
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != bs:
            raise InvalidArgument(f"write to {self.name}: data must be uint8 rows of {bs} bytes")
        if nums.ndim != 1 or nums.dtype.kind not in "iu" or len(nums) != len(rows):
            raise InvalidArgument(f"write to {self.name}: {len(rows)} rows need as many "
                                  "integer block numbers")
        if not len(nums):
            return
        if np.any(np.diff(nums.astype(np.int64)) <= 0):
            raise InvalidArgument(f"write to {self.name}: block numbers must increase")
        if int(nums[0]) < 0 or (int(nums[-1]) + 1) * bs > self.size:
            raise OutOfRange(f"write to {self.name}: blocks {int(nums[0])}..{int(nums[-1])} "
                             f"are not all inside its {self.size} bytes")
        nums = nums.astype(np.uint64)
        self._ctx.throttle()
        with self._lock:
            self._check_target(mirrored=False)
            self._store_blocks(nums, rows)
            if self._mirror is not None:
                for start, stop in _runs(nums):
                    self._mirror.write(self, int(nums[start]) * bs,
                                       memoryview(rows[start:stop]).cast("B"))

    def apply_mirrored_write(self, offset: int, data: object) -> None:
        """Apply a write a mirror received from another vDisk (nxstore.store.mirror) to this
        read-only replica; durable, like `write`, once a later `flush()` returns. For the
        replication layers only. Raises InvalidArgument if this vDisk is writable (a
        promoted replica takes no more mirrored writes), NotFound (deleted), OutOfRange."""
        self._write(offset, data, mirrored=True)

    def apply_mirrored_trim(self, offset: int, length: int) -> None:
        """`trim` for a read-only replica; see `apply_mirrored_write`."""
        self._trim(offset, length, mirrored=True)

    def _write(self, offset: int, data: object, mirrored: bool) -> None:
        view = as_buffer(data)
        offset, n = check_range(f"write to {self.name}", offset, len(view), self.size)
        if n == 0:
            return
        bs = self._ctx.block_size
        lo, hi = -(-offset // bs) * bs, (offset + n) // bs * bs
        self._ctx.throttle()
        bypass = n >= OPLOG_BYPASS_BYTES and hi - lo >= bs
        self._ctx.oplog.wait_for_space(n - (hi - lo) if bypass else n)
        with self._lock:
            self._check_target(mirrored)
            if bypass:
                self._write_logged(offset, view[: lo - offset])
                self._write_direct(lo, view[lo - offset : hi - offset])
                self._write_logged(hi, view[hi - offset :])
            else:
                self._write_logged(offset, view)
            if self._mirror is not None and not mirrored:
                self._mirror.write(self, offset, view)

    def _trim(self, offset: int, length: int, mirrored: bool) -> None:
        offset, length = check_range(f"trim of {self.name}", offset, length, self.size)
        if length == 0:
            return
        with self._lock:
            self._check_target(mirrored)
            seq = self._ctx.oplog.append_trim(self.id, offset, length)
            self._apply_trim(offset, length, seq)
            if self._mirror is not None and not mirrored:
                self._mirror.trim(self, offset, length)

    def flush(self) -> None:
        """Return once every earlier write and trim of this vDisk is durable (with a mirror
        installed, durable at the mirror too: nxstore.store.mirror)."""
        with self._lock:
            seq = self._last_seq
            mirror = self._mirror
        if mirror is not None:
            mirror.prepare_flush(self)
        # The extents a MAP record names must be durable before the record is.
        self._ctx.store.sync()
        self._ctx.oplog.sync(seq)
        if mirror is not None:
            mirror.flush(self)

    def resize(self, new_size: int) -> None:
        """Grow the vDisk to `new_size` bytes; durable on return. Raises InvalidArgument
        (not an integer), OutOfRange (shrinking, or beyond MAX_VDISK_SIZE), ReadOnly;
        on any error the size stays as it was."""
        size = check_int(f"{self.name}: new size", new_size)
        with self._lock, rows_restored_on_error(self._row), self._ctx.catalog.transaction():
            self._check_writable()
            self.check_mirror_allows("resize")
            if size < self.size:
                raise OutOfRange(f"{self.name}: cannot resize from {self.size} to {size} (grow only)")
            if size > MAX_VDISK_SIZE:
                raise OutOfRange(f"{self.name}: new size {size} exceeds the maximum of "
                                 f"{MAX_VDISK_SIZE} bytes")
            self._row.size = size
            self._ctx.catalog.update(self._row)

    # -- OpLog application (used live and by recovery) ---------------------------
    def _write_logged(self, offset: int, view: memoryview) -> None:
        if len(view):
            seq = self._ctx.oplog.append_write(self.id, offset, view)
            self._apply_write(offset, view, seq)

    def _write_direct(self, offset: int, view: memoryview) -> None:
        bs = self._ctx.block_size
        first = offset // bs
        rows = np.frombuffer(view, dtype=np.uint8).reshape(-1, bs)
        self._store_blocks(np.arange(first, first + len(rows), dtype=np.uint64), rows)

    def _store_blocks(self, blocks: np.ndarray, rows: np.ndarray) -> None:
        """Put `rows` into the extent store as one batch and point `blocks` (increasing)
        at them, one MAP record per run of consecutive blocks (caller holds the lock)."""
        container = self._ctx.containers[self._row.container_id]
        with self._ctx.map_lock:
            ids = self._ctx.store.put_blocks(
                rows,
                dedup=container.dedup,
                compress=container.compression,
                verify_dedup=container.verify_dedup,
                container_id=container.id,
            )
            for start, stop in _runs(blocks):
                seq = self._ctx.oplog.append_map(self.id, int(blocks[start]), ids[start:stop])
            self._set_map(blocks, ids)  # one map update for every run
            self._last_seq = seq

    def _apply_write(self, offset: int, view: memoryview, seq: int) -> None:
        self._dirty.write(offset, view, seq)
        self._last_seq = seq

    def _apply_trim(self, offset: int, length: int, seq: int) -> None:
        bs = self._ctx.block_size
        lo, hi = -(-offset // bs) * bs, (offset + length) // bs * bs
        if hi <= lo:
            self._apply_write(offset, memoryview(bytes(length)), seq)
            return
        if lo > offset:
            self._apply_write(offset, memoryview(bytes(lo - offset)), seq)
        if offset + length > hi:
            self._apply_write(hi, memoryview(bytes(offset + length - hi)), seq)
        blocks = np.arange(lo // bs, hi // bs, dtype=np.uint64)
        with self._ctx.map_lock:
            self._set_map(blocks, np.zeros(blocks.size, dtype=np.uint64))
        self._last_seq = seq

    def _apply_map(self, first_block: int, ids: np.ndarray, seq: int) -> None:
        blocks = np.arange(first_block, first_block + ids.size, dtype=np.uint64)
        self._set_map(blocks, ids)
        self._last_seq = seq

    def _set_map(self, blocks: np.ndarray, ids: np.ndarray) -> None:
        """Whole-block map update of the head (caller holds both locks)."""
        head = self._ctx.tree.layer(self._row.head_layer)
        old, found = head.lookup(blocks)
        old = old[found & (old != 0)]
        if old.size:
            self._superseded.append(old)
        head.set(blocks, ids)
        self._pending.append((blocks, ids))
        self._dirty.discard(blocks)

    def unpersisted_extents(self) -> np.ndarray:
        """Extent ids the persisted head map may still name although the in-memory one
        no longer does (caller holds the map lock): gc must not sweep them."""
        if not self._superseded:
            return np.zeros(0, dtype=np.uint64)
        return np.concatenate(self._superseded)

    def discard_unpersisted(self) -> None:
        """Forget undrained and unpersisted state: the head it belongs to is being
        replaced or deleted (caller holds this vDisk's lock and the map lock)."""
        self._dirty.clear()
        self._map_persisted()

    def _map_persisted(self) -> None:
        """The head's map on disk now equals the one in RAM (caller holds the map lock)."""
        self._pending.clear()
        self._superseded.clear()

    def replay(self, record: Record, *, require_extents: bool = True) -> bool:
        """Re-apply one OpLog record after a crash; False if it was skipped (with
        `require_extents`, a MAP record naming extents the store lacks: they never became
        durable, so it was never acknowledged)."""
        with self._lock:
            if record.type == RecordType.WRITE:
                self._apply_write(record.offset, memoryview(record.payload), record.seq)
            elif record.type == RecordType.TRIM:
                self._apply_trim(record.offset, record.length, record.seq)
            elif record.type == RecordType.MAP:
                ids = np.frombuffer(record.payload, dtype="<u8").astype(np.uint64)
                if require_extents and not self._ctx.store.contains(ids):
                    return False
                with self._ctx.map_lock:
                    self._apply_map(record.offset, ids, record.seq)
            return True

    def _check_alive(self) -> None:
        if self._deleted:
            raise NotFound(f"vDisk {self.name!r} was deleted")

    def _check_writable(self) -> None:
        self._check_alive()
        if self._row.read_only:
            raise ReadOnly(f"vDisk {self.name!r} is a read-only replica")

    def _check_target(self, mirrored: bool) -> None:
        """A write of the vDisk's own must find it writable; a mirrored one, a replica."""
        if not mirrored:
            self._check_writable()
            return
        self._check_alive()
        if not self._row.read_only:
            raise InvalidArgument(f"vDisk {self.name!r} is writable: it takes no mirrored writes")

    def check_mirror_allows(self, what: str) -> None:
        """Let the installed mirror refuse `what` ("restore", "resize"); caller holds the lock."""
        if self._mirror is not None:
            self._mirror.check_change(self, what)

    @property
    def read_only(self) -> bool:
        return self._row.read_only

    # -- drain --------------------------------------------------------------------
    def drain(self) -> int:
        """Move every dirty block into the extent store and the head map; persist
        the map. Returns the number of blocks moved."""
        moved = 0
        while True:
            with self._lock:
                step = self._drain_step()
                if not step:
                    self._persist()
                    return moved
                moved += step

    def _drain_step(self) -> int:
        blocks, entries = self._dirty.take_batch(DRAIN_BATCH_BLOCKS)
        if not entries:
            return 0
        bs = self._ctx.block_size
        zero = bytes(bs)
        data = np.frombuffer(
            bytearray(b"".join(zero if e.data is None else e.data for e in entries)), dtype=np.uint8
        )
        partial = [(i, e) for i, e in enumerate(entries) if e.mask is not None]
        container = self._ctx.containers[self._row.container_id]
        with self._ctx.map_lock:
            if partial:
                # Partially written blocks get their older bytes only now, in one batch.
                where = blocks[[i for i, _ in partial]]
                base = np.empty(len(partial) * bs, dtype=np.uint8)
                ids = self._ctx.tree.lookup(self._row.head_layer, where)
                read_extents(self._ctx, ids, base, self.name, where)
                for k, (i, entry) in enumerate(partial):
                    np.copyto(data[i * bs : (i + 1) * bs], base[k * bs : (k + 1) * bs],
                              where=~entry.mask)
            ids = self._ctx.store.put_blocks(
                data,
                dedup=container.dedup,
                compress=container.compression,
                verify_dedup=container.verify_dedup,
                container_id=container.id,
            )
            self._set_map(blocks, ids)
        return len(entries)

    def drain_all_locked(self) -> None:
        """Drain and persist everything (caller holds this vDisk's lock)."""
        while self._drain_step():
            pass
        self._persist()

    def safe_point(self) -> int:
        """OpLog seq up to which every record of this vDisk is in the in-memory map."""
        first = self._dirty.first_seq()
        return first - 1 if first is not None else self._ctx.oplog.last_seq

    def release_point(self) -> int:
        """OpLog seq up to which this vDisk needs no record any more (all persisted)."""
        with self._lock:
            if len(self._dirty) or self._pending:
                with self._ctx.map_lock:
                    return self._ctx.tree.applied_seq(self._row.head_layer)
            return self._ctx.oplog.last_seq

    def _persist(self) -> None:
        if not self._pending:
            return
        blocks = np.concatenate([b for b, _ in self._pending])
        vals = np.concatenate([v for _, v in self._pending])
        safe = self.safe_point()
        self._ctx.store.sync()  # extents before the map entries that name them
        self._sync_applied(safe)
        with self._ctx.map_lock:
            self._ctx.tree.persist(self._row.head_layer, blocks, vals, safe)
            self._map_persisted()

    def _sync_applied(self, safe: int) -> None:
        """Make durable every record whose effect a map about to be persisted may hold.

        The OpLog hands out again the seqs of records lost before a sync, so a map may
        only claim a safe point whose records are durable. And the map holds drained
        blocks of records after the safe point too: were those lost while the map kept
        them, replay from the safe point would lay older partial writes over them,
        mixing two writes in one block. Syncing through this vDisk's newest record
        lets replay re-apply every later record in order instead.
        """
        self._ctx.oplog.sync(max(safe, self._last_seq))

    def fold_parent(self, parent: int) -> None:
        """Merge the unnamed layer `parent` into this vDisk's head (after its
        snapshot was deleted), so reads and gc no longer see it. Does nothing if
        the head moved on meanwhile (restored, deleted, folded by another prune)."""
        with self._lock:
            self._ctx.store.sync()  # pending entries' extents, before rewriting the map
            with self._ctx.map_lock:
                tree = self._ctx.tree
                head = self._row.head_layer
                row = tree.rows.get(head)
                if self._deleted or row is None or row.parent != parent:
                    return
                merged = collapse([tree.layer(head), tree.layer(parent)])
                safe = self.safe_point()
                self._sync_applied(safe)
                tree.fold_into_head(parent, head, merged, safe)
                self._map_persisted()

    # -- snapshots ------------------------------------------------------------------
    def snapshot(self, name: str) -> Snapshot:
        """Freeze the vDisk's current content as snapshot `name` (O(1) in disk size).

        Raises AlreadyExists if this vDisk has a snapshot of that name. Durable and
        atomic: after a crash the snapshot exists completely or not at all.
        """
        from .snapshot import take_snapshots

        return take_snapshots(self._ctx, [self], check_name("snapshot", name))[0]

    def snapshots(self) -> list[Snapshot]:
        """This vDisk's snapshots, oldest first."""
        from .snapshot import Snapshot

        rows = self._ctx.catalog.rows(SnapshotRow, "vdisk_id = ?", (self.id,))
        return [Snapshot(self._ctx, row, self.name) for row in rows]

    def restore(self, snapshot: Snapshot) -> None:
        """Make the vDisk read exactly as `snapshot` (its size too). Its snapshots stay."""
        from .snapshot import restore_vdisk

        restore_vdisk(self._ctx, self, snapshot)

    def changed_blocks(
        self, base: Snapshot, target: Snapshot | None = None
    ) -> list[tuple[int, int]]:
        """Byte ranges whose content DIFFERS between `base` and `target` (or the live disk).

        Block granular: every returned range is made of whole blocks (the last
        clipped to the size) each of which differs from `base` somewhere, and every
        block that differs is in a range. Cost grows with the changes, not the size.
        Works between any two snapshots of related vDisks (ancestors, descendants,
        clones).
        """
        from .snapshot import changed_blocks

        return changed_blocks(self._ctx, base, target, live=self)

    def verify(self, progress: VerifyProgress | None = None) -> VerifyResult:
        """Read and verify every allocated block (undrained writes are drained first);
        every damaged block is in the result, none raises. `progress(bytes done, bytes in
        all)` after each window. Writes wait only while a window is read. Raises NotFound
        (deleted)."""
        from .verify import verify_image

        with self._lock:
            self._check_alive()
            self.drain_all_locked()
            head, size = self._row.head_layer, self.size
        return verify_image(self._ctx, head, f"vDisk {self.name}", size, progress=progress,
                            lock=lambda: self._lock)

    def block_fingerprints(self, first: int, count: int, *,
                           reread: bool = False) -> RangeFingerprints:
        """Extent ids and content fingerprints of blocks first .. first + count - 1 as the
        vDisk holds them now (undrained writes are moved into the map first); with `reread`,
        the blocks are read and verified too (nxstore.store.verify.block_fingerprints).
        Raises OutOfRange, InvalidArgument, NotFound (deleted)."""
        from .verify import block_fingerprints

        with self._lock:
            self._check_alive()
            nblocks = -(-self.size // self._ctx.block_size)
            first, count = check_range(f"blocks of {self.name}", first, count, nblocks)
            while self._drain_step():  # into the map in RAM; the drain persists it later
                pass
            return block_fingerprints(self._ctx, self._row.head_layer, first, count,
                                      reread=reread)

    def lws(self, name: str | None = None) -> LWS:
        """A light-weight snapshot of this vDisk: one OpLog marker, O(1), no drain
        (nxstore.store.lws). Raises ReadOnly (replica), InvalidArgument (name). Durable
        on return."""
        return take_lws(self._ctx, [self], name)[0]
