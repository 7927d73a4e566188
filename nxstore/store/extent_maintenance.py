"""Extent store maintenance: garbage collection with group compaction, relocation
(layout repair for defrag.py), and scrub. gc and relocate share one verified
copy path (`_read_verified`, `_append_copies`): records move verbatim, same ids.

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

from ..constants import GC_COMPACT_DEAD_FRACTION, RELOCATE_BATCH_BYTES
from ..errors import Corruption
from .extent_group import (
    FLAG_COMPRESSED,
    FLAG_INDEXED,
    HEADER_BYTES,
    bad_headers,
    decode_payloads,
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
    repeats and 0 allowed); compact groups whose dead fraction is at least
    GC_COMPACT_DEAD_FRACTION (live records copied, same ids; the active put or
    gc group is sealed first), delete groups with nothing live. Checkpoints when
    anything changed. Returns extents_freed, bytes_freed (stored bytes + headers
    of freed extents), groups_compacted, groups_deleted (compacted ones
    included), file_bytes_reclaimed, and on S3 orphans_deleted (objects no checkpoint
    names: a crash or an unreachable store kept an earlier delete from happening).
    On S3 a group's object is deleted after the checkpoint that stops naming it.
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
        empty, compact = [], []
        for g, length in sorted(store._glen.items()):
            if length == 0:
                continue
            lb = int(live_bytes[g])
            if lb and (length - lb) / length < GC_COMPACT_DEAD_FRACTION:
                continue
            (compact if lb else empty).append(g)
            # a group still receiving puts or copies is sealed first (the next one
            # starts a new group): relocate leaves its old copies in the active group
            for slot in ("_active", "_gc_active"):
                if getattr(store, slot) == g:
                    setattr(store, slot, None)
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
        if store._remote is not None:  # objects go only now that no checkpoint names them
            for g in drop:
                if store._remote.is_remote_or_pending(g):
                    store._remote.delete(g)
            stats["orphans_deleted"] = store._remote.delete_orphans(set(store._glen),
                                                                    store._next_group)
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
    raw, decoded = decode_payloads(buf, offs + HEADER_BYTES, slens, (flags & FLAG_COMPRESSED) > 0, bs)
    bad |= ~decoded
    fps, _ = fingerprint_blocks(raw, bs)
    bad |= np.any(fps != t.fp[e], axis=1)
    return np.flatnonzero(bad).tolist()


def _copy_live(store: ExtentStore, g: int, eids: np.ndarray):  # noqa: ANN202
    """Append verbatim copies of group g's live records (eids) to the gc group.
    Returns (eids, groups, offsets, bytes written), or None if g is damaged."""
    t = store._table
    eids = eids[np.argsort(t.offset[eids], kind="stable")]
    buf, offs, bad = _read_verified(store, eids)
    if bad:
        i, why = next(iter(bad.items()))
        store._problem(f"gc: extent {int(eids[i])} is damaged ({why}); "
                       f"{store._path(group_file_name(g))} not compacted")  # fmt: skip
        return None
    return (eids, *_append_copies(store, buf, offs, eids))


def _read_verified(store: ExtentStore, eids: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Read the records of present extents `eids` (any groups) verbatim and verify
    each (header fields and checksum, payload fingerprint). Returns (buffer, each
    record's offset in it, {index into eids: why it is bad}). Records close together
    in a group are read with one pread; nothing is raised for bad content."""
    t = store._table
    e = eids.astype(np.int64)
    n = len(e)
    grp, off = t.group[e].astype(np.int64), t.offset[e].astype(np.int64)
    end = off + t.slen[e].astype(np.int64) + HEADER_BYTES
    order = np.lexsort((off, grp))
    g, o, en = grp[order], off[order], end[order]
    # a span = records of one group at most one record apart (dead ones are read and skipped)
    new = np.ones(n, bool)
    new[1:] = (g[1:] != g[:-1]) | (o[1:] > en[:-1] + HEADER_BYTES + store.block_size)
    first = np.flatnonzero(new)
    last = np.append(first[1:], n) - 1
    lo, hi = o[first], en[last]
    base = np.concatenate([[0], np.cumsum(hi - lo)])  # each span's place in buf
    buf = np.zeros(int(base[-1]), np.uint8)
    rel = np.empty(n, np.int64)
    rel[order] = np.repeat(base[:-1] - lo, last - first + 1) + o
    bad: dict[int, str] = {}
    for k, (a, b) in enumerate(zip(first.tolist(), (last + 1).tolist(), strict=True)):
        name = store._path(group_file_name(int(g[a])))
        try:
            got = os.preadv(store._fd(int(g[a])), [buf[base[k] : base[k + 1]]], int(lo[k]))
            why = f"{name} is truncated"
        except (Corruption, OSError) as exc:
            got, why = 0, f"cannot read {name}: {exc}"
        short = order[a:b][en[a:b] > lo[k] + got]
        bad.update(dict.fromkeys(short.tolist(), why))
    for i in _verify(store, buf, eids.astype(np.uint64), rel):
        bad.setdefault(i, f"{store._path(group_file_name(int(grp[i])))} offset {int(off[i])}: "
                          "bad record header or data not matching its fingerprint")  # fmt: skip
    return buf, rel, bad


