"""Extent store maintenance: garbage collection with group compaction, and scrub.

gc is crash-safe at every point because it only ever (1) drops rows from the
in-RAM table, (2) appends verbatim copies of live records to a NEW group and
fdatasyncs it, (3) checkpoints a table that names the new locations and no
longer lists the old groups, and only then (4) deletes the old group files.
A crash before (3) reopens from the old checkpoint: the old groups are intact
and a copy found in the newer group wins. A crash after (3) reopens from the
new checkpoint; an old group still on disk has a number below the
checkpoint's next group and is not listed, so open deletes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .constants import GC_COMPACT_DEAD_FRACTION
from .extent_group import (
    FLAG_COMPRESSED,
    FLAG_INDEXED,
    HEADER_BYTES,
    bad_headers,
    decode_payload,
    gather_headers,
    group_file_name,
)
from .extent_read import load_records
from .extent_table import PRESENT
from .fileutil import fsync_dir
from .native import fingerprint_blocks

if TYPE_CHECKING:
    from .extent_store import ExtentStore

log = logging.getLogger(__name__)
_SCRUB_BATCH = 1024  # extents verified per lock hold


def gc(store: ExtentStore, live: np.ndarray) -> dict[str, int]:
    """Free every extent not in `live` (uint64 ids referenced by any block map;
    repeats and 0 allowed); compact sealed groups whose dead fraction is at
    least GC_COMPACT_DEAD_FRACTION (live records copied, same ids), delete
    groups with nothing live. Checkpoints when anything changed. Returns
    extents_freed, bytes_freed (stored bytes + headers of freed extents),
    groups_compacted, groups_deleted (compacted ones included), file_bytes_reclaimed.
    A group that fails verification is left alone and reported by scrub."""
    with store._lock:
        store._check_open()
        t = store._table
        live = np.ascontiguousarray(live, np.uint64).reshape(-1)
        n = t.next_id
        if (live >= n).any():
            log.warning("gc: %d live ids are beyond the last extent id", int((live >= n).sum()))
        alive = np.zeros(n, bool)
        alive[live[live < n].astype(np.int64)] = True
        present = (t.flags[:n] & PRESENT) != 0
        dead = np.flatnonzero(present & ~alive)
        stats = {"extents_freed": int(dead.size), "bytes_freed": 0, "groups_compacted": 0,
                 "groups_deleted": 0, "file_bytes_reclaimed": 0}  # fmt: skip
        if dead.size:
            ind = dead[(t.flags[dead] & FLAG_INDEXED) != 0].astype(np.uint64)
            ind = ind[store._index.lookup(t.fp[ind]) == ind]  # only entries naming these ids
            store._index.remove(t.fp[ind])
            stats["bytes_freed"] = int(t.slen[dead].sum(dtype=np.int64)) + HEADER_BYTES * dead.size
            t.flags[dead] = 0
            store._recount()
            store._changed = True
        ids = t.present_ids().astype(np.int64)
        live_bytes = np.bincount(
            t.group[ids], weights=t.slen[ids].astype(np.float64) + HEADER_BYTES,
            minlength=store._next_group + 1,
        )  # fmt: skip
        busy = {store._active, store._gc_active}
        empty, compact = [], []
        for g, length in sorted(store._glen.items()):
            if g in busy or length == 0:
                continue
            lb = int(live_bytes[g])
            if lb == 0:
                empty.append(g)
            elif (length - lb) / length >= GC_COMPACT_DEAD_FRACTION:
                compact.append(g)
        moves, done, written = [], [], 0
        for g in compact:
            m = _copy_live(store, g, ids[t.group[ids] == g])
            if m is not None:
                moves.append(m)
                done.append(g)
                written += int(m[3])
        if done:
            store.sync()  # copies durable before the table names them
        for eids, groups, offs, _ in moves:
            t.group[eids], t.offset[eids] = groups, offs
        drop = empty + done
        old_bytes = sum(store._glen[g] for g in drop)
        for g in drop:
            del store._glen[g]
            store._dirty.discard(g)
            fd = store._fds.pop(g, None)
            if fd is not None:
                os.close(fd)
        if store._changed or drop:
            store._changed = True
            store.checkpoint()  # the table stops naming the old groups
        for g in drop:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(store._path(group_file_name(g)))
        if drop:
            fsync_dir(store.directory)
        stats["groups_compacted"] = len(done)
        stats["groups_deleted"] = len(drop)
        stats["file_bytes_reclaimed"] = old_bytes - written
        log.info("gc %s: %s", store.directory, stats)
        return stats


def _verify(store: ExtentStore, buf: np.ndarray, eids: np.ndarray, offs: np.ndarray) -> list[int]:
    """Indices of records (at offs in buf) whose header or payload is bad."""
    t, bs = store._table, store.block_size
    e = eids.astype(np.int64)
    slens, flags = t.slen[e].astype(np.int64), t.flags[e]
    bad = bad_headers(gather_headers(buf, offs), eids, slens, flags, bs)
    raw = np.zeros((len(e), bs), np.uint8)
    for i, (o, s, f) in enumerate(zip(offs.tolist(), slens.tolist(), flags.tolist(), strict=True)):
        p = decode_payload(
            buf[o + HEADER_BYTES : o + HEADER_BYTES + s], bool(f & FLAG_COMPRESSED), bs
        )
        if len(p) == bs:
            raw[i] = np.frombuffer(p, np.uint8)
        else:
            bad[i] = True
    fps, _ = fingerprint_blocks(raw, bs)
    bad |= np.any(fps != t.fp[e], axis=1)
    return np.flatnonzero(bad).tolist()


def _copy_live(store: ExtentStore, g: int, eids: np.ndarray):  # noqa: ANN202
    """Append verbatim copies of group g's live records (eids) to the gc group.
    Returns (eids, groups, offsets, bytes written), or None if g is damaged."""
    t = store._table
    eids = eids[np.argsort(t.offset[eids], kind="stable")]
    name = store._path(group_file_name(g))
    length = store._glen[g]
    try:
        data = os.pread(store._fd(g), length, 0)
    except Exception as exc:  # noqa: BLE001 - report, keep the group
        store._problem(f"gc: cannot read {name}: {exc}")
        return None
    if len(data) < length:
        store._problem(f"gc: {name} is {len(data)} bytes, expected {length}; not compacted")
        return None
    buf = np.frombuffer(data, np.uint8)
    offs = t.offset[eids].astype(np.int64)
    bad = _verify(store, buf, eids.astype(np.uint64), offs)
    if bad:
        store._problem(f"gc: {name}: extent {int(eids[bad[0]])} is damaged; group not compacted")
        return None
    sizes = t.slen[eids].astype(np.int64) + HEADER_BYTES
    mv = memoryview(data)
    out = b"".join(mv[o : o + s] for o, s in zip(offs.tolist(), sizes.tolist(), strict=True))
    groups, new_offs = store._write_records(out, sizes, "_gc_active")
    return eids, groups, new_offs, len(out)


def scrub(store: ExtentStore, progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Read and verify (header checksum and fields, payload fingerprint) every
    live extent, and check group lengths. Returns human-readable problems
    (empty = healthy), including damage found by open(). Holds the store
    lock per batch of extents only, so puts proceed meanwhile."""
    bs = store.block_size
    with store._lock:
        store._check_open()
        problems = list(store._problems)
        t = store._table
        ids = t.present_ids()
        ids = ids[np.lexsort((t.offset[ids], t.group[ids]))]
        for g, length in sorted(store._glen.items()):
            path = store._path(group_file_name(g))
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                problems.append(f"extent group {path} is missing")
                continue
            if size < length:
                problems.append(f"{path} is {size} bytes, expected at least {length}")
    total = len(ids)
    for start in range(0, total, _SCRUB_BATCH):
        with store._lock:
            store._check_open()
            chunk = ids[start : start + _SCRUB_BATCH]
            chunk = chunk[t.is_present(chunk)]
            tmp = np.empty((len(chunk), bs), np.uint8)
            errors = load_records(store, chunk, tmp, np.arange(len(chunk)))
            fps, _ = fingerprint_blocks(tmp, bs)
            mism = np.flatnonzero(np.any(fps != t.fp[chunk.astype(np.int64)], axis=1)).tolist()
            for i in sorted(set(errors) | set(mism)):
                e = int(chunk[i])
                what = errors.get(i) or (
                    f"{store._path(group_file_name(int(t.group[e])))} offset {int(t.offset[e])}: "
                    "data does not match its fingerprint"
                )
                problems.append(f"extent {e}: {what}")
        if progress is not None:
            progress(min(start + _SCRUB_BATCH, total), total)
    if progress is not None and not total:
        progress(0, 0)
    return problems
