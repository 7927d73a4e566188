"""The verified read path of the extent store.

One `load_records` call reads every requested record with as few syscalls as
possible and checks all their headers in one vectorised pass:

1. The records are sorted by (group, offset); a repeated extent is read once
   and copied. Records of one group that are adjacent, or separated by a gap
   of at most MAX_GAP bytes, form a *run*.
2. Each run is one `os.preadv` (split at IOV_MAX iovecs, between records)
   whose iovecs alternate: the record's 64-byte header lands in its slot of a
   header array, an uncompressed payload lands straight in its row of the
   caller's `out2d`, a compressed payload in a staging buffer, and a gap in a
   throwaway buffer (when a call has gaps every record gets a gap iovec,
   zero-length where none follows, so a run's iovecs are one list slice).
   Uncompressed payloads are never copied in user space.
3. All headers of the call are checked at once: magic, extent id, raw and
   stored length and compressed flag against the table, and the XXH3-64
   header checksum (one C hash per header: the only per-record Python work
   besides building the iovecs).
4. Only compressed payloads are decoded one by one (lz4, into their row).

The payload fingerprints are checked by the caller with one native batch
call over `out2d` (ExtentStore.read_blocks, scrub, verify_dedup).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import lz4.block
import numpy as np

from .errors import Corruption
from .extent_group import (
    FLAG_COMPRESSED,
    HEADER_BYTES,
    HEADER_DTYPE,
    bad_headers,
    group_file_name,
)

if TYPE_CHECKING:
    from .extent_store import ExtentStore

MAX_RUN = 4 << 20  # bytes: the store's scratch buffer is sized from it (gap sink)
MAX_GAP = 64 << 10  # bytes: records of one group this close share one preadv
IOV_MAX = 1024  # iovecs per preadv (Linux UIO_MAXIOV)
assert MAX_GAP <= MAX_RUN


def _iov_max() -> int:
    try:
        n = os.sysconf("SC_IOV_MAX")
    except (ValueError, OSError):
        return IOV_MAX
    return min(IOV_MAX, n) if n > 0 else IOV_MAX


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
    e = eids.astype(np.int64)
    g = t.group[e]
    o = t.offset[e].astype(np.int64)
    order = np.lexsort((o, g))
    gs, os_ = g[order], o[order]
    # a repeated extent (same record) is read once, then copied
    dup = np.zeros(m, bool)
    if m > 1:
        dup[1:] = (gs[1:] == gs[:-1]) & (os_[1:] == os_[:-1])
    if dup.any():
        first_of = np.maximum.accumulate(np.where(dup, 0, np.arange(m)))
        dups, dup_src = order[dup], order[first_of[dup]]
        keep = ~dup
        order, gs, os_ = order[keep], gs[keep], os_[keep]
    k = len(order)
    ss = t.slen[e[order]].astype(np.int64)
    fs = t.flags[e[order]]
    comp = (fs & FLAG_COMPRESSED) != 0
    dest = rows[order].astype(np.int64)
    ends = os_ + HEADER_BYTES + ss
    gap = np.zeros(k, np.int64)  # bytes after record j that its run also reads
    brk = np.ones(k, bool)  # record j starts a run
    if k > 1:
        between = os_[1:] - ends[:-1]
        joined = (gs[1:] == gs[:-1]) & (between >= 0) & (between <= MAX_GAP)
        brk[1:] = ~joined
        gap[:-1] = np.where(joined, between, 0)

    hdrs = np.zeros((k, HEADER_BYTES), np.uint8)
    hmv = memoryview(hdrs.reshape(-1))
    omv = memoryview(out2d.reshape(-1))
    sink = memoryview(store._scratch)[:MAX_GAP]
    ncomp = int(np.count_nonzero(comp))
    if ncomp:
        cstart = np.zeros(k, np.int64)  # offset of each compressed payload in cbuf
        cstart[comp] = np.cumsum(ss[comp]) - ss[comp]
        cbuf = np.empty(int(ss[comp].sum()), np.uint8)
        cmv = memoryview(cbuf)
        pstart = np.where(comp, cstart, dest * bs).tolist()
    else:
        pstart = (dest * bs).tolist()

    # the iovecs of each record: header slot, payload, [gap]
    hstarts = range(0, k * HEADER_BYTES, HEADER_BYTES)
    iov_h = [hmv[a : a + HEADER_BYTES] for a in hstarts]
    if ncomp:
        iov_p = [
            (cmv[a : a + s] if c else omv[a : a + bs])
            for a, s, c in zip(pstart, ss.tolist(), comp.tolist(), strict=True)
        ]
    else:
        iov_p = [omv[a : a + bs] for a in pstart]
    # all iovecs of the call, `per` a record: header slot, payload[, gap]; the
    # iovecs of records a..c-1 (one run) are flat[per * a : per * (c - 1) + 2]
    if bool(gap.any()):
        per = 3
        gaps = gap.tolist()
        sinks = {n: sink[:n] for n in set(gaps)}
        flat: list[memoryview | None] = [None] * (3 * k)
        flat[2::3] = [sinks[n] for n in gaps]  # zero-length where no gap follows
    else:
        per = 2
        flat = [None] * (2 * k)
    flat[0::per] = iov_h
    flat[1::per] = iov_p
    max_recs = (_IOV_LIMIT - 2) // per + 1  # records per preadv

    failed: dict[int, str] = {}  # record j -> why its run could not be read
    done: list[int] = []  # first record of each preadv ...
    upto: list[int] = []  # ... and the file offset it read up to
    starts = np.flatnonzero(brk).tolist() + [k]
    gl, ol = gs.tolist(), os_.tolist()
    # runs come in group order, so only the current group's fd is kept (store._fd
    # may close least recently used fds when it opens another group)
    cur: int | None = None
    fd: int | str = ""
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        grp = gl[a]
        if grp != cur:
            cur = grp
            try:
                fd = store._fd(grp)
            except (Corruption, OSError) as exc:
                fd = str(exc)  # why the group cannot be read
        if isinstance(fd, str):
            for j in range(a, b):
                failed[j] = fd
            done.append(a)
            upto.append(0)
            continue
        while a < b:
            c = min(b, a + max_recs)
            base = ol[a]
            try:
                got = os.preadv(fd, flat[per * a : per * (c - 1) + 2], base)
            except OSError as exc:
                for j in range(a, c):
                    failed[j] = str(exc)
                got = -base  # nothing read
            done.append(a)
            upto.append(base + got)
            a = c
    done.append(k)
    # file offset up to which each record's preadv read (0: group unreadable)
    first = np.array(done, np.int64)
    got_end = np.repeat(np.array(upto, np.int64), np.diff(first))

    short = ends > got_end
    hdr = hdrs.reshape(-1).view(HEADER_DTYPE)
    bad = bad_headers(hdr, eids[order], ss, fs, bs) | short
    if failed:
        bad[list(failed)] = True

    errors: dict[int, str] = {}
    if ncomp:
        for j in np.flatnonzero(comp & ~short).tolist():
            a, s = pstart[j], int(ss[j])
            try:
                raw = lz4.block.decompress(cmv[a : a + s], uncompressed_size=bs)
            except lz4.block.LZ4BlockError:
                raw = b""
            r = int(dest[j])
            if len(raw) == bs:
                out2d[r] = np.frombuffer(raw, np.uint8)
            else:
                out2d[r] = 0
                name = store._path(group_file_name(gl[j]))
                errors[int(order[j])] = f"{name} offset {ol[j]}: payload does not decode"
    if bad.any():
        for j in np.flatnonzero(bad).tolist():
            name = store._path(group_file_name(gl[j]))
            if j in failed:
                what = failed[j]
            elif short[j]:
                what = f"{name} is truncated"
            else:
                what = "bad record header"
            if short[j]:
                out2d[int(dest[j])] = 0
            errors[int(order[j])] = f"{name} offset {ol[j]}: {what}"
    if dup.any():
        out2d[rows[dups]] = out2d[rows[dup_src]]
        for i, src in zip(dups.tolist(), dup_src.tolist(), strict=True):
            if src in errors:
                errors[i] = errors[src]
    return errors