def _append_copies(
    store: ExtentStore, buf: np.ndarray, rel: np.ndarray, eids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Append the records of `eids` (at offsets rel of buf) in that order to the gc
    group; returns their (groups, offsets) there and the bytes written."""
    sizes = store._table.slen[eids.astype(np.int64)].astype(np.int64) + HEADER_BYTES
    mv = memoryview(buf)
    out = b"".join(mv[r : r + s] for r, s in zip(rel.tolist(), sizes.tolist(), strict=True))
    groups, offs = store._write_records(out, sizes, "_gc_active")
    return groups, offs, len(out)


def relocate(store: ExtentStore, extent_ids: np.ndarray, max_bytes: int) -> dict[str, int]:
    """Rewrite the records of `extent_ids` back to back, in that order (repeats and
    0 skipped, ids not in the store ignored), into the gc group, so that reading
    them in that order takes few runs. Records are copied verbatim (no re-encoding)
    and keep their ids, so every block map stays valid; the old copies become dead
    space for gc's compaction. At most `max_bytes` of records (headers included)
    move per call: the ids after the first that does not fit stay.

    Every record is verified (header, fingerprint) before it is copied; a damaged
    one is not moved and is reported (and kept for scrub). Works in batches of
    RELOCATE_BATCH_BYTES, holding the store lock per batch only.

    Crash-safe like gc: each batch's copies are made durable (`sync`) before the
    in-RAM table names them, and nothing is deleted, so every checkpoint (the old
    one, or the one taken at the end) names records that are on disk and valid.
    A crash before the final checkpoint reopens the old checkpoint; the copies sit
    in a group tail it does not cover: a torn tail is cut; for an id found in two
    groups the higher group wins unless its copy is bad (extent_recovery), and the
    other copy is dead space for gc. Returns extents_moved, bytes_moved, damaged,
    skipped (ids not in the store). Raises ClosedError, OSError (the copies of the
    failing batch are cut back; earlier batches stay moved)."""
    ids = np.ascontiguousarray(extent_ids, np.uint64).reshape(-1)
    ids = ids[ids != 0]
    _, first = np.unique(ids, return_index=True)
    ids = ids[np.sort(first)]  # first occurrence of each id, in the given order
    stats = {"extents_moved": 0, "bytes_moved": 0, "damaged": 0, "skipped": 0}
    pos, budget = 0, max_bytes
    while pos < len(ids) and budget > 0:
        with store._lock:
            store._check_open()
            t = store._table
            chunk = ids[pos : pos + RELOCATE_BATCH_BYTES // store.block_size]
            present = t.is_present(chunk)
            rows = np.where(present, chunk, 0).astype(np.int64)  # ids past the table read row 0
            size = np.where(present, t.slen[rows].astype(np.int64) + HEADER_BYTES, 0)
            fits = np.cumsum(size) <= min(budget, RELOCATE_BATCH_BYTES)
            take = int(np.argmin(fits)) if not fits.all() else len(chunk)
            if take == 0:  # the next record does not fit the budget (a batch holds one at least)
                break
            pos += take
            stats["skipped"] += take - int(np.count_nonzero(present[:take]))
            eids = chunk[:take][present[:take]]
            if not eids.size:
                continue
            buf, rel, bad = _read_verified(store, eids)
            for i, why in bad.items():
                store._problem(f"relocate: extent {int(eids[i])} is damaged ({why}); not moved")
            ok = np.ones(len(eids), bool)
            ok[list(bad)] = False
            eids, rel = eids[ok], rel[ok]
            stats["damaged"] += len(bad)
            if not eids.size:
                continue
            groups, offs, written = _append_copies(store, buf, rel, eids)
            store.sync()  # copies durable before the table names them
            e = eids.astype(np.int64)
            t.group[e], t.offset[e] = groups, offs
            store._changed = True
            budget -= written
            stats["extents_moved"] += len(e)
            stats["bytes_moved"] += written
            log.debug("relocate %s: %d extents so far", store.directory, stats["extents_moved"])
    if stats["extents_moved"]:
        with store._lock:
            store._check_open()
            store.checkpoint()  # the new layout survives without a tail scan
    log.info("relocate %s: %s", store.directory, stats)
    return stats


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
            size = store.group_size(g)
            if size is None:
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
