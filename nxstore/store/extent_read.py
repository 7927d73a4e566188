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
from typing import TYPE_CHECKING

import numpy as np

from ..errors import Corruption
from .extent_group import HEADER_BYTES, group_file_name
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
    t, bs = store._table, store.block_size
    eids = np.ascontiguousarray(eids, np.uint64)
    key, ss, comp, ascending = gather_records(t.group, t.offset, t.slen, t.flags, eids)
    dup = None
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
        else:
            dup = None
        ss, comp, ids, dest = ss[order], comp[order], eids[order], rows[order]
    k = len(key)
    iov, runs = plan_runs(key, ss, comp, dest, bs, MAX_GAP)
    first, nrec = runs[:, 2] // 3, runs[:, 3] // 3  # each run's records
    hdrs = np.empty((k, HEADER_BYTES), np.uint8)
    ncomp = int(np.count_nonzero(comp))
    cbuf = np.empty(int(ss[comp].sum()) if ncomp else 0, np.uint8)
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

    def name(j: int) -> str:  # record j's group file
        return store._path(group_file_name(int(key[j]) >> 32))

    def where(j: int) -> str:
        return f"{name(j)} offset {int(key[j]) & _OFFSET_MASK}"

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
        for j in np.flatnonzero(bad).tolist():
            if j in failed:
                what = failed[j]
            elif short is not None and short[j]:
                what = f"{name(j)} is truncated"
            else:
                what = "bad record header"
            if short is not None and short[j]:
                out2d[dest[j]] = 0
            errors[int(order[j])] = f"{where(j)}: {what}"
    if dup is not None:
        out2d[rows[dups]] = out2d[rows[dup_src]]
        for i, src in zip(dups.tolist(), dup_src.tolist(), strict=True):
            if src in errors:
                errors[i] = errors[src]
    return errors


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
    # where each group's runs start (groups ascend: one group when first == last)
    edges = [0, n] if groups[0] == groups[-1] else [
        0, *(np.flatnonzero(groups[1:] != groups[:-1]) + 1).tolist(), n
    ]  # fmt: skip
    for c in range(0, len(edges) - 1, GROUPS_PER_CALL):
        span = edges[c : c + GROUPS_PER_CALL + 1]
        opened = len(why)
        for a, b in zip(span[:-1], span[1:], strict=True):
            try:
                runs[a:b, 0] = store._fd(int(groups[a]))
            except (Corruption, OSError) as exc:
                why.update(dict.fromkeys(range(a, b), str(exc)))
        sel: slice | np.ndarray = slice(span[0], span[-1])
        if len(why) > opened:  # leave out the runs of groups that did not open
            sel = np.setdiff1d(np.arange(span[0], span[-1]), list(why))
        got[sel] = preadv_runs(buffers, iov, runs[sel], _IOV_LIMIT)
    failed = got < 0  # -errno
    if failed.any():
        for r in np.flatnonzero(failed).tolist():
            why[r] = str(OSError(-int(got[r]), os.strerror(-int(got[r]))))
        got[failed] = 0
    return got, why
