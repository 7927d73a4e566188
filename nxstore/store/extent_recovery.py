"""Opening an extent store: load the checkpoint, scan group tails, repair.

The recovery rules (docs/format.md):

* the table checkpoint lists every group with the byte length it covers;
  bytes beyond it (and whole groups it does not list) are scanned;
* a group numbered below the checkpoint's next group but not listed was
  compacted by a gc that checkpointed and then crashed: it is deleted;
* a bad stretch with no valid record after it is a torn tail and is truncated
  away; a bad stretch followed by valid records is reported, never dropped;
* an extent id found in two groups resolves to the newer (higher) group,
  unless the newer copy's payload fails its fingerprint;
* a damaged checkpoint is rebuilt from the groups, a missing, stale or damaged
  index from the table, each with a log line.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from ..constants import EXTENT_TABLE_FILE, INDEX_FILE, SALVAGE_DIR
from ..errors import Corruption, InvalidArgument, NotFound
from .extent_group import (
    FLAG_INDEXED,
    HEADER_BYTES,
    RECORD_FLAGS,
    RECORD_MAGIC,
    group_file_name,
    parse_group_name,
    scan_group,
)
from .extent_table import PRESENT, load_checkpoint
from .fileutil import atomic_write, make_private_dirs
from .fingerprint_index import load_or_rebuild

if TYPE_CHECKING:
    from .extent_store import ExtentStore

log = logging.getLogger(__name__)


def recover(store: ExtentStore, create: bool) -> list[int]:
    """Fill a fresh `store` object from its directory (see the module docstring);
    return the group numbers found on disk, ascending. Raises NotFound,
    InvalidArgument, FormatError as ExtentStore.open documents."""
    directory, block_size = store.directory, store.block_size
    ckpt_path = os.path.join(directory, EXTENT_TABLE_FILE)
    names = os.listdir(directory)
    for name in names:
        if ".tmp." in name:
            os.unlink(os.path.join(directory, name))
    groups = sorted(g for g in map(parse_group_name, names) if g is not None)
    if store._remote is not None:
        groups = _merge_remote(store, groups)
    try:
        ckpt = load_checkpoint(ckpt_path)
    except Corruption as exc:
        store._problem(f"{exc}; rebuilding the extent table from the extent groups (at open)")
        ckpt = None
    if ckpt is None and not groups and not os.path.exists(ckpt_path):
        if not create:
            raise NotFound(f"no extent store at {directory}")
        store._index = load_or_rebuild(store._path(INDEX_FILE), None, store._indexed)[0]
        store.checkpoint()
        return []
    if ckpt is not None:
        if ckpt.block_size != block_size:
            raise InvalidArgument(f"{directory}: block size is {ckpt.block_size}, not {block_size}")
        store._table, store._next_group = ckpt.table, ckpt.next_group
        covered = ckpt.groups
        for g in groups:  # left behind by a gc that checkpointed, then crashed
            if g < ckpt.next_group and g not in covered:
                log.info("%s: removing compacted group %s", directory, group_file_name(g))
                if os.path.exists(store._path(group_file_name(g))):
                    os.unlink(store._path(group_file_name(g)))
                    store._dir_dirty = True
                if store._remote is not None and g in store._remote.sizes:
                    store._remote.delete(g)  # an orphan if unreachable: the next gc retries
        groups = [g for g in groups if g in covered or g >= ckpt.next_group]
        for g in sorted(set(covered) - set(groups)):
            store._problem(f"extent group {store._path(group_file_name(g))} is missing")
            store._glen[g] = covered[g]
    else:
        covered = {}
        _check_block_size(store, groups)
    scanned = _recover_groups(store, groups, covered)
    t = store._table
    store._next_group = max([store._next_group, *(g + 1 for g in store._glen)])
    token = ckpt.token if ckpt is not None else None
    store._index, rebuilt = load_or_rebuild(store._path(INDEX_FILE), token, store._indexed,
                                            store._problems)
    if not rebuilt and scanned.size:
        sel = scanned[(t.flags[scanned] & (PRESENT | FLAG_INDEXED)) == PRESENT | FLAG_INDEXED]
        sel = sel[store._index.lookup(t.fp[sel]) == 0]
        store._index.insert(t.fp[sel], sel)
    store._recount()
    store._changed = bool(scanned.size) or ckpt is None or rebuilt
    return groups


def _merge_remote(store: ExtentStore, local: list[int]) -> list[int]:
    """Every group, local or remote, ascending. A group found in both (a crash between
    its upload and the move into the cache) is moved into the cache when the object is
    complete, else kept local (its next upload compares them)."""
    assert store._remote is not None
    remote = store._remote.load()
    for g in local:
        if g in remote and store._remote.adopt_local(g, store._path(group_file_name(g))):
            log.info("%s: %s was uploaded; moved into the read cache", store.directory,
                     group_file_name(g))  # fmt: skip
            store._dir_dirty = True
    return sorted(set(local) | set(remote))


def _head(store: ExtentStore, g: int) -> bytes:
    """The first bytes (a record header) of group g, local or remote."""
    path = store._path(group_file_name(g))
    if store._remote is not None and not os.path.exists(path):
        return store._remote.head(g, HEADER_BYTES)
    with open(path, "rb") as f:
        return f.read(HEADER_BYTES)


def _check_block_size(store: ExtentStore, groups: list[int]) -> None:
    """Refuse (before any truncation) groups written with another block size."""
    for g in groups:
        head = _head(store, g)
        if len(head) == HEADER_BYTES and head[:4] == RECORD_MAGIC:
            raw = int.from_bytes(head[16:20], "little")
            if raw != store.block_size:
                raise InvalidArgument(
                    f"{store.directory}: block size is {raw}, not {store.block_size}"
                )
            return


def _recover_groups(store: ExtentStore, groups: list[int], covered: dict[int, int]) -> np.ndarray:
    """Scan every group beyond its checkpointed length; apply what is found
    (a newer group wins for an id found twice). Returns the ids added."""
    t = store._table
    added = []
    for g in groups:
        size = store.group_size(g) or 0
        start = covered.get(g, 0)
        if size == start:  # nothing beyond the checkpoint (no need to fetch a remote group)
            store._glen[g] = start
            continue
        fd = store._fd(g)
        size = os.fstat(fd).st_size
        if size < start:
            store._problem(
                f"{store._path(group_file_name(g))} is {size} bytes, checkpoint covers {start}"
            )
            store._glen[g] = start
            continue
        res = scan_group(fd, store._path(group_file_name(g)), start, size, store.block_size)
        for p in res.problems:
            store._problem(p)
        sealed = not os.path.exists(store._path(group_file_name(g)))  # remote: never cut
        if res.torn and sealed:
            store._problem(f"{group_file_name(g)} in {store._remote.backend.location}: "  # type: ignore[union-attr]
                           f"bad bytes from offset {res.end} on (damaged object)")  # fmt: skip
        elif res.torn:
            path = store._path(group_file_name(g))
            log.warning("%s: dropping torn tail at offset %d (%d bytes)", path, res.end, size - res.end)
            # Kept, not destroyed: were the tail synced after all (damage, not a crash), a
            # durable record names its extents and open reports them missing.
            keep = os.path.join(store.directory, SALVAGE_DIR)
            make_private_dirs(keep)
            with open(path, "rb") as f:
                f.seek(res.end)
                atomic_write(os.path.join(keep, f"{group_file_name(g)}.from-{res.end}"), [f.read()])
            os.truncate(path, res.end)
            store._dirty.add(g)
            store.cut_tails.append(f"{path} at offset {res.end} "
                                   f"({size - res.end} bytes kept in {keep})")
        store._glen[g] = res.end
        ids = res.ids
        if ids.size:
            t.reserve(int(ids.max()) + 1)
            t.next_id = max(t.next_id, int(ids.max()) + 1)
            cur = t.flags[ids] & PRESENT
            # a newer copy (gc, relocate) wins, unless its payload is bad: a crash
            # can leave a copy half written while the old one is still intact
            take = (cur == 0) | ((t.group[ids] <= g) & res.data_ok)
            ids = ids[take]
            t.group[ids] = g
            t.offset[ids] = res.offsets[take]
            t.slen[ids] = res.slens[take]
            t.container[ids] = res.containers[take]
            t.fp[ids] = res.fps[take]
            ok = res.data_ok[take]
            t.flags[ids] = (res.flags[take] & RECORD_FLAGS) | PRESENT
            t.flags[ids[~ok]] &= ~np.uint8(FLAG_INDEXED)  # never dedup onto bad data
            added.append(ids)
    return np.unique(np.concatenate(added)) if added else np.zeros(0, np.uint64)
