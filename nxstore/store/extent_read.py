"""The verified read path of the extent store.

One `load_records` call reads every requested record and checks all their
headers with four native calls, whatever the number of records or runs:

1. One native call (`gather_records`) reads each record's place, stored
   length and compressed flag from the extent table and says whether the
   records are already in file order, as a sequential read's are. Otherwise
   they are sorted by (group, offset); a repeated extent is read once and
   copied. Records of one group that are adjacent, or separated by a gap
   of at most MAX_GAP bytes, form a *run*.
2. Another (`plan_runs`) lays out the iovecs of all runs, three
   per record as (buffer, offset, length) rows of one int64 array: the
   64-byte header lands in its slot of a header array, an uncompressed
   payload straight in its row of the caller's `out2d`, a compressed payload
   in a staging buffer, and the gap after it in a throwaway sink
   (zero-length where the run has none). Another (`preadv_runs`) then does
   every run's preadv (split at IOV_MAX iovecs) with the GIL released: no
   per-record or per-run Python objects, and uncompressed payloads are never
   copied in user space. Only opening a group's fd is Python, once a group.
3. All headers of the call are checked in one native call: magic, extent
   id, raw and stored length and compressed flag against the table, and the
   XXH3-64 header checksum.
4. The compressed payloads are decoded into their rows by one native call
   (`lz4_decompress_batch`; big batches split over the cores).

The payload fingerprints are checked by the caller with one native batch
call over `out2d` (`verify_blocks` in ExtentStore.read_blocks; scrub and
verify_dedup fingerprint and compare).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import Corruption
from .extent_group import FLAG_COMPRESSED, HEADER_BYTES, group_file_name
from .native import (
    PLAN_CBUF,
    PLAN_HDRS,
    PLAN_OUT,
    PLAN_SINK,
    READV_MAX_IOV,
    check_headers,
    gather_records,
    lz4_decompress_batch,
    plan_runs,
    preadv_runs,
)
from .parallel import UNLZ4_PART_BYTES, split_rows

if TYPE_CHECKING:
    from .extent_store import ExtentStore

MAX_GAP = 64 << 10  # bytes: records of one group this close share one run
# Distinct groups per native call: the call's fds are opened first, and opening
# must not evict (close) one of them from the store's fd cache.
GROUPS_PER_CALL = 64
_OFFSET_MASK = 0xFFFFFFFF  # a record's sort key is group << 32 | offset
assert (PLAN_SINK, PLAN_HDRS, PLAN_OUT, PLAN_CBUF) == (0, 1, 2, 3)  # load_records' buffers


def _iov_max() -> int:
    try:
        n = os.sysconf("SC_IOV_MAX")
    except (ValueError, OSError):
        return READV_MAX_IOV
    return min(READV_MAX_IOV, n) if n > 0 else READV_MAX_IOV


_IOV_LIMIT = _iov_max()


def load_records(
    store: ExtentStore, eids: np.ndarray, out2d: np.ndarray, rows: np.ndarray
) -> dict[int, str]:
    """Read extents eids[i] (present in the table) into out2d[rows[i]] and check
    their headers against the table. Returns {i: problem} for each extent whose
    record is unreadable: bad header, short file, I/O error, payload that does
    not decompress (its row is then zeroed). The caller still checks every
    payload's fingerprint. Raises nothing for bad content."""
    m = len(eids)
    if not m:
        return {}
    if not out2d.flags.c_contiguous:
        tmp = np.empty((m, out2d.shape[1]), np.uint8)
        errors = load_records(store, eids, tmp, np.arange(m))
        out2d[rows] = tmp
        return errors
    bs = store.block_size
    r = _fetch(store, eids, rows, out2d, packed=False)
    ss, comp, order, dest, iov, cbuf = r.ss, r.comp, r.order, r.dest, r.iov, r.cbuf
    bad, short, dup = r.bad, r.short, r.dups is not None
    ncomp = int(np.count_nonzero(comp))

    where = r.where

    errors: dict[int, str] = {}
    if ncomp:
        # a compressed payload's place in cbuf is its payload iovec's offset
        cj = np.flatnonzero(comp if short is None else comp & ~short)
        cstart, clen = iov[1::3, 1][cj], ss[cj]
        crow = np.asarray(dest, np.int64)[cj]
        decoded = np.concatenate(split_rows(
            lambda lo, hi: lz4_decompress_batch(
                cbuf, cstart[lo:hi], clen[lo:hi], bs, out2d, crow[lo:hi]
            ), len(cj), UNLZ4_PART_BYTES // bs,
        ))  # fmt: skip
        for j in cj[~decoded].tolist():
            errors[int(order[j])] = f"{where(j)}: payload does not decode"
    if bad.any():
        if short is not None:
            out2d[dest[short]] = 0
        errors.update(r.problems())
    if dup:
        out2d[rows[r.dups]] = out2d[rows[r.dup_src]]
        for i, src in zip(r.dups.tolist(), r.dup_src.tolist(), strict=True):
            if src in errors:
                errors[i] = errors[src]
    return errors


