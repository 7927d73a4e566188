"""scrub: read and verify everything the cluster stores, report what is wrong."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from .catalog import ContainerRow, LayerRow, SnapshotRow, VDiskRow
from .context import ClusterContext
from .errors import NxError

log = logging.getLogger(__name__)


def scrub_cluster(
    ctx: ClusterContext, progress: Callable[[int, int], None] | None = None
) -> list[str]:
    """Verify catalogue rows, every map layer, every OpLog record and every
    extent (fingerprint of the decompressed bytes). Returns one line per problem;
    an empty list means healthy. Changes nothing."""
    problems: list[str] = []
    for row_type in (ContainerRow, VDiskRow, LayerRow, SnapshotRow):
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
    try:
        for _ in ctx.oplog.records():
            pass
    except NxError as exc:
        problems.append(f"oplog: {exc}")
    if referenced:
        ids = np.unique(np.concatenate(referenced))
        ids = ids[ids != 0]
        missing = ids[~ctx.store.contains_each(ids)]
        if missing.size:
            problems.append(
                f"{missing.size} extent(s) referenced by block maps are missing, "
                f"e.g. extent id {int(missing[0])}"
            )
    problems.extend(ctx.store.scrub(progress))
    for line in problems:
        log.warning("scrub: %s", line)
    return problems
