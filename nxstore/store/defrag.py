"""Layout repair: rewrite the scattered records of a vDisk's image contiguously.

Why: after many snapshots that each rewrite a few blocks, the blocks of a range
sit in as many extent-group regions as drains wrote them; a sequential read then
does one `preadv` run per region (~2.2 us each in the kernel). Collapsing the
chain (layers.shortcut_for) removes the lookup cost, not this one. Like Nutanix
Curator's extent-group defragmentation or btrfs defrag, such records are copied,
in block order, to one place (ExtentStore.relocate: verbatim, same ids, so every
block map of every vDisk, snapshot and clone stays valid; gc's compaction
reclaims the old copies).

Measure it as the read path pays for it. The *image* is the vDisk head's chain
flattened: its mapped blocks in block order. It is judged in *windows* of
DEFRAG_WINDOW_BYTES (one large read). A window's records, sorted by (group,
offset), form *clusters* by extent_read's rule: same group, the next record
starting at most MAX_GAP bytes after the previous one ends. A read of the window
does one preadv run per cluster (a repeated extent is read once), so the runs of
an image are its clusters.

Repair: a window of more than DEFRAG_MAX_RUNS clusters keeps its largest cluster
(by record bytes: typically the original stretch, which other vDisks may share by
dedup) where it is and has the records of its other clusters (the scattered
rewrites) relocated, in block order, back to back: it then reads as ~2 runs, the
stretch (its gaps read and dropped) and the relocated pieces. A record that some
window keeps in its largest cluster is never moved (dedup within the image). All
of it is a few numpy passes over the image and the extent table.

Trade-off: a record shared by dedup or with a clone can be contiguous in one
image only; relocating a rewrite for this vDisk can add runs to another sharing
it (never the stretch it shares: that stays put).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..constants import DEFRAG_MAX_RUNS, DEFRAG_WINDOW_BYTES
from .block_map import flatten
from .extent_read import MAX_GAP

if TYPE_CHECKING:
    from .context import ClusterContext
    from .extent_store import ExtentStore
    from .vdisk import VDisk

log = logging.getLogger(__name__)

STAT_KEYS = ("vdisks", "defragmented", "extents_moved", "bytes_moved", "damaged",
             "runs_before", "runs_after", "windows")  # fmt: skip


class Layout(NamedTuple):
    """How reads of an image's windows form preadv runs."""

    cluster: np.ndarray  # per image block: its cluster (clusters numbered in window order)
    window: np.ndarray  # per cluster: its window (block // blocks per window), ascending
    largest: np.ndarray  # per cluster: True for the largest of its window (one per window)


def image(ctx: ClusterContext, vd: VDisk) -> tuple[np.ndarray, np.ndarray]:
    """(blocks ascending, extent ids) of the vDisk's mapped blocks as its head reads
    them (undrained blocks in RAM are not in the extent store and not included);
    empty for a vDisk deleted meanwhile."""
    with ctx.map_lock:
        if vd._deleted:  # its head may be gone from the tree already
            return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        keys, vals = flatten(ctx.tree.chain(vd.head_layer), is_root=True).items()
        return keys.copy(), vals.copy()


def layout(store: ExtentStore, blocks: np.ndarray, ids: np.ndarray) -> Layout:
    """Cluster the records of each DEFRAG_WINDOW_BYTES window of the image (`blocks`
    ascending, their extent `ids`) as extent_read joins them into runs; the largest
    cluster of a window is the one holding the most record bytes (first on a tie)."""
    group, offset, size = store.locations(ids)
    win = blocks.astype(np.int64) // max(1, DEFRAG_WINDOW_BYTES // store.block_size)
    order = np.lexsort((offset, group, win))  # each window's records in file order
    w, g, o, s, e = win[order], group[order], offset[order], size[order], ids[order]
    new = np.ones(len(order), bool)
    # a repeated extent sorts next to itself (gap < 0): it joins, and counts once
    new[1:] = (w[1:] != w[:-1]) | (g[1:] != g[:-1]) | (o[1:] - (o[:-1] + s[:-1]) > MAX_GAP)
    repeat = np.zeros(len(order), bool)
    repeat[1:] = (e[1:] == e[:-1]) & ~new[1:]
    sorted_cluster = np.cumsum(new) - 1
    cluster = np.empty(len(order), np.int64)
    cluster[order] = sorted_cluster
    window = w[new]
    weight = np.bincount(sorted_cluster, weights=np.where(repeat, 0, s), minlength=len(window))
    by_size = np.lexsort((-weight, window))  # per window, the largest cluster first
    largest = np.zeros(len(window), bool)
    head = np.ones(len(by_size), bool)
    head[1:] = window[by_size[1:]] != window[by_size[:-1]]
    largest[by_size[head]] = True
    return Layout(cluster, window, largest)


def defragment_vdisk(ctx: ClusterContext, vd: VDisk, max_bytes: int) -> dict[str, int]:
    """Measure vd's image and, in its windows of more than DEFRAG_MAX_RUNS runs,
    relocate the records outside each window's largest cluster, in block order, at
    most `max_bytes` of records (the window where the budget ends may read as one
    run more until the next call moves the rest). Returns the STAT_KEYS counters
    for this vDisk (runs: preadv runs of reading every window once, measured again
    after the move; windows: windows with mapped blocks, the fewest runs possible).
    Durable on return; crash-safe (ExtentStore.relocate)."""
    store = ctx.store
    blocks, ids = image(ctx, vd)
    lay = layout(store, blocks, ids)
    wins, runs = np.unique(lay.window, return_counts=True)
    bad = wins[runs > DEFRAG_MAX_RUNS]
    stats = dict.fromkeys(STAT_KEYS, 0)
    stats.update(vdisks=1, windows=len(wins), runs_before=len(lay.window),
                 runs_after=len(lay.window))  # fmt: skip
    if not bad.size or max_bytes <= 0:
        log.info("defrag %s: %d runs for %d windows, %d fragmented; nothing moved",
                 vd.name, stats["runs_before"], len(wins), bad.size)  # fmt: skip
        return stats
    scattered = (~lay.largest & np.isin(lay.window, bad))[lay.cluster]
    # an extent the image repeats (dedup) stays where any window keeps it in place
    move = ids[scattered & ~np.isin(ids, ids[lay.largest[lay.cluster]])]
    log.info("defrag %s: %d of %d windows fragmented (%d runs); relocating %d extents",
             vd.name, bad.size, len(wins), stats["runs_before"], move.size)  # fmt: skip
    moved = store.relocate(move, max_bytes)
    stats.update(defragmented=int(moved["extents_moved"] > 0), extents_moved=moved["extents_moved"],
                 bytes_moved=moved["bytes_moved"], damaged=moved["damaged"],
                 runs_after=len(layout(store, blocks, ids).window))  # fmt: skip
    log.info("defrag %s: %d runs -> %d, %d extents (%d bytes) moved", vd.name,
             stats["runs_before"], stats["runs_after"], stats["extents_moved"],
             stats["bytes_moved"])  # fmt: skip
    return stats


def defragment(ctx: ClusterContext, vdisks: list[VDisk], max_bytes: int) -> dict[str, int]:
    """defragment_vdisk for each vDisk in turn, sharing one `max_bytes` budget;
    returns the counters summed."""
    total = dict.fromkeys(STAT_KEYS, 0)
    for vd in vdisks:
        stats = defragment_vdisk(ctx, vd, max_bytes - total["bytes_moved"])
        for k in STAT_KEYS:
            total[k] += stats[k]
    return total