@dataclass
class StoredRecords:
    """Extent records in their stored form (`ExtentStore.read_stored`, `put_stored`):
    record i's payload is payload[offsets[i] : offsets[i] + lengths[i]], an lz4 block
    (no size prefix) of the raw block where compressed[i], else the raw block itself;
    fingerprints[i] is the XXH3-128 of the raw block."""

    compressed: np.ndarray  # bool (n,)
    lengths: np.ndarray  # int64 (n,): stored payload bytes
    offsets: np.ndarray  # int64 (n,): where each payload starts in `payload`
    payload: np.ndarray  # uint8: the payloads, packed in record order
    fingerprints: np.ndarray  # uint8 (n, 16)

    def __len__(self) -> int:
        return len(self.lengths)


def load_stored(store: ExtentStore, eids: np.ndarray) -> tuple[StoredRecords, dict[int, str]]:
    """Read extents eids[i] (nonzero, present in the table) as they are stored, payloads
    packed in the order of `eids`, and check their headers against the table (nothing
    is decompressed or fingerprinted). Returns (records, {i: problem}) like
    load_records; a problem record's bytes are unspecified."""
    m = len(eids)
    t = store._table
    idx = np.ascontiguousarray(eids, np.uint64).astype(np.int64)
    comp = t.flags[idx] & FLAG_COMPRESSED != 0
    lengths = t.slen[idx].astype(np.int64)
    if not m:
        return StoredRecords(comp, lengths, lengths, np.empty(0, np.uint8), t.fp[idx]), {}
    r = _fetch(store, eids, np.arange(m), np.empty((0, store.block_size), np.uint8), packed=True)
    cstart = r.iov[1::3, 1]  # every payload is in cbuf: its place is its payload iovec's offset
    if r.dups is None and isinstance(r.order, range):  # file order: already packed in order
        offsets, payload = cstart, r.cbuf
    else:  # repack in the caller's order; a repeated extent gets its own copy
        plan_of = np.empty(m, np.int64)  # caller index -> plan index of its record
        plan_of[np.asarray(r.order)] = np.arange(len(r.key))
        if r.dups is not None:
            plan_of[r.dups] = plan_of[r.dup_src]
        offsets = np.zeros(m, np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        payload = np.empty(int(lengths.sum()), np.uint8)
        for i, a, n in zip(offsets.tolist(), cstart[plan_of].tolist(), lengths.tolist(),
                           strict=True):  # fmt: skip
            payload[i : i + n] = r.cbuf[a : a + n]
    errors = r.problems() if r.bad.any() else {}
    if r.dups is not None:
        for i, src in zip(r.dups.tolist(), r.dup_src.tolist(), strict=True):
            if src in errors:
                errors[i] = errors[src]
    return StoredRecords(comp, lengths, offsets, payload, t.fp[idx]), errors


@dataclass
class _Fetched:
    """One batch of records read by `_fetch` (steps 1 to 3 of the module docstring).
    Arrays are indexed by plan position j (file order); order[j] is the caller's index
    of record j, and dups[x] the caller's index of a repeat of caller index dup_src[x]
    (None when nothing repeats)."""

    store: ExtentStore
    key: np.ndarray  # group << 32 | offset
    ss: np.ndarray  # stored lengths
    comp: np.ndarray  # the table's compressed flags
    order: range | np.ndarray
    dest: np.ndarray  # output rows
    iov: np.ndarray  # the plan: payload iovec j is row 3 j + 1
    cbuf: np.ndarray  # the payloads planned as compressed, packed in plan order
    bad: np.ndarray  # unreadable records: bad header, short file, I/O error
    short: np.ndarray | None  # records past the end of what their run read
    failed: dict[int, str]  # record -> why its run could not be read
    dups: np.ndarray | None
    dup_src: np.ndarray | None

    def name(self, j: int) -> str:  # record j's group file
        return self.store._path(group_file_name(int(self.key[j]) >> 32))

    def where(self, j: int) -> str:
        return f"{self.name(j)} offset {int(self.key[j]) & _OFFSET_MASK}"

    def problems(self) -> dict[int, str]:
        """{caller index: problem} of the bad records (not of their repeats)."""
        errors: dict[int, str] = {}
        for j in np.flatnonzero(self.bad).tolist():
            if j in self.failed:
                what = self.failed[j]
            elif self.short is not None and self.short[j]:
                what = f"{self.name(j)} is truncated"
            else:
                what = "bad record header"
            errors[int(self.order[j])] = f"{self.where(j)}: {what}"
        return errors


def _fetch(
    store: ExtentStore, eids: np.ndarray, rows: np.ndarray, out2d: np.ndarray, packed: bool
) -> _Fetched:
    """Read the records of extents eids[i] (present in the table, at least one) and check
    their headers: uncompressed payloads into out2d[rows[i]] (C-contiguous), compressed
    ones packed into the returned cbuf; with `packed`, every payload goes to cbuf."""
    m = len(eids)
    t, bs = store._table, store.block_size
    eids = np.ascontiguousarray(eids, np.uint64)
    key, ss, comp, ascending = gather_records(t.group, t.offset, t.slen, t.flags, eids)
    dup = dups = dup_src = None
    order: range | np.ndarray
    if ascending:  # already in file order with no repeats (a sequential read): no permutation
        order, ids, dest = range(m), eids, rows
    else:
        order = np.argsort(key, kind="stable")  # file order
        key = key[order]
        # a repeated extent (same record) is read once, then copied
        dup = np.zeros(m, bool)
        np.equal(key[1:], key[:-1], out=dup[1:])
        if dup.any():
            first_of = np.maximum.accumulate(np.where(dup, 0, np.arange(m)))
            dups, dup_src = order[dup], order[first_of[dup]]
            order, key = order[~dup], key[~dup]
        ss, comp, ids, dest = ss[order], comp[order], eids[order], rows[order]
    k = len(key)
    planned = np.ones(k, bool) if packed else comp
    iov, runs = plan_runs(key, ss, planned, dest, bs, MAX_GAP)
    first, nrec = runs[:, 2] // 3, runs[:, 3] // 3  # each run's records
    hdrs = np.empty((k, HEADER_BYTES), np.uint8)
    cbuf = np.empty(int(ss[planned].sum()), np.uint8)
    got, why = _read_runs(store, key[first] >> 32, runs, [store._scratch, hdrs, out2d, cbuf], iov)
    bad = check_headers(hdrs, ids, ss, comp.view(np.uint8), bs)
    short = None  # records past what their run read: only when a run ended early
    if int(got.sum()) != int(iov[:, 2].sum()):
        short = key + HEADER_BYTES + ss > np.repeat(key[first] + got, nrec)
        bad |= short
    failed: dict[int, str] = {}  # record j -> why its run could not be read
    for r, what in why.items():
        failed.update(dict.fromkeys(range(int(first[r]), int(first[r] + nrec[r])), what))
    if failed:
        bad[list(failed)] = True
    return _Fetched(store, key, ss, comp, order, dest, iov, cbuf, bad, short, failed, dups,
                    dup_src)  # fmt: skip


def _read_runs(
    store: ExtentStore, groups: np.ndarray, runs: np.ndarray, buffers: list[np.ndarray],
    iov: np.ndarray,
) -> tuple[np.ndarray, dict[int, str]]:  # fmt: skip
    """Read the runs (rows of `runs`, in group order; column 0, the fd, is filled
    in here) of groups `groups` with native preadv_runs calls. Returns (bytes
    each run read, 0 where it failed; {run: why it failed})."""
    n = len(groups)
    got = np.zeros(n, np.int64)
    why: dict[int, str] = {}
    spans = None
    if store.remote:  # a cold remote group is fetched only where these runs read
        ends = np.concatenate(([0], np.cumsum(iov[:, 2])))
        spans = np.stack([runs[:, 1], ends[runs[:, 2] + runs[:, 3]] - ends[runs[:, 2]]], 1)
    # where each group's runs start (groups ascend: one group when first == last)
    edges = [0, n] if groups[0] == groups[-1] else [
        0, *(np.flatnonzero(groups[1:] != groups[:-1]) + 1).tolist(), n
    ]  # fmt: skip
    for c in range(0, len(edges) - 1, GROUPS_PER_CALL):
        span = edges[c : c + GROUPS_PER_CALL + 1]
        opened = len(why)
        # the call's fds stay open until its preadv (a remote group's fetch may evict others)
        store._pinned = {int(groups[a]) for a in span[:-1]}
        for a, b in zip(span[:-1], span[1:], strict=True):
            try:
                runs[a:b, 0] = store._fd(int(groups[a]),
                                         None if spans is None else spans[a:b].tolist())
            except (Corruption, OSError) as exc:
                why.update(dict.fromkeys(range(a, b), str(exc)))
            except BaseException:
                store._pinned = set()
                raise
        sel: slice | np.ndarray = slice(span[0], span[-1])
        if len(why) > opened:  # leave out the runs of groups that did not open
            sel = np.setdiff1d(np.arange(span[0], span[-1]), list(why))
        got[sel] = preadv_runs(buffers, iov, runs[sel], _IOV_LIMIT)
        store._pinned = set()
    failed = got < 0  # -errno
    if failed.any():
        for r in np.flatnonzero(failed).tolist():
            why[r] = str(OSError(-int(got[r]), os.strerror(-int(got[r]))))
        got[failed] = 0
    return got, why
