"""scrub: read and verify everything the cluster stores, report what is wrong."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ..errors import NxError
from .catalog import VDiskRow, registered_row_types
from .context import ClusterContext
from .oplog import RecordType

log = logging.getLogger(__name__)


def scrub_cluster(
    ctx: ClusterContext, progress: Callable[[int, int], None] | None = None
) -> list[str]:
    """Verify every catalogue row (of every registered table: those of each layer imported in
    this process, all once nxstore.Cluster is), every map layer, every OpLog record (and that
    the extents its MAP records name exist) and every extent (fingerprint of the decompressed
    bytes); include the damage open found and went around (a torn watermark slot, a rebuilt
    table, a synced record naming lost extents). Returns one line per problem; an empty list
    means healthy. Changes nothing."""
    problems: list[str] = list(ctx.problems)
    problems += ctx.catalog.problems + ctx.oplog.problems
    for row_type in registered_row_types():
        try:
            ctx.catalog.rows(row_type)
        except NxError as exc:
            problems.append(str(exc))
    referenced = []
    with ctx.map_lock:
        for layer_id in list(ctx.tree.rows):
            try:
                referenced.append(ctx.tree.layer(layer_id).items()[1])
            except NxError as exc:
                problems.append(f"map layer {layer_id}: {exc}")
    problems += ctx.tree.store.problems
    try:
        with ctx.map_lock:  # records replay would apply: above their head's persisted map
            applied = {row.id: ctx.tree.applied_seq(row.head_layer)
                       for row in ctx.catalog.rows(VDiskRow)}
        for record in ctx.oplog.records():
            if record.type == RecordType.MAP and record.seq > applied.get(record.vdisk_id, 2**64):
                referenced.append(record.extent_ids())
    except NxError as exc:
        problems.append(f"oplog: {exc}")
    if referenced:
        ids = np.unique(np.concatenate(referenced))
        ids = ids[ids != 0]
        missing = ids[~ctx.store.contains_each(ids)]
        if missing.size:
            problems.append(
                f"{missing.size} extent(s) referenced by block maps or OpLog records are "
                f"missing, e.g. extent id {int(missing[0])}"
                + (f" (open cut torn tails of {', '.join(ctx.store.cut_tails)})"
                   if ctx.store.cut_tails else "")
            )
    problems.extend(ctx.store.scrub(progress))
    for line in problems:
        log.warning("scrub: %s", line)
    return problems
