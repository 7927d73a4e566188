"""Layout repair: rewrite the fragmented parts of a vDisk's image contiguously.

Why: after many snapshots that each rewrite a few blocks, the blocks of a range
sit in as many extent-group regions as drains wrote them; a sequential read then
does one `preadv` run per region (~2.2 us each in the kernel). Collapsing the
chain (layers.shortcut_for) removes the lookup cost, not this one. Like Nutanix
Curator's extent-group defragmentation or btrfs defrag, the extents of such
ranges are copied, in block order, to one place (ExtentStore.relocate: verbatim,
same ids, so every block map of every vDisk, snapshot and clone stays valid;
gc's compaction reclaims the old copies).

Measure. The *image* is the vDisk head's chain flattened: its mapped blocks in
block order. A *break* is a pair of adjacent mapped blocks (b, b + 1) whose
records are not back to back in one group; the same extent twice is no break (a
read loads it once). runs = mapped block ranges + breaks: 1 per range is ideal.
The image is judged in windows of DEFRAG_WINDOW_BYTES (one large read); a window
with more than DEFRAG_MAX_BREAKS breaks has all its extents relocated. All of it
is a few numpy passes over the image and the extent table.

Trade-off: an extent shared by dedup or with a clone can be contiguous in one
image only; relocating it for this vDisk can break the runs of another.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .block_map import flatten
from .constants import DEFRAG_MAX_BREAKS, DEFRAG_WINDOW_BYTES

if TYPE_CHECKING:
    from .context import ClusterContext
    from .extent_store import ExtentStore
    from .vdisk import VDisk

log = logging.getLogger(__name__)

STAT_KEYS = ("vdisks", "defragmented", "extents_moved", "bytes_moved", "damaged",
             "runs_before", "runs_after", "block_ranges")  # fmt: skip


def image(ctx: ClusterContext, vd: VDisk) -> tuple[np.ndarray, np.ndarray]:
    """(blocks ascending, extent ids) of the vDisk's mapped blocks as its head reads
    them (undrained blocks in RAM are not in the extent store and not included)."""
    with ctx.map_lock:
        keys, vals = flatten(ctx.tree.chain(vd.head_layer), is_root=True).items()
        return keys.copy(), vals.copy()


def breaks(store: ExtentStore, blocks: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, int]:
    """(mask over blocks[1:]: a break before that block, number of mapped block ranges)."""
    if len(blocks) < 2:
        return np.zeros(0, bool), len(blocks)
    group, offset, size = store.locations(ids)
    adjacent = np.diff(blocks.astype(np.int64)) == 1
    follows = (group[1:] == group[:-1]) & (offset[1:] == offset[:-1] + size[:-1])
    same = ids[1:] == ids[:-1]
    return adjacent & ~follows & ~same, int(np.count_nonzero(~adjacent)) + 1


def defragment_vdisk(ctx: ClusterContext, vd: VDisk, max_bytes: int) -> dict[str, int]:
    """Measure vd's image and relocate the extents of its windows with more than
    DEFRAG_MAX_BREAKS breaks, in block order, at most `max_bytes` of records.
    Returns the STAT_KEYS counters for this vDisk (runs_after measured again
    after the move). Durable on return; crash-safe (ExtentStore.relocate)."""
    store = ctx.store
    blocks, ids = image(ctx, vd)
    brk, ranges = breaks(store, blocks, ids)
    stats = dict.fromkeys(STAT_KEYS, 0)
    stats.update(vdisks=1, block_ranges=ranges, runs_before=ranges + int(brk.sum()))
    stats["runs_after"] = stats["runs_before"]
    win = blocks.astype(np.int64) // max(1, DEFRAG_WINDOW_BYTES // ctx.block_size)
    per_window = np.bincount(win[1:][brk])  # a break counts in the window of its second block
    bad = np.flatnonzero(per_window > DEFRAG_MAX_BREAKS)
    if not bad.size or max_bytes <= 0:
        log.info("defrag %s: %d runs for %d block ranges, %d windows fragmented; nothing moved",
                 vd.name, stats["runs_before"], ranges, bad.size)  # fmt: skip
        return stats
    move = ids[np.isin(win, bad)]
    log.info("defrag %s: %d of %d windows fragmented (%d runs for %d block ranges); "
             "relocating %d extents", vd.name, bad.size, len(np.unique(win)),
             stats["runs_before"], ranges, move.size)  # fmt: skip
    moved = store.relocate(move, max_bytes)
    brk, _ = breaks(store, blocks, ids)
    stats.update(defragmented=int(moved["extents_moved"] > 0), extents_moved=moved["extents_moved"],
                 bytes_moved=moved["bytes_moved"], damaged=moved["damaged"],
                 runs_after=ranges + int(brk.sum()))  # fmt: skip
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
