"""Crash recovery at open: re-apply the OpLog records the persisted block maps miss.

A MAP record naming extents the store does not hold is skipped when it may never have been
synced (its extents were lost with it: never acknowledged). One that was synced names extents
that were durable before it, so they were damaged away: it is applied anyway (those blocks
then fail to read, never read older data) and reported in `ctx.problems`.
"""

from __future__ import annotations

import logging

from .context import ClusterContext
from .oplog import RecordType
from .vdisk import VDisk

log = logging.getLogger(__name__)


def replay_oplog(ctx: ClusterContext, vdisks: list[VDisk]) -> None:
    """Bring every vDisk of `vdisks` up to its durable OpLog records (see module docstring).
    Called once at open, before anything else uses the vDisks."""
    by_id = {vd.id: vd for vd in vdisks}
    with ctx.map_lock:
        starts = {vd.id: ctx.tree.applied_seq(vd.head_layer) for vd in by_id.values()}
    if not starts:
        return
    oplog = ctx.oplog
    _drop_torn_bypass_writes(ctx, by_id, starts)
    replayed = skipped = 0
    for record in oplog.records(min(starts.values()) + 1):
        vd = by_id.get(record.vdisk_id)
        if vd is None or record.seq <= starts[vd.id] or record.type == RecordType.MARKER:
            continue
        if record.type == RecordType.MAP and record.seq <= oplog.recovered_durable_seq:
            store = ctx.store
            missing = record.extent_ids()[~store.contains_each(record.extent_ids())]
            if missing.size:
                cut = f" (open cut torn tails of {', '.join(store.cut_tails)})"
                ctx.problems.append(
                    f"OpLog record {record.seq} (vDisk {vd.name!r}, blocks {record.offset}.."
                    f"{record.offset + record.length - 1}) was synced but names "
                    f"{missing.size} extent(s) the extent store lacks, e.g. "
                    f"{int(missing[0])}: an extent group is damaged or truncated"
                    f"{cut if store.cut_tails else ''}")
                log.error("%s", ctx.problems[-1])
            vd.replay(record, require_extents=False)
            replayed += 1
        elif vd.replay(record):
            replayed += 1
        else:
            skipped += 1
    if replayed or skipped:
        log.info("replayed %d OpLog records (%d unacknowledged skipped)", replayed, skipped)


def _drop_torn_bypass_writes(ctx: ClusterContext, by_id: dict[int, VDisk],
                             starts: dict[int, int]) -> None:
    """Cut the OpLog at the first unsynced MAP record whose extents did not survive the
    crash: that write was never acknowledged, and left in the log, the next sync would
    make it look acknowledged (its blocks would then fail to read after a reopen).
    Every later record is unsynced too, so none of them was acknowledged either."""
    oplog, store = ctx.oplog, ctx.store
    first = max(oplog.recovered_durable_seq, min(starts.values())) + 1
    for record in oplog.records(first):
        vd = by_id.get(record.vdisk_id)
        if (record.type == RecordType.MAP and vd is not None and record.seq > starts[vd.id]
                and not store.contains(record.extent_ids())):
            oplog.drop_unacknowledged(record.seq)
            return
