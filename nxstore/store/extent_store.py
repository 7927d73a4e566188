"""The extent store: deduplicated, compressed, verified fixed-size blocks.

Kept as one file (740 lines) because it is the one `ExtentStore` object: one lock over
the extent table, fingerprint index, group files and id floor; reading, crash recovery and
gc/scrub/relocate already live in extent_read.py, extent_recovery.py and
extent_maintenance.py.

Blocks go in as batches and come back as extent ids (dense uint64 from 1; id 0
is the zero block, never stored). Each new block becomes a record in an
append-only extent group file (codec: extent_group.py); the extent table
(extent_table.py) maps id -> (group, offset, stored length, flags, fingerprint,
container) in RAM and is checkpointed; the native fingerprint index maps
fingerprint -> id for dedup (persisted by fingerprint_index.py).

Durability: `put_blocks` writes to the page cache; `sync` makes every extent put
before it durable (fdatasync of the touched groups + directory); `checkpoint`
also persists the table and index so `open` only scans group tails. `open`
recovers from a crash at any point: see docs/format.md.

One lock serialises all calls; the store may be shared by threads.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import xxhash

from ..constants import (
    COMPRESS_MIN_SAVING,
    EXTENT_GROUP_BYTES,
    EXTENT_TABLE_FILE,
    ID_FLOOR_FILE,
    ID_FLOOR_STEP,
    ID_FLOOR_VERSION,
    INDEX_FILE,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
)
from ..errors import ClosedError, Corruption, InvalidArgument, NotFound, raise_os_error
from .extent_group import (
    FLAG_COMPRESSED,
    FLAG_INDEXED,
    HEADER_BYTES,
    HEADER_DTYPE,
    ExtentCorruption,
    encode_records,
    fill_headers,
    group_file_name,
)
from .extent_read import GROUPS_PER_CALL, MAX_GAP, StoredRecords, load_records, load_stored
from .extent_recovery import recover
from .extent_remote import RemoteGroups
from .extent_table import PRESENT, ExtentTable
from .fileutil import (
    fsync_dir,
    make_private_dirs,
    open_private,
    read_checksummed,
    write_checksummed,
)
from .fingerprint_index import save_index
from .group_backend import BackendConfig, load_config, open_backend, save_config
from .lockorder import Level, ordered_lock
from .native import copy_runs, fingerprint_blocks, lz4_decompress_batch, verify_blocks
from .parallel import HASH_PART_BYTES, split_rows

log = logging.getLogger(__name__)

__all__ = ["ExtentCorruption", "ExtentStore", "StoredRecords"]

_MAX_FDS = 256  # cached group file descriptors
assert EXTENT_GROUP_BYTES + HEADER_BYTES + MAX_BLOCK_SIZE < 2**32  # offsets are u32
assert GROUPS_PER_CALL <= _MAX_FDS  # a read's open fds all stay cached (extent_read)


class ExtentStore:
    """See the module docstring. Create with `ExtentStore.open`."""

    def __init__(self, directory: str, block_size: int) -> None:
        self.directory = directory
        self.block_size = block_size
        self._lock = ordered_lock(Level.EXTENT_STORE, f"extent store {directory}", reentrant=True)
        self._table = ExtentTable()
        self._glen: dict[int, int] = {}  # group -> bytes of valid records
        self._next_group = 1
        self._active: int | None = None  # group receiving puts
        self._gc_active: int | None = None  # group receiving compacted extents
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._dirty: set[int] = set()
        self._dir_dirty = False
        self._changed = False  # since the last checkpoint
        self._closed = False
        self._problems: list[str] = []  # found by open(); scrub reports them
        self._scratch = np.empty(MAX_GAP, np.uint8)  # where reads drop the gaps between records
        self._zero_fp = np.frombuffer(xxhash.xxh3_128(bytes(block_size)).digest(), np.uint8)
        self._index = None  # set by open
        self._n_extents = self._stored = self._n_compressed = 0
        self._floor = 0  # durable: no id >= this was ever handed out
        self.floor_lost = False  # the floor file was damaged: the owner must raise_floor()
        self.cut_tails: list[str] = []  # group tails open cut as torn (kept in salvaged/)
        self._remote: RemoteGroups | None = None  # where sealed groups go (None: all local)
        self._pinned: set[int] = set()  # groups a read holds open: the cache keeps their fds
        self._group_bytes: int | None = None  # the back end's group size (None: the default)

    # -- open / close -------------------------------------------------------------
    @classmethod
    def open(cls, directory: str, block_size: int, *, create: bool = False,
             backend: BackendConfig | None = None) -> ExtentStore:  # fmt: skip
        """Open (or with create=True, create if missing) the store in `directory`.
        `backend` (create only): keep sealed groups there (group_backend.py), recorded in
        the store's backend.conf; a store opened later uses what it records.

        Loads the table checkpoint, scans group bytes beyond it, truncates torn
        group tails, rebuilds the table (from the groups) or the index (from the
        table) when their file is missing or damaged, logging why. Damage found
        elsewhere is logged and kept for `scrub`. Raises NotFound (no store and
        not create), InvalidArgument (block size differs from the store's),
        FormatError (a file from a newer version), and for a store on S3 NotFound
        (bucket), AuthenticationError, ObjectStoreError (unreachable).
        """
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1):
            raise InvalidArgument(f"block size {block_size} is not a power of two in range")
        if not os.path.isdir(directory):
            if not create:
                raise NotFound(f"no extent store at {directory}")
            make_private_dirs(directory)
            fsync_dir(os.path.dirname(os.path.abspath(directory)))
        self = cls(directory, block_size)
        if backend is not None and create:
            save_config(directory, backend)
        config = load_config(directory)
        if config is not None:
            self._remote = RemoteGroups(directory, open_backend(config), config.cache_bytes)
            self._group_bytes = config.group_bytes
        try:
            groups = recover(self, create)
        except BaseException:
            if self._remote is not None:
                self._remote.close()
            raise
        last = groups[-1] if groups else None
        if last is not None and self._glen.get(last, self._group_limit()) < self._group_limit() \
                and os.path.exists(self._path(group_file_name(last))):  # sealed ones are remote
            self._active = last
        self._load_floor()
        self.sync()
        return self

    # -- the id floor -------------------------------------------------------------------
    # Ids are never handed out twice, even when the blocks they were given to were lost in
    # a crash: a durable map or OpLog record that names a lost (or damaged-away) extent must
    # read as an error, never as another block that reused its id. The floor file holds an
    # id above every id ever handed out; it is raised (atomically) before ids reach it.

    def _load_floor(self) -> None:
        path = self._path(ID_FLOOR_FILE)
        t = self._table
        try:
            _, payload = read_checksummed(path, b"NXIDFLOR", ID_FLOOR_VERSION)
            if len(payload) != 8:
                raise Corruption(f"{path}: payload of {len(payload)} bytes, expected 8")
        except FileNotFoundError:
            self._write_floor(t.next_id)  # a store from before the floor, or a new one
            return
        except Corruption as exc:
            self._problem(f"{exc}; ids are handed out above every id the cluster names")
            self.floor_lost = True
            return
        self._floor = int.from_bytes(payload, "little")
        if self._floor > t.next_id:
            t.reserve(self._floor)
            t.next_id = self._floor  # ids a crash lost may be named by durable records

    def _write_floor(self, floor: int) -> None:
        try:
            write_checksummed(self._path(ID_FLOOR_FILE), b"NXIDFLOR", ID_FLOOR_VERSION,
                              [int(floor).to_bytes(8, "little")])
        except OSError as exc:
            raise_os_error(exc, f"extent store {self._path(ID_FLOOR_FILE)}")
        self._floor = floor

    def _reserve_ids(self, upto: int) -> None:
        """Make the floor durable above `upto` before ids below it are handed out."""
        if upto > self._floor:
            self._write_floor(upto + ID_FLOOR_STEP)

    def raise_floor(self, min_next_id: int) -> None:
        """Hand out no id below `min_next_id` (the owner's highest referenced id + 1,
        after the floor file was found damaged); durable on return."""
        with self._lock:
            t = self._table
            if min_next_id > t.next_id:
                t.reserve(min_next_id)
                t.next_id = min_next_id
            self._write_floor(max(t.next_id, self._floor if not self.floor_lost else 0))
            self.floor_lost = False

    def _indexed(self) -> tuple[np.ndarray, np.ndarray]:
        t = self._table
        ids = t.present_ids()
        ids = ids[(t.flags[ids] & FLAG_INDEXED) != 0]
        return t.fp[ids], ids

    def _recount(self) -> None:
        t = self._table
        ids = t.present_ids()
        self._n_extents = int(ids.size)
        self._stored = int(t.slen[ids].sum(dtype=np.int64))
        self._n_compressed = int(np.count_nonzero(t.flags[ids] & FLAG_COMPRESSED))

    def close(self, *, checkpoint: bool = True) -> None:
        """Checkpoint (or, with checkpoint=False, only sync) and release the files.
        Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                if checkpoint and self._changed:
                    self.checkpoint()
                else:
                    self.sync()
                if self._remote is not None:
                    self._remote.wait_uploaded()
                if self._floor > self._table.next_id and not self.floor_lost:
                    self._write_floor(self._table.next_id)  # a clean close reserves nothing
            finally:
                self._closed = True
                for fd in self._fds.values():
                    os.close(fd)
                self._fds.clear()
                if self._remote is not None:
                    self._remote.close()

    def __enter__(self) -> ExtentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def remote(self) -> bool:
        """True when sealed groups live on a remote back end (extent_remote)."""
        return self._remote is not None

    # -- files ------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _problem(self, text: str) -> None:
        log.error("extent store: %s", text)
        self._problems.append(text)

    def _fd(self, g: int, spans: list[tuple[int, int]] | None = None) -> int:
        """An fd of group g's file, local or (remote groups) the cache file, with every
        byte of it readable, or with `spans` ((offset, length) pairs) those bytes at least
        (a cold remote group is fetched only in the chunks they touch: extent_remote)."""
        fd = self._fds.get(g)
        if fd is not None:
            self._fds.move_to_end(g)
            if self._remote is not None and self._remote.is_partial(g):
                self._fetch_remote(g, spans)
            return fd
        try:
            fd = os.open(self._path(group_file_name(g)), os.O_RDWR)
        except FileNotFoundError:
            if self._remote is None or not self._remote.has(g):
                raise Corruption(f"extent group {self._path(group_file_name(g))} is missing") from None
            fd = os.open(self._fetch_remote(g, spans), os.O_RDONLY)
        self._fds[g] = fd
        while len(self._fds) > _MAX_FDS:
            old, ofd = next(iter(self._fds.items()))
            if old in self._dirty:
                os.fdatasync(ofd)
                self._dirty.discard(old)
            del self._fds[old]
            os.close(ofd)
        return fd

    def _fetch_remote(self, g: int, spans: list[tuple[int, int]] | None) -> str:
        """The path of remote group g's cache file, with `spans` (None: everything)
        fetched first if need be; closes the fds of groups the cache evicted. Raises
        Corruption (the object is missing), ObjectStoreError, AuthenticationError."""
        assert self._remote is not None
        try:
            path, evicted = self._remote.fetch(g, self._pinned, spans)
        except NotFound:
            raise Corruption(f"extent group {group_file_name(g)} is missing from "
                             f"{self._remote.backend.location}") from None  # fmt: skip
        for h in evicted:
            fd = self._fds.pop(h, None)
            if fd is not None:
                os.close(fd)
        return path

    def _group_limit(self) -> int:
        """Bytes past which a group is sealed and the next one started."""
        return self._group_bytes or EXTENT_GROUP_BYTES

    def group_size(self, g: int) -> int | None:
        """Bytes of group g's file (local) or object (remote); None if neither exists."""
        try:
            return os.stat(self._path(group_file_name(g))).st_size
        except FileNotFoundError:
            return None if self._remote is None else self._remote.size(g)

    def _upload_sealed(self) -> None:
        """Hand every sealed, synced local group to the uploader (extent_remote.py), trim
        the read cache, and raise the first upload failure since the last sync:
        AlreadyExists, ObjectStoreError, AuthenticationError (the group stays local and
        is enqueued again by the next sync)."""
        assert self._remote is not None
        open_groups = {g for g in (self._active, self._gc_active)
                       if g is not None and self._glen[g] < self._group_limit()}  # fmt: skip
        for g in sorted(self._glen):
            path = self._path(group_file_name(g))
            if g in open_groups or self._remote.is_remote_or_pending(g) or not os.path.exists(path):
                continue
            self._remote.enqueue(g, path)
        for h in self._remote.evict(self._pinned):
            fd = self._fds.pop(h, None)
            if fd is not None:
                os.close(fd)
        self._remote.raise_error()

    def wait_uploaded(self) -> None:
        """sync, then block until every sealed group is on the remote back end (no-op
        for a local store). Raises what `sync` raises, for the uploads too."""
        self.sync()
        if self._remote is not None:
            self._remote.wait_uploaded()

    def _new_group(self) -> int:
        g = self._next_group
        self._next_group += 1
        fd = open_private(self._path(group_file_name(g)), os.O_RDWR | os.O_EXCL)
        self._fds[g] = fd
        self._glen[g] = 0
        self._dir_dirty = True
        return g

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"extent store {self.directory} is closed")

    def _write_records(
        self, buf: object, sizes: np.ndarray, slot: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Append encoded records (concatenated in `buf`) to the group in attribute
        `slot`, starting a new group once one passes the group size. Returns
        each record's (group, offset). On an I/O error every touched group is cut
        back to its old length and the error re-raised."""
        k = len(sizes)
        ends = np.cumsum(sizes, dtype=np.int64)
        groups = np.empty(k, np.uint32)
        offs = np.empty(k, np.int64)
        mv = memoryview(buf).cast("B")  # type: ignore[arg-type]
        touched: list[tuple[int, int]] = []
        i = boff = 0
        try:
            while i < k:
                g = getattr(self, slot)
                limit = self._group_limit()
                if g is None or self._glen[g] >= limit:
                    g = self._new_group()
                    setattr(self, slot, g)
                start = self._glen[g]
                touched.append((g, start))
                j = min(
                    k, i + 1 + int(np.searchsorted(ends[i:] - boff, limit - start))
                )
                nbytes = int(ends[j - 1]) - boff
                fd, chunk, pos = self._fd(g), mv[boff : boff + nbytes], start
                while chunk:
                    n = os.pwrite(fd, chunk, pos)
                    chunk, pos = chunk[n:], pos + n
                offs[i:j] = start + (ends[i:j] - sizes[i:j] - boff)
                groups[i:j] = g
                self._glen[g] = start + nbytes
                self._dirty.add(g)
                boff += nbytes
                i = j
        except OSError as exc:
            for g, start in touched:
                os.truncate(self._path(group_file_name(g)), start)
                self._glen[g] = start
            raise_os_error(exc, f"extent store {self.directory}")
        return groups, offs

    # -- put ----------------------------------------------------------------------------
    def _blocks(self, data: object) -> np.ndarray:
        arr = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data  # type: ignore[call-overload]
        if arr.dtype != np.uint8:
            raise InvalidArgument(f"data must be uint8, not {arr.dtype}")
        arr = np.ascontiguousarray(arr).reshape(-1)
        if arr.size % self.block_size:
            raise InvalidArgument(
                f"{arr.size} bytes is not a multiple of the block size {self.block_size}"
            )
        return arr.reshape(-1, self.block_size)

    def put_blocks(
        self, data: object, *, dedup: bool = True, compress: bool = True,
        verify_dedup: bool = False, container_id: int = 1,
    ) -> np.ndarray:  # fmt: skip
        """Store n blocks (`data`: uint8 buffer of n*block_size bytes); return their
        extent ids (uint64 (n,), 0 for all-zero blocks, which are never stored).

        dedup: a block whose fingerprint is indexed gets the existing id
        (verify_dedup: only if the bytes are equal; otherwise it is stored anew,
        unindexed). dedup=False stores every nonzero block, unindexed.
        compress: lz4 where it saves >= 1/COMPRESS_MIN_SAVING of the block.
        Not durable until `sync`. Raises InvalidArgument, ClosedError, OSError
        (the store is then unchanged).
        """
        rows = self._blocks(data)
        bs = self.block_size
        parts = split_rows(lambda lo, hi: fingerprint_blocks(rows[lo:hi], bs), len(rows),
                           HASH_PART_BYTES // bs)  # fmt: skip
        fps, zero = parts[0] if len(parts) == 1 else map(np.concatenate, zip(*parts, strict=True))
        return self._put(rows, fps, zero, dedup, compress, verify_dedup, container_id)

    def put_blocks_known(
        self, data: object, fps: np.ndarray, *, dedup: bool = True, compress: bool = True,
        verify_dedup: bool = False, container_id: int = 1,
    ) -> np.ndarray:  # fmt: skip
        """`put_blocks` for blocks whose fingerprints (uint8 (n, 16)) the caller has
        already computed or verified (replication): skips hashing. Wrong
        fingerprints store wrong data that every later read reports as Corruption."""
        rows = self._blocks(data)
        fps = np.ascontiguousarray(fps, np.uint8).reshape(-1, 16)
        if len(fps) != len(rows):
            raise InvalidArgument(f"{len(rows)} blocks but {len(fps)} fingerprints")
        zero = np.all(fps == self._zero_fp, axis=1)
        return self._put(rows, fps, zero, dedup, compress, verify_dedup, container_id)

    def _put(self, rows, fps, zero, dedup, compress, verify, container, write=None) -> np.ndarray:  # noqa: ANN001
        """Assign ids (dedup) and store the new blocks with `write` (default _store)."""
        write = write or self._store
        ids = np.zeros(len(rows), np.uint64)
        nz = np.flatnonzero(~zero)
        if not nz.size:
            return ids
        if self._remote is not None:  # outside the lock: reads go on while uploads catch up
            self._remote.wait_for_room()
        with self._lock:
            self._check_open()
            t = self._table
            first = t.next_id
            self._reserve_ids(first + nz.size)
            if not dedup:
                pos, indexed = nz, False
                ids[nz] = np.arange(first, first + nz.size, dtype=np.uint64)
                return write(rows, pos, ids, fps, indexed, compress, container)
            got, is_new, n_new = self._index.lookup_or_insert(fps[nz], first)
            ids[nz] = got
            pos = nz[is_new]
            try:
                anew = self._verify_dups(rows, nz[~is_new], ids, first, pos) if verify else nz[:0]
                if anew.size:
                    ids[anew] = np.arange(first + n_new, first + n_new + anew.size, dtype=np.uint64)
                    pos = np.concatenate([pos, anew])
                    indexed = np.concatenate([np.ones(n_new, bool), np.zeros(anew.size, bool)])
                else:
                    indexed = True
                return write(rows, pos, ids, fps, indexed, compress, container)
            except BaseException:
                self._index.remove(fps[nz[is_new]])
                raise

    def _verify_dups(self, rows, dup_pos, ids, first, new_pos) -> np.ndarray:  # noqa: ANN001
        """Positions among dup_pos whose bytes differ from the extent they dedup to."""
        if not dup_pos.size:
            return dup_pos
        dids = ids[dup_pos]
        old = dids < first
        expect = np.empty((dup_pos.size, self.block_size), np.uint8)
        if old.any():
            bad = load_records(self, dids[old], expect, np.flatnonzero(old))
            fps_got, _ = fingerprint_blocks(expect, self.block_size)
            sel = np.flatnonzero(old)
            mism = np.any(fps_got[sel] != self._table.fp[dids[old].astype(np.int64)], axis=1)
            for i in set(bad) | set(sel[mism].tolist()):
                log.warning(
                    "verify_dedup: stored extent %d is damaged; storing the block anew",
                    int(dids[i]),
                )
                expect[i] = ~rows[dup_pos[i]]  # force a mismatch
        inb = np.flatnonzero(~old)  # duplicates of a block new in this batch
        expect[inb] = rows[new_pos[(dids[inb] - first).astype(np.int64)]]
        differ = np.any(expect != rows[dup_pos], axis=1)
        return dup_pos[differ]

    def _store(self, rows, pos, ids, fps, indexed, compress, container) -> np.ndarray:  # noqa: ANN001
        """Encode and append the blocks rows[pos] with ids ids[pos]; update the table."""
        bs, k = self.block_size, len(pos)
        if not k:
            return ids
        contiguous = (
            bool(k) and int(pos[-1]) - int(pos[0]) == k - 1 and bool(np.all(np.diff(pos) == 1))
        )
        sel = rows[int(pos[0]) : int(pos[0]) + k] if contiguous else rows[pos]
        sids = ids[pos]
        flags = np.full(k, FLAG_INDEXED, np.uint8) * np.asarray(indexed, np.uint8)
        limit = bs - bs // COMPRESS_MIN_SAVING if compress else 0
        buf, sizes, comp = encode_records(sids, flags, bs, container, fps[pos], sel, limit)
        flags |= comp * np.uint8(FLAG_COMPRESSED)
        self._commit_records(buf, sizes, sids, flags, fps[pos], container)
        return ids

    def _commit_records(self, buf, sizes, sids, flags, fps, container) -> None:  # noqa: ANN001
        """Append encoded records (buf, sizes: encode_records) of extents sids with
        record flags `flags` and fingerprints `fps`; enter them in the table."""
        groups, offs = self._write_records(buf, sizes, "_active")
        k = len(sids)
        t = self._table
        top = int(sids.max()) + 1
        t.reserve(top)
        si = sids.astype(np.int64)
        t.group[si], t.offset[si] = groups, offs
        t.slen[si] = sizes - HEADER_BYTES
        t.container[si] = container
        t.flags[si] = flags | PRESENT
        t.fp[si] = fps
        t.next_id = max(t.next_id, top)
        self._n_extents += k
        self._stored += int(sizes.sum()) - k * HEADER_BYTES
        self._n_compressed += int(np.count_nonzero(flags & FLAG_COMPRESSED))
        self._changed = True

    # -- records in their stored form (replication ships them as they are) -------------
    def put_stored(
        self, records: StoredRecords, *, dedup: bool = True, compress: bool = True,
        container_id: int = 1,
    ) -> np.ndarray:  # fmt: skip
        """Store blocks given in their stored form (as `read_stored` returns them, or as
        they arrive over the wire); return their extent ids like `put_blocks` (0 for
        the zero block). Every block is verified first: the compressed payloads are
        decompressed in one batch call, every block is fingerprinted and compared with
        records.fingerprints; a payload that does not decode or does not match raises
        Corruption naming the record, and nothing is stored. The payloads are then
        written as they are (a compressed one decompressed when `compress` is False).
        dedup as in put_blocks. Not durable until `sync`. Raises InvalidArgument
        (inconsistent records), Corruption, ClosedError, OSError."""
        checked = _CheckedRecords(records, self.block_size)
        fps = checked.fps
        zero = np.all(fps == self._zero_fp, axis=1)
        return self._put(checked, fps, zero, dedup, compress, False, container_id,
                         self._store_stored)  # fmt: skip

    def _store_stored(self, checked, pos, ids, fps, indexed, compress, container) -> np.ndarray:  # noqa: ANN001
        """`_store` for verified stored records: their payloads as they are."""
        k = len(pos)
        if not k:
            return ids
        rec = checked.records
        sids = ids[pos]
        keep = rec.compressed[pos] & compress  # stays compressed
        flags = np.full(k, FLAG_INDEXED, np.uint8) * np.asarray(indexed, np.uint8)
        flags[keep] |= FLAG_COMPRESSED
        n, bs = len(rec), self.block_size
        slens = np.where(keep, rec.lengths[pos], bs).astype(np.int64)
        sizes = slens + HEADER_BYTES
        hdr = np.zeros(k, HEADER_DTYPE)
        fill_headers(hdr, sids, flags, bs, slens, container, fps[pos])
        if not keep.any() and checked.packed_raw and k == n:  # all raw: one vectorised copy
            buf = np.empty((k, HEADER_BYTES + bs), np.uint8)
            buf[:, :HEADER_BYTES] = hdr.view(np.uint8).reshape(k, HEADER_BYTES)
            buf[:, HEADER_BYTES:] = rec.payload[: n * bs].reshape(n, bs)
        else:  # each payload as it came (or decompressed), after its header
            buf = np.empty(int(sizes.sum()), np.uint8)
            starts = np.cumsum(sizes) - sizes
            buf[starts[:, None] + np.arange(HEADER_BYTES)] = hdr.view(np.uint8).reshape(
                k, HEADER_BYTES)
            checked.gather(pos, keep, buf, starts + HEADER_BYTES)
        self._commit_records(buf.reshape(-1), sizes, sids, flags, fps[pos], container)
        return ids

    def read_stored(self, extent_ids: np.ndarray) -> StoredRecords:
        """The records of extents (nonzero ids) in their stored form: payloads packed in
        the order of `extent_ids`, lz4-compressed where they were stored so, with the
        table's fingerprints. Every header is checked against the table; nothing is
        decompressed or fingerprinted (`put_stored` verifies at the receiver). Raises
        ExtentCorruption for the first bad or missing extent, InvalidArgument for id 0."""
        ids = np.ascontiguousarray(extent_ids, np.uint64).reshape(-1)
        with self._lock:
            self._check_open()
            if not ids.all():
                raise InvalidArgument("read_stored: extent id 0 (the zero block) is never stored")
            self._require_present(ids, np.arange(len(ids)))
            records, errors = load_stored(self, ids)
            if errors:
                i = min(errors)
                self._raise(int(ids[i]), i, errors[i])
            return records

    # -- read ---------------------------------------------------------------------------
    def _raise(self, eid: int, batch_index: int | None, what: str) -> None:
        t = self._table
        g, o = (int(t.group[eid]), int(t.offset[eid])) if eid < t.next_id else (0, 0)
        where = f"{self._path(group_file_name(g))} offset {o}" if g else self.directory
        if not g and self.cut_tails:
            where += "; open cut torn tails of " + ", ".join(self.cut_tails)
        raise ExtentCorruption(f"extent {eid} ({where}): {what}", eid, batch_index, g, o)

    def _require_present(self, eids: np.ndarray, positions: np.ndarray) -> None:
        """ExtentCorruption for the first of eids (at positions of the caller's batch)
        that is not in the store."""
        missing = ~self._table.is_present(eids)
        if missing.any():
            i = int(np.argmax(missing))
            self._raise(int(eids[i]), int(positions[i]),
                        "extent is not in the store (lost with a damaged or truncated "
                        "extent group; nxstore fsck lists the damage)")

    def read_blocks(self, extent_ids: np.ndarray, out: np.ndarray) -> None:
        """Fill `out` (uint8, len(extent_ids)*block_size bytes, C-contiguous) with
        the blocks; id 0 gives zeros. Every extent's header and fingerprint is
        checked: raises ExtentCorruption (a Corruption with .extent_id,
        .batch_index, .group, .offset) for the first bad or missing extent;
        InvalidArgument for a wrong `out`."""
        ids = np.ascontiguousarray(extent_ids, np.uint64).reshape(-1)
        n, bs = len(ids), self.block_size
        if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.nbytes != n * bs:
            raise InvalidArgument(f"out must be a uint8 array of {n * bs} bytes")
        if not out.flags.c_contiguous:
            raise InvalidArgument("out must be C-contiguous")
        out2d = out.reshape(n, bs)
        with self._lock:
            self._check_open()
            nz = np.flatnonzero(ids)
            if nz.size < n:
                out2d[ids == 0] = 0
            if not nz.size:
                return
            eids = ids if nz.size == n else ids[nz]
            self._require_present(eids, nz)
            errors = load_records(self, eids, out2d, nz)
            # hashed and compared with the table in one call; i = the first mismatch, or len
            i = verify_blocks(out2d if nz.size == n else out2d[nz], self._table.fp, eids)
            if errors or i < nz.size:
                i = min([*errors, i])
                self._raise(
                    int(eids[i]), int(nz[i]), errors.get(i, "data does not match its fingerprint")
                )

    def fingerprints(self, extent_ids: np.ndarray) -> np.ndarray:
        """Fingerprints (uint8 (n, 16)) of the extents; id 0 gives the zero block's.
        Raises ExtentCorruption for an id not in the store."""
        ids = np.ascontiguousarray(extent_ids, np.uint64).reshape(-1)
        with self._lock:
            self._check_open()
            miss = ~self._table.is_present(ids) & (ids != 0)
            if miss.any():
                i = int(np.argmax(miss))
                self._raise(int(ids[i]), i, "extent is not in the store")
            out = self._table.fp[ids.astype(np.int64)]
            out[ids == 0] = self._zero_fp
            return out

    def lookup(self, fps: np.ndarray) -> np.ndarray:
        """Extent ids (uint64) of indexed extents with these fingerprints; 0 where absent."""
        with self._lock:
            self._check_open()
            return self._index.lookup(fps)

    def contains_each(self, extent_ids: np.ndarray) -> np.ndarray:
        """Mask: id is 0 or a live extent."""
        ids = np.ascontiguousarray(extent_ids, np.uint64).reshape(-1)
        with self._lock:
            return (ids == 0) | self._table.is_present(ids)

    def contains(self, extent_ids: np.ndarray) -> bool:
        """True iff every id is 0 or a live extent."""
        return bool(np.all(self.contains_each(extent_ids)))

    # -- durability -----------------------------------------------------------------------
    def sync(self) -> None:
        """Make every extent put so far durable (fdatasync of the groups written
        since the last sync, then of the directory if a group was created). On S3, then
        hand the sealed groups to the uploader; raises AlreadyExists, ObjectStoreError or
        AuthenticationError if an upload failed since the last sync (what was synced
        stays durable locally, and is uploaded by a later sync)."""
        with self._lock:
            self._check_open()
            try:
                for g in sorted(self._dirty):
                    os.fdatasync(self._fd(g))
                self._dirty.clear()
                if self._dir_dirty:
                    fsync_dir(self.directory)
                    self._dir_dirty = False
                if self._remote is not None:
                    self._upload_sealed()
            except OSError as exc:
                raise_os_error(exc, f"extent store {self.directory}")

    def checkpoint(self) -> None:
        """sync, then atomically persist the table (with the length of every group
        it covers) and then the index, tagged with one fresh token. A crash
        anywhere leaves the old checkpoint or the new one; an index without the
        matching table is rebuilt on open."""
        with self._lock:
            self.sync()
            token = int.from_bytes(os.urandom(8), "little")
            try:
                self._table.save(self._path(EXTENT_TABLE_FILE), self.block_size, dict(self._glen),
                                 self._next_group, token)  # fmt: skip
                save_index(self._path(INDEX_FILE), self._index, token)
            except OSError as exc:
                raise_os_error(exc, f"extent store {self.directory} checkpoint")
            self._changed = False

    # -- gc / scrub / stats live in extent_maintenance.py --------------------------------
    def gc(self, live: np.ndarray) -> dict[str, int]:
        """Drop extents not in `live`, compact groups that are mostly garbage; see
        extent_maintenance.gc."""
        from .extent_maintenance import gc

        return gc(self, live)

    def scrub(self, progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Verify every live extent; list the problems (empty = healthy)."""
        from .extent_maintenance import scrub

        return scrub(self, progress)

    def stats(self) -> dict[str, int]:
        """Counters: extents, stored_bytes, raw_bytes, compressed_extents, groups,
        group_bytes, index_entries, index_memory_bytes, table_memory_bytes,
        table_bytes_per_extent, next_extent_id."""
        with self._lock:
            t = self._table
            return {
                "extents": self._n_extents,
                "stored_bytes": self._stored,
                "raw_bytes": self._n_extents * self.block_size,
                "compressed_extents": self._n_compressed,
                "groups": len(self._glen),
                "group_bytes": sum(self._glen.values()),
                "index_entries": len(self._index),
                "index_memory_bytes": self._index.memory_bytes(),
                "table_memory_bytes": t.memory_bytes(),
                "table_bytes_per_extent": t.memory_bytes() // max(1, len(t.flags)),
                "next_extent_id": t.next_id,
            }

    # -- layout repair (defrag.py decides what to move) ----------------------------------
    def locations(self, extent_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(group, offset, record bytes incl. header) of each extent, int64 arrays;
        zeros for 0 and for ids not in the store. A record at (g, o, n) and one at
        (g, o + n) are back to back: one read run."""
        ids = np.ascontiguousarray(extent_ids, np.uint64).reshape(-1)
        with self._lock:
            self._check_open()
            t = self._table
            e = np.where(t.is_present(ids), ids, 0).astype(np.int64)
            size = np.where(e != 0, t.slen[e].astype(np.int64) + HEADER_BYTES, 0)
            return t.group[e].astype(np.int64), t.offset[e].astype(np.int64), size

    def relocate(self, extent_ids: np.ndarray, max_bytes: int) -> dict[str, int]:
        """Copy the extents' records back to back in the given order (same ids, so
        block maps stay valid), at most `max_bytes` of them; durable on return. See
        extent_maintenance.relocate."""
        from .extent_maintenance import relocate

        return relocate(self, extent_ids, max_bytes)


class _CheckedRecords:
    """Stored records verified for `put_stored`: the layout checked (InvalidArgument),
    the compressed payloads decoded in one batch call, every block fingerprinted and
    compared with its claimed fingerprint (Corruption naming the first bad record)."""

    def __init__(self, records: StoredRecords, block_size: int) -> None:
        r = records
        n, bs = len(r.lengths), block_size
        comp = np.asarray(r.compressed, bool)
        lengths = np.asarray(r.lengths, np.int64)
        offsets = np.asarray(r.offsets, np.int64)
        payload, fps = r.payload, r.fingerprints
        if not (comp.shape == offsets.shape == (n,) and getattr(fps, "shape", None) == (n, 16)
                and isinstance(payload, np.ndarray) and payload.dtype == np.uint8
                and payload.ndim == 1):  # fmt: skip
            raise InvalidArgument("put_stored: records of inconsistent shapes or types")
        if n and (bool(np.any(lengths[~comp] != bs)) or int(lengths.min()) <= 0
                  or int(lengths.max()) > bs or int(offsets.min()) < 0
                  or int((offsets + lengths).max()) > payload.size):  # fmt: skip
            raise InvalidArgument(f"put_stored: a record's stored length is not in 1..{bs} "
                                  "(exactly the block size if raw) or lies outside the payload")
        self.records, self.block_size = r, bs
        self._offsets, self._lengths = offsets, lengths
        ci = np.flatnonzero(comp)
        self._dec_row = np.full(n, -1, np.int64)
        self._dec_row[ci] = np.arange(ci.size)
        self._dec = np.empty((ci.size, bs), np.uint8)
        decoded = (lz4_decompress_batch(payload, offsets[ci], lengths[ci], bs, self._dec)
                   if ci.size else np.zeros(0, bool))
        self.packed_raw = not ci.size and bool(np.all(offsets == np.arange(n) * bs))
        got = np.empty((n, 16), np.uint8)
        if self.packed_raw:
            got[:], _ = fingerprint_blocks(payload[: n * bs], bs)
        else:
            got[ci], _ = fingerprint_blocks(self._dec, bs)
            ri = np.flatnonzero(~comp)
            if ri.size:
                raw = np.empty((ri.size, bs), np.uint8)
                copy_runs(payload, raw.reshape(-1), offsets[ri], np.arange(ri.size) * bs,
                          lengths[ri])
                got[ri], _ = fingerprint_blocks(raw, bs)
        bad = np.any(got != fps, axis=1)
        bad[ci[~decoded]] = True
        if bad.any():
            i = int(np.argmax(bad))
            what = ("does not decompress to a block" if comp[i] and not decoded[self._dec_row[i]]
                    else "does not match its fingerprint")  # fmt: skip
            raise Corruption(f"stored record {i} of {n} (fingerprint "
                             f"{bytes(np.asarray(fps[i], np.uint8)).hex()}) {what} "
                             f"({int(bad.sum())} bad): nothing of the batch was stored")
        self.fps = np.ascontiguousarray(fps, np.uint8)

    def __len__(self) -> int:
        return len(self._lengths)

    def gather(self, pos: np.ndarray, keep: np.ndarray, out: np.ndarray, at: np.ndarray) -> None:
        """Copy record pos[i]'s payload to out[at[i]:]: as it came where keep[i], else its
        raw block (decompressed if it came compressed); one native call per source."""
        bs = self.block_size
        dec = self._dec_row[pos]
        from_dec = ~keep & (dec >= 0)  # compressed on arrival, stored raw
        as_came = ~from_dec
        copy_runs(self.records.payload, out, self._offsets[pos[as_came]], at[as_came],
                  self._lengths[pos[as_came]])
        if from_dec.any():
            copy_runs(self._dec.reshape(-1), out, dec[from_dec] * bs, at[from_dec],
                      np.full(int(from_dec.sum()), bs, np.int64))
