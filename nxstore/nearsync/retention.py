"""What the source keeps for NearSync: the OpLog release floor and the extents gc must keep.

An LWS episode lives in the OpLog until every NearSync remote holds it: the drain releases
records only up to the lowest `shipped_seq` among the (PD, site) pairs whose chain is live
(`shipped_seq > 0`: from the seed marker on). Bypass writes are MAP records naming extents;
gc keeps every extent such a retained record names, since an overwrite may already have
dropped it from the block map. The floor is bounded: once retained segments pass
NEARSYNC_OPLOG_SHARE of the OpLog cap it is ignored (writers never block on a slow remote); the
next shipping round then finds its records gone (EpisodeGone) and the PD falls back to
vDisk-snapshot replication. A target's stored episodes are gc roots too (compose.gc_roots).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from ..constants import NEARSYNC_OPLOG_SHARE, OPLOG_CAP_BYTES
from ..store.context import ClusterContext
from ..store.oplog import RecordType
from . import compose
from .rows import NearSyncRow

if TYPE_CHECKING:
    from ..store.engine import Engine

log = logging.getLogger(__name__)


def install(cluster: Engine) -> None:
    """Make the cluster's drain and gc respect NearSync (called when the cluster opens)."""
    ctx = cluster.ctx
    cluster.add_release_floor(lambda: release_floor(ctx))
    cluster.add_gc_roots(lambda: gc_roots(cluster))


def chain_floor(ctx: ClusterContext) -> int | None:
    """The lowest shipped seq of a live chain (None: NearSync retains nothing)."""
    live = [r.shipped_seq for r in ctx.catalog.rows(NearSyncRow, "shipped_seq > 0")]
    return min(live) if live else None


def release_floor(ctx: ClusterContext) -> int | None:
    """Highest seq the drain may release (see module docstring)."""
    floor = chain_floor(ctx)
    if floor is not None and ctx.oplog.bytes_used > NEARSYNC_OPLOG_SHARE * OPLOG_CAP_BYTES:
        log.warning("NearSync retention passed %.0f%% of the OpLog cap: releasing episodes not "
                    "yet shipped (the PDs concerned fall back)", 100 * NEARSYNC_OPLOG_SHARE)
        return None
    return floor


def gc_roots(cluster: Engine) -> np.ndarray:
    """Extent ids named by MAP records above the floor, plus the stored episodes' blocks."""
    ctx = cluster._ctx
    parts = [compose.gc_roots(cluster)]
    floor = chain_floor(ctx)
    if floor is not None:
        it = ctx.oplog.records(floor + 1)
        try:
            parts += [r.extent_ids() for r in it if r.type == RecordType.MAP]
        finally:
            it.close()
    return np.concatenate(parts).astype(np.uint64)
