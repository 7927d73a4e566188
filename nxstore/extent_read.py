"""The verified read path of the extent store.

Extents are sorted by (group, offset); records that are adjacent in a group
form a run read by ONE os.preadv into a reusable scratch buffer. A run of
uncompressed full-size records is fixed-stride, so its payloads leave the
buffer by one numpy reshape + slice copy; other runs are decoded record by
record. Headers are checked (checksum and fields against the table) in a
vectorised gather; the caller checks the payload fingerprints in one native
batch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from .errors import Corruption
from .extent_group import (
    FLAG_COMPRESSED,
    HEADER_BYTES,
    bad_headers,
    decode_payload,
    gather_headers,
    group_file_name,
)

if TYPE_CHECKING:
    from .extent_store import ExtentStore

MAX_RUN = 4 << 20  # bytes read by one preadv


def load_records(
    store: ExtentStore, eids: np.ndarray, out2d: np.ndarray, rows: np.ndarray
) -> dict[int, str]:
    """Read extents eids[i] (present) into out2d[rows[i]], checking headers.
    Coalesces records adjacent in a group into one preadv. Returns {i: problem}
    for extents whose record is unreadable (the caller still checks fingerprints)."""
    t, bs = store._table, store.block_size
    e = eids.astype(np.int64)
    g, o, s, f = (
        t.group[e],
        t.offset[e].astype(np.int64),
        t.slen[e].astype(np.int64),
        t.flags[e],
    )
    order = np.lexsort((o, g))
    gs, os_, ss, fs = g[order], o[order], s[order], f[order]
    ends = os_ + HEADER_BYTES + ss
    brk = np.flatnonzero((gs[1:] != gs[:-1]) | (os_[1:] != ends[:-1])) + 1
    bounds = [0, *brk.tolist(), len(order)]
    errors: dict[int, str] = {}
    scratch = store._scratch
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        while a < b:
            # cap the run at MAX_RUN bytes (at least one record)
            c = a + max(1, int(np.searchsorted(ends[a:b] - os_[a], MAX_RUN, side="right")))
            grp, base = int(gs[a]), int(os_[a])
            name = store._path(group_file_name(grp))
            nbytes = int(ends[c - 1]) - base
            buf = scratch[:nbytes]
            try:
                got = os.preadv(store._fd(grp), [buf], base)
            except (Corruption, OSError) as exc:
                got, why = 0, str(exc)
            else:
                why = f"{name} is truncated"
            idx = order[a:c]
            rel = os_[a:c] - base
            short = rel + HEADER_BYTES + ss[a:c] > got
            hdr = gather_headers(buf, np.minimum(rel, max(got - HEADER_BYTES, 0)))
            bad = bad_headers(hdr, eids[idx], ss[a:c], fs[a:c], bs) | short
            dest = rows[idx]
            if (
                not (fs[a:c] & FLAG_COMPRESSED).any()
                and bool(np.all(ss[a:c] == bs))
                and not short.any()
            ):
                data = buf.reshape(-1)[: (c - a) * (HEADER_BYTES + bs)].reshape(c - a, -1)[
                    :, HEADER_BYTES:
                ]
                d0 = int(dest[0])
                if int(dest[-1]) - d0 == c - a - 1 and bool(np.all(np.diff(dest) == 1)):
                    out2d[d0 : d0 + c - a] = data
                else:
                    out2d[dest] = data
            else:
                for j in range(c - a):
                    r = int(rel[j])
                    raw = b"" if short[j] else decode_payload(
                        buf[r + HEADER_BYTES : r + HEADER_BYTES + int(ss[a + j])],
                        bool(fs[a + j] & FLAG_COMPRESSED), bs,
                    )  # fmt: skip
                    if len(raw) == bs:
                        out2d[dest[j]] = np.frombuffer(raw, np.uint8)
                    else:
                        out2d[dest[j]] = 0
                        errors[int(idx[j])] = (
                            f"{name} offset {int(os_[a + j])}: payload does not decode"
                        )
            for j in np.flatnonzero(bad).tolist():
                what = why if short[j] else "bad record header"
                errors[int(idx[j])] = f"{name} offset {int(os_[a + j])}: {what}"
            a = c
    return errors
