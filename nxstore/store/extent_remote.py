"""An extent store's sealed groups on a remote GroupBackend (S3), and their read cache.

The extent store writes every group locally, as always. Once a group is sealed (full, or
left by gc/relocate) and synced, `upload` puts it once (conditional put) and moves the
local file into the read cache (`extents/cache/`), so the store reads it from there until
the cache evicts it. A read of a group not in the cache fetches the object with ranged
GETs (FETCH_CHUNK_BYTES each) into the cache first; the cache keeps at most `cache_bytes`
of groups, evicting the least recently used (a group a read in progress holds open is
evicted only from the directory; its space is freed when the store closes its fd).

Crash safety: a group is deleted locally only after the object is complete in the store
(S3 PUTs are atomic), so every group the table names is local, remote or both. A crash
between the upload and the move leaves both: open moves the local copy into the cache.
A crash before the upload leaves the group local; the next sync uploads it. Remote objects
are deleted only after a checkpoint stopped naming them (extent_maintenance.gc); one that
a crash (or an unreachable store) left behind is an orphan, deleted by open or the next gc.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict

from ..errors import AlreadyExists, ObjectStoreError
from .extent_group import group_file_name, parse_group_name
from .fileutil import fsync_dir
from .group_backend import GroupBackend, cache_dir

log = logging.getLogger(__name__)

FETCH_CHUNK_BYTES = 8 * 1024 * 1024  # bytes per ranged GET when a group is fetched
_COMPARE_CHUNK_BYTES = 8 * 1024 * 1024


class RemoteGroups:
    """The sealed groups of the extent store in `directory` that live on `backend`."""

    def __init__(self, directory: str, backend: GroupBackend, cache_bytes: int) -> None:
        self.directory = directory
        self.backend = backend
        self.cache_bytes = cache_bytes
        self.cache = cache_dir(directory)
        self.sizes: dict[int, int] = {}  # remote group -> object size
        self._lru: OrderedDict[int, int] = OrderedDict()  # cached group -> bytes, LRU first
        self.fetches = 0  # groups fetched from the back end (tests and benchmarks read it)

    def _cached(self, g: int) -> str:
        return os.path.join(self.cache, group_file_name(g))

    def load(self) -> dict[int, int]:
        """List the remote groups ({group: size}) and adopt the cache files that match
        one (others are removed). Raises ObjectStoreError, AuthenticationError."""
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
        """After a crash between upload and move: if remote group g is complete (same
        size as the local file at `path`), move the local file into the cache and return
        True; else leave it and return False."""
        size = os.stat(path).st_size
        if self.sizes.get(g) != size:
            return False
        os.replace(path, self._cached(g))
        self._lru[g] = size
        return True

    def upload(self, g: int, path: str) -> list[int]:
        """Put sealed local group g (file `path`, synced) once, then move it into the
        cache. Returns the groups the cache evicted to make room. Raises AlreadyExists if
        another writer put a different group g first (the local file is kept: nothing is
        lost), ObjectStoreError / AuthenticationError (the local file is kept; retried at
        the next sync)."""
        with open(path, "rb") as f:
            data = f.read()
        name = group_file_name(g)
        try:
            self.backend.put_once(name, data)
        except AlreadyExists:
            if not self._same(name, data):  # our own upload, repeated after a crash, is fine
                raise AlreadyExists(
                    f"extent group {name} already exists in {self.backend.location} with other "
                    f"contents: another writer uses this bucket and prefix. Nothing was lost: "
                    f"the local copy stays in {path}") from None  # fmt: skip
        self.sizes[g] = len(data)
        os.replace(path, self._cached(g))
        fsync_dir(self.directory)
        self._lru[g] = len(data)
        self._lru.move_to_end(g)
        return self._evict(keep={g})

    def _same(self, name: str, data: bytes) -> bool:
        view = memoryview(data)
        for at in range(0, max(len(data), 1), _COMPARE_CHUNK_BYTES):
            want = view[at : at + _COMPARE_CHUNK_BYTES]
            if self.backend.get(name, at, len(want) + 1) != want:  # +1: longer is different
                return False
        return True

    def fetch(self, g: int, length: int, pinned: set[int]) -> tuple[str, list[int]]:
        """The cache file of remote group g, fetched first if missing (at least `length`
        bytes asked for, more if the object is longer; a shorter object gives a shorter
        file, which reads report as truncated). Returns (path, groups evicted to make
        room; never g or a pinned one). Raises NotFound (no such object),
        ObjectStoreError, AuthenticationError."""
        path = self._cached(g)
        if g in self._lru and os.path.exists(path):
            self._lru.move_to_end(g)
            return path, []
        want = max(length, self.sizes.get(g, 0))
        name = group_file_name(g)
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "wb") as f:
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
        os.replace(tmp, path)
        self.fetches += 1
        self._lru[g] = os.stat(path).st_size
        return path, self._evict(keep={g, *pinned})

    def _evict(self, keep: set[int]) -> list[int]:
        out = []
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

    def delete(self, g: int) -> bool:
        """Delete remote group g (object and cache file). Returns False, logging why, if
        the back end could not be reached: the object is then an orphan that a later
        `delete_orphans` removes."""
        self._lru.pop(g, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._cached(g))
        try:
            self.backend.delete(group_file_name(g))
        except ObjectStoreError as exc:
            log.warning("extent group %s left in %s (deleted later): %s", group_file_name(g),
                        self.backend.location, exc)  # fmt: skip
            return False
        self.sizes.pop(g, None)
        return True

    def delete_orphans(self, named: set[int], below: int) -> int:
        """Delete the remote groups numbered below `below` that the checkpointed table
        does not name (`named`): left by a gc that crashed or could not reach the back
        end. Returns how many were deleted."""
        try:
            listed = self.load()
        except ObjectStoreError as exc:
            log.warning("orphan extent groups not checked: %s", exc)
            return 0
        gone = 0
        for g in sorted(listed):
            if g < below and g not in named:
                log.info("%s: deleting orphan extent group %s", self.backend.location,
                         group_file_name(g))  # fmt: skip
                gone += self.delete(g)
        return gone

    def head(self, g: int, n: int) -> bytes:
        """The first n bytes of remote group g. Raises NotFound, ObjectStoreError."""
        return self.backend.get(group_file_name(g), 0, n)

    def close(self) -> None:
        self.backend.close()

