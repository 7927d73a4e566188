"""An extent store's sealed groups on a remote GroupBackend (S3), and their read cache.

The extent store writes every group locally, as always. Once a group is sealed (full, or
left by gc/relocate) and synced, `enqueue` hands it to this object's uploader thread,
which puts it once (conditional put) and then moves the local file into the read cache
(`extents/cache/`), where the store keeps reading it until the cache evicts it. The
uploader never takes the store's lock, so reads and writes go on meanwhile; at most
UPLOAD_PENDING_GROUPS sealed groups wait for it (`wait_for_room` holds back puts beyond
that: writes stall while the server is slow, and fail with the upload's error once it is
unreachable). An upload error is raised by the store's next sync (`raise_error`), and the
group, still local, is enqueued again.

A read of a group not in the cache fetches only the PART_CHUNK_BYTES-aligned chunks of the
object its records lie in (ranged GETs of at most FETCH_CHUNK_BYTES; one that starts right
after a chunk already there reads ahead to that size, so a sequential reader gets large
GETs and a random one small ones; a group that WHOLE_AFTER_MISSES reads missed in is
fetched whole on the next) into a sparse cache
file of the object's size, `<group>.part`, whose fetched chunks this object tracks; once
every chunk is there the file is renamed to the group's name (a whole-group read, such as
maintenance's, fetches all that is missing at once, in the same GETs). A partial file is never read where a chunk is
missing: the store asks for the chunks of every read first (`fetch` with the read's byte
spans), and a missing chunk would read as zeros, which fail the record checks anyway. Open
removes partial files (their chunk set is kept in RAM only). The cache keeps at most
`cache_bytes` of fetched bytes, evicting the least recently used group (a group a read in
progress holds open is evicted only from the directory; its space is freed when the store
closes its fd).

Crash safety: a group is deleted locally only after the object is complete in the store
(S3 PUTs are atomic), so every group the table names is local, remote or both. A crash
between the upload and the move leaves both: open moves the local copy into the cache.
A crash before the upload leaves the group local; the next sync uploads it. Remote objects
are deleted only after a checkpoint stopped naming them (extent_maintenance.gc); one that
a crash, an unreachable store or an upload racing a gc left behind is an orphan, deleted
by open or the next gc.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict

from ..constants import S3_UPLOAD_PENDING_GROUPS
from ..errors import AlreadyExists, NotFound, NxError, ObjectStoreError
from .extent_group import group_file_name, parse_group_name
from .fileutil import fsync_dir, open_private
from .group_backend import GroupBackend, cache_dir

log = logging.getLogger(__name__)

FETCH_CHUNK_BYTES = 16 * 1024 * 1024  # bytes per ranged GET at most
# Cache granularity of cold reads: a 16 KiB read of a cold 64 MiB group fetches one chunk.
PART_CHUNK_BYTES = 256 * 1024
# A group that reads keep missing in is fetched whole on its next miss: many small GETs
# cost more than the few large ones of the whole group once the reads are dense.
WHOLE_AFTER_MISSES = 4
_PART_SUFFIX = ".part"
_COMPARE_CHUNK_BYTES = 8 * 1024 * 1024


class RemoteGroups:
    """The sealed groups of the extent store in `directory` that live on `backend`.
    Thread-safe: one leaf lock guards the state the uploader thread shares."""

    def __init__(self, directory: str, backend: GroupBackend, cache_bytes: int) -> None:
        self.directory = directory
        self.backend = backend
        self.cache_bytes = cache_bytes
        self.cache = cache_dir(directory)
        self.sizes: dict[int, int] = {}  # remote group -> object size
        self._lru: OrderedDict[int, int] = OrderedDict()  # cached group -> bytes, LRU first
        self._parts: dict[int, set[int]] = {}  # partly fetched group -> its chunks present
        self._misses: dict[int, int] = {}  # partly fetched group -> reads that fetched chunks
        self.fetches = 0  # reads that went to the back end (tests and benchmarks read it)
        self.fetched_bytes = 0  # bytes those fetches got (tests and benchmarks read it)
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[int, str | None] = {}  # group -> local path (None: cancelled)
        self._error: NxError | OSError | None = None  # the first upload failure not raised yet
        self._thread: threading.Thread | None = None
        self._closing = False

    def _cached(self, g: int) -> str:
        return os.path.join(self.cache, group_file_name(g))

    def _partial(self, g: int) -> str:
        return self._cached(g) + _PART_SUFFIX

    # -- open -------------------------------------------------------------------------
    def load(self) -> dict[int, int]:
        """List the remote groups ({group: size}) and adopt the cache files that match
        one (others are removed). At open only. Raises ObjectStoreError,
        AuthenticationError."""
        self.sizes, self._lru, self._parts, self._misses = {}, OrderedDict(), {}, {}
        for name, size in self.backend.list().items():
            g = parse_group_name(name)
            if g is not None:
                self.sizes[g] = size
        files = []
        for name in os.listdir(self.cache):
            g = parse_group_name(name)
            path = os.path.join(self.cache, name)
            size = os.stat(path).st_size
            if g is None or self.sizes.get(g) != size:
                os.unlink(path)
            else:
                files.append((os.stat(path).st_mtime, g, size))
        for _, g, size in sorted(files):
            self._lru[g] = size
        return dict(self.sizes)

    def adopt_local(self, g: int, path: str) -> bool:
        """At open, after a crash between upload and move: if remote group g is complete
        (same size as the local file at `path`), move the local file into the cache and
        return True; else leave it and return False."""
        size = os.stat(path).st_size
        if self.sizes.get(g) != size:
            return False
        os.replace(path, self._cached(g))
        self._lru[g] = size
        return True

    # -- upload -----------------------------------------------------------------------
    def has(self, g: int) -> bool:
        """True if group g is on the back end."""
        with self._cond:
            return g in self.sizes

    def size(self, g: int) -> int | None:
        """Bytes of remote group g's object, None if it is not on the back end. Taken under
        the upload lock, so a caller that just missed the local file (the uploader moves it
        into the cache and records the object under this lock) sees the object."""
        with self._cond:
            return self.sizes.get(g)

    def is_remote_or_pending(self, g: int) -> bool:
        with self._cond:
            return g in self.sizes or g in self._pending

    def enqueue(self, g: int, path: str) -> None:
        """Upload sealed, synced local group g (file `path`) in the background."""
        with self._cond:
            if g in self.sizes or g in self._pending or self._closing:
                return
            self._pending[g] = path
            if self._thread is None:
                self._thread = threading.Thread(target=self._upload_loop, daemon=True,
                                                name=f"nxstore-upload {self.backend.location}")  # fmt: skip
                self._thread.start()
            self._cond.notify_all()

    def wait_for_room(self) -> None:
        """Block while UPLOAD_PENDING_GROUPS or more groups wait for upload (each wait
        ends when an upload succeeds or fails)."""
        with self._cond:
            while len(self._pending) >= S3_UPLOAD_PENDING_GROUPS and self._error is None:
                self._cond.wait()

    def raise_error(self) -> None:
        """Raise (once) the first upload failure since the last call: AlreadyExists
        (another writer put that group), ObjectStoreError, AuthenticationError, OSError."""
        with self._cond:
            exc, self._error = self._error, None
        if exc is not None:
            raise exc

    def wait_uploaded(self) -> None:
        """Block until no upload is pending, then `raise_error`."""
        with self._cond:
            while self._pending:
                self._cond.wait()
        self.raise_error()

    def _upload_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                g = min(self._pending)
                path = self._pending[g]
            try:
                if path is not None:
                    self._upload(g, path)
            except (NxError, OSError) as exc:
                log.warning("extent group %s not uploaded: %s", group_file_name(g), exc)
                with self._cond:
                    self._error = self._error or exc
            finally:
                with self._cond:
                    self._pending.pop(g, None)
                    self._cond.notify_all()

    def _upload(self, g: int, path: str) -> None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:  # gc deleted it meanwhile
            return
        name = group_file_name(g)
        with self._cond:
            if self._pending.get(g) is None:  # cancelled by gc meanwhile
                return
        try:
            self.backend.put_once(name, data)
        except AlreadyExists:
            if not self._same(name, data):  # our own upload, repeated after a crash, is fine
                raise AlreadyExists(
                    f"extent group {name} already exists in {self.backend.location} with other "
                    f"contents: another writer uses this bucket and prefix. Nothing was lost: "
                    f"the local copy stays in {path}") from None  # fmt: skip
        with self._cond:  # a reader that misses the local file asks `has` under this lock
            if self._pending.get(g) is None:  # gc dropped it during the put: an orphan now
                return
            try:
                os.replace(path, self._cached(g))
            except FileNotFoundError:  # gc deleted it meanwhile: the object is an orphan
                return
            self.sizes[g] = self._lru[g] = len(data)
        fsync_dir(self.directory)

    def _same(self, name: str, data: bytes) -> bool:
        view = memoryview(data)
        for at in range(0, max(len(data), 1), _COMPARE_CHUNK_BYTES):
            want = view[at : at + _COMPARE_CHUNK_BYTES]
            if self.backend.get(name, at, len(want) + 1) != want:  # +1: longer is different
                return False
        return True

    # -- read -------------------------------------------------------------------------
    def is_partial(self, g: int) -> bool:
        """True while group g's cache file holds only some of its chunks."""
        with self._cond:
            return g in self._parts

    def fetch(self, g: int, pinned: set[int],
              spans: list[tuple[int, int]] | None = None) -> tuple[str, list[int]]:
        """The cache file of remote group g, with the bytes a read needs fetched first:
        the chunks of `spans` ((offset, length) pairs), or with `spans` None the whole
        object. The file has the object's size: one shorter than the table covers reads
        as truncated. Returns (path of the file, complete or `.part`; groups evicted to
        make room, never g or a pinned one). Raises NotFound (no such object),
        ObjectStoreError, AuthenticationError."""
        path = self._cached(g)
        with self._cond:
            present = self._parts.get(g)
            if present is None and g in self._lru and os.path.exists(path):
                self._lru.move_to_end(g)
                return path, []
            size = self.sizes.get(g)
            if size is None:  # gc deleted it meanwhile
                raise NotFound(f"extent group {group_file_name(g)} is not in "
                               f"{self.backend.location}")
            fresh = present is None
            present = set() if present is None else present
            chunks = -(-size // PART_CHUNK_BYTES)
            if self._misses.get(g, 0) >= WHOLE_AFTER_MISSES:
                spans = None
            want = set(range(chunks)) if spans is None else {
                c for off, n in spans if n > 0
                for c in range(off // PART_CHUNK_BYTES,
                               min(chunks, -(-(off + n) // PART_CHUNK_BYTES)))
            }  # fmt: skip
            missing = sorted(want - present)
            if missing:
                self._misses[g] = self._misses.get(g, 0) + 1
        if missing or fresh:
            self._fetch_chunks(g, size, present, missing)
        with self._cond:
            self._lru.move_to_end(g)
            path = self._partial(g) if g in self._parts else path
        return path, self.evict({g, *pinned})

    def _fetch_chunks(self, g: int, size: int, present: set[int], missing: list[int]) -> None:
        """Fetch chunks `missing` (sorted) of group g (object of `size` bytes) into its
        partial file, `present` being those already there, consecutive ones in one GET; a
        GET right after a present chunk reads ahead (a reader moving forward through the
        group) up to FETCH_CHUNK_BYTES. Renames the file to the group's name once every
        chunk is there."""
        part = self._partial(g)
        chunks = -(-size // PART_CHUNK_BYTES)
        most = max(1, FETCH_CHUNK_BYTES // PART_CHUNK_BYTES)  # chunks per GET
        self.fetches += bool(missing)
        fd = open_private(part, os.O_RDWR)
        try:
            if not present:
                os.ftruncate(fd, size)
            wanted = set(missing)
            i = 0
            while i < len(missing):
                lo = hi = missing[i]
                # read ahead (up to a FETCH_CHUNK_BYTES boundary: aligned GETs are cheaper
                # where the server keeps objects in chunks) when the reader moves forward
                ahead = lo - 1 in present
                stop = min(chunks, (lo // most + 1) * most if ahead else lo + most)
                # the chunks that follow: wanted ones always, when reading ahead any absent one
                while hi + 1 < stop and hi + 1 not in present and (ahead or hi + 1 in wanted):
                    hi += 1
                while i < len(missing) and missing[i] <= hi:
                    i += 1
                at = lo * PART_CHUNK_BYTES
                view = memoryview(self._get(g, at, min(size, (hi + 1) * PART_CHUNK_BYTES) - at))
                while view:
                    n = os.pwrite(fd, view, at)
                    view, at = view[n:], at + n
                present.update(range(lo, hi + 1))
        finally:
            os.close(fd)
            with self._cond:
                if len(present) >= chunks:
                    os.replace(part, self._cached(g))
                    self._parts.pop(g, None)
                    self._misses.pop(g, None)
                    self._lru[g] = size
                else:
                    self._parts[g] = present
                    self._lru[g] = min(size, len(present) * PART_CHUNK_BYTES)

    def _get(self, g: int, at: int, n: int) -> bytes:
        data = self.backend.get(group_file_name(g), at, n)
        self.fetched_bytes += len(data)
        return data

    def evict(self, keep: set[int]) -> list[int]:
        """Remove least recently used cache files until the cache fits its bound, never
        those of `keep`; returns the groups evicted (the store closes their fds)."""
        out = []
        with self._cond:
            total = sum(self._lru.values())
            for h in list(self._lru):
                if total <= self.cache_bytes:
                    break
                if h in keep:
                    continue
                total -= self._lru.pop(h)
                with contextlib.suppress(FileNotFoundError):
                    self._misses.pop(h, None)
                    os.unlink(self._partial(h) if self._parts.pop(h, None) is not None
                              else self._cached(h))
                out.append(h)
        return out

    def head(self, g: int, n: int) -> bytes:
        """The first n bytes of remote group g. Raises NotFound, ObjectStoreError."""
        return self.backend.get(group_file_name(g), 0, n)

    # -- delete -----------------------------------------------------------------------
    def delete(self, g: int) -> bool:
        """Delete remote group g (object and cache file; a pending upload of it is
        cancelled). Returns False, logging why, if the back end could not be reached: the
        object is then an orphan that a later `delete_orphans` removes."""
        with self._cond:
            if g in self._pending:
                self._pending[g] = None
            self._lru.pop(g, None)
            self._misses.pop(g, None)
            path = self._partial(g) if self._parts.pop(g, None) is not None else self._cached(g)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        try:
            self.backend.delete(group_file_name(g))
        except ObjectStoreError as exc:
            log.warning("extent group %s left in %s (deleted later): %s", group_file_name(g),
                        self.backend.location, exc)  # fmt: skip
            return False
        with self._cond:
            self.sizes.pop(g, None)
        return True

    def delete_orphans(self, named: set[int], below: int) -> int:
        """Delete the remote groups numbered below `below` that the checkpointed table
        does not name (`named`): left by a gc that crashed, could not reach the back end
        or raced an upload. Returns how many were deleted."""
        try:
            listed = self.backend.list()
        except ObjectStoreError as exc:
            log.warning("orphan extent groups not checked: %s", exc)
            return 0
        gone = 0
        for g in sorted(filter(None, map(parse_group_name, listed))):
            if g < below and g not in named:
                log.info("%s: deleting orphan extent group %s", self.backend.location,
                         group_file_name(g))  # fmt: skip
                gone += self.delete(g)
        return gone

    def close(self) -> None:
        """Stop the uploader once the pending uploads are done or failed (their groups
        stay local for the next open), release the back end. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        self.backend.close()
