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

A read of a group not in the cache fetches the object with ranged GETs
(FETCH_CHUNK_BYTES each) into the cache first; the cache keeps at most `cache_bytes` of
groups, evicting the least recently used (a group a read in progress holds open is
evicted only from the directory; its space is freed when the store closes its fd).

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
from ..errors import AlreadyExists, NxError, ObjectStoreError
from .extent_group import group_file_name, parse_group_name
from .fileutil import fsync_dir, open_private
from .group_backend import GroupBackend, cache_dir

log = logging.getLogger(__name__)

FETCH_CHUNK_BYTES = 8 * 1024 * 1024  # bytes per ranged GET when a group is fetched
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
        self.fetches = 0  # groups fetched from the back end (tests and benchmarks read it)
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[int, str | None] = {}  # group -> local path (None: cancelled)
        self._error: NxError | OSError | None = None  # the first upload failure not raised yet
        self._thread: threading.Thread | None = None
        self._closing = False

    def _cached(self, g: int) -> str:
        return os.path.join(self.cache, group_file_name(g))

    # -- open -------------------------------------------------------------------------
    def load(self) -> dict[int, int]:
        """List the remote groups ({group: size}) and adopt the cache files that match
        one (others are removed). At open only. Raises ObjectStoreError,
        AuthenticationError."""
        self.sizes, self._lru = {}, OrderedDict()
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
    def fetch(self, g: int, length: int, pinned: set[int]) -> tuple[str, list[int]]:
        """The cache file of remote group g, fetched first if missing (at least `length`
        bytes asked for, more if the object is longer; a shorter object gives a shorter
        file, which reads report as truncated). Returns (path, groups evicted to make
        room; never g or a pinned one). Raises NotFound (no such object),
        ObjectStoreError, AuthenticationError."""
        path = self._cached(g)
        with self._cond:
            if g in self._lru and os.path.exists(path):
                self._lru.move_to_end(g)
                return path, []
            want = max(length, self.sizes.get(g, 0))
        name = group_file_name(g)
        tmp = f"{path}.tmp.{os.getpid()}"
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as f:  # owner-only
            try:
                at = 0
                while at < want:
                    ask = min(FETCH_CHUNK_BYTES, want - at)
                    chunk = self.backend.get(name, at, ask)
                    f.write(chunk)
                    at += len(chunk)
                    if len(chunk) < ask:
                        break  # the object ends here
            except BaseException:
                f.close()
                os.unlink(tmp)
                raise
        with self._cond:
            os.replace(tmp, path)
            self.fetches += 1
            self._lru[g] = os.stat(path).st_size
        return path, self.evict({g, *pinned})

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
                    os.unlink(self._cached(h))
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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._cached(g))
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
