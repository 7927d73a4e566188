"""The target side of NearSync shipping, served by nxstore.replication.target (`register`).

LWS_BEGIN is checked against what is here (the replica and the chain's snapshot exist, the
episode continues the chain); full blocks arrive as in snapshot replication (verified by
fingerprint, stored, deduplicated), partial ranges are staged in RAM; LWS_COMMIT makes the
episode durable: extent store synced, episode file written (fsync, rename, directory fsync),
catalogue row committed. Only then LWS_COMMITTED goes back. A retried episode (the source did
not see the reply) is acknowledged again without storing anything twice.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from ..constants import WIRE_MAX_BATCH
from ..errors import InvalidArgument, NotFound, ProtocolError
from ..replication.messages import GetLws, LwsBegin, LwsCommit, LwsCommitted, LwsList, LwsRanges
from ..replication.protocols import TargetProtocols, Transfer, TransferKind, check_site
from ..replication.replica import find_replica
from . import episode_file
from .compose import (
    chain,
    compose,
    compose_pending,
    drop_orphans,
    episode_path,
    episode_rel,
    snapshot_named,
)
from .rows import LWSEpisodeRow

if TYPE_CHECKING:
    from ..store.engine import Engine

log = logging.getLogger(__name__)


def register(protocols: TargetProtocols, cluster: Engine) -> None:
    """Serve NearSync shipping into `cluster` on its replication targets: the LWS_BEGIN ..
    LWS_COMMIT transfer, GET_LWS; a target being built first composes the snapshots a
    crash kept from being composed."""
    protocols.add_transfer(TransferKind(
        begin=LwsBegin, commit=LwsCommit, stage={LwsRanges: stage_ranges},
        check_begin=partial(check_begin, cluster), on_commit=partial(commit, cluster),
        after_commit=partial(after_commit, cluster), honours_dedup_policy=False))
    protocols.add_query(GetLws, partial(_get_lws, cluster))
    protocols.on_start(partial(compose_pending, cluster))


def _get_lws(cluster: Engine, source: str, site: str, msg: GetLws) -> LwsList:
    check_site(site, msg.source_site)
    return list_lws(cluster, source, msg.vdisk, msg.base_snapshot, msg.req_id)


def _replica(cluster: Engine, source: str, b: LwsBegin) -> tuple[int, str]:
    row = find_replica(cluster, source, b.vdisk)
    if row is None or snapshot_named(cluster, row.name, b.base_snapshot) is None:
        raise NotFound(f"no replica snapshot {b.source_site}:{b.vdisk}@{b.base_snapshot} for "
                       f"LWS {b.name}: seed it first")
    return row.id, row.name


def check_begin(cluster: Engine, source: str, b: LwsBegin) -> None:
    """NotFound unless the replica and its snapshot exist; InvalidArgument if the episode
    does not continue the chain held here (the source then re-seeds)."""
    vid, name = _replica(cluster, source, b)
    if b.seq <= b.prev_seq:
        raise InvalidArgument(f"LWS {b.name}: seq {b.seq} does not follow {b.prev_seq}")
    if b.first:
        return
    held = chain(cluster, vid, b.base_snapshot)
    if any(r.seq == b.seq for r in held):
        return  # a retry of an episode already stored
    if not held or held[-1].seq != b.prev_seq:
        raise InvalidArgument(f"{name}: LWS {b.name} does not continue the episode chain on "
                              f"{b.base_snapshot} (after seq {b.prev_seq})")


def stage_ranges(msg: LwsRanges, transfer: Transfer | None) -> None:
    if transfer is None or not isinstance(transfer.begin, LwsBegin):
        raise ProtocolError("LWS_RANGES outside an LWS transfer")
    transfer.ranges.append((np.array(msg.offsets), np.array(msg.lengths), np.array(msg.data)))


def commit(cluster: Engine, source: str, msg: LwsCommit,
           transfer: Transfer | None) -> LwsCommitted:
    """Store the episode of `transfer` durably (see module docstring); the reply."""
    if transfer is None or not isinstance(transfer.begin, LwsBegin) or (
            transfer.begin.transfer_id != msg.transfer_id):
        raise ProtocolError("LWS_COMMIT of an LWS transfer that was not begun on this connection")
    b: LwsBegin = transfer.begin
    if transfer.entries != msg.map_entries or len(transfer.ranges) != msg.ranges:
        raise ProtocolError(f"LWS_COMMIT announces {msg.map_entries} map entries and "
                            f"{msg.ranges} range batches, {transfer.entries} and "
                            f"{len(transfer.ranges)} arrived")
    vid, name = _replica(cluster, source, b)
    cat = cluster._ctx.catalog
    if cat.rows(LWSEpisodeRow, "vdisk_id = ? AND seq = ?", (vid, b.seq)):
        return LwsCommitted(msg.transfer_id, b.seq, req_id=msg.req_id)
    check_begin(cluster, source, b)
    ep = _episode(cluster, b, transfer)
    cluster._ctx.store.sync()  # the blocks before the episode that names them
    row = LWSEpisodeRow(0, vid, b.name, b.group, b.members, b.seq, b.prev_seq, b.first,
                        b.created_at, b.base_snapshot, b.compose_as or "", b.size,
                        episode_rel(vid, b.seq))
    episode_file.write(episode_path(cluster, row), ep)
    with cat.transaction():
        cat.insert(row)
    log.debug("%s: stored LWS episode %s (seq %d, %d blocks, %d ranges)", name, b.name, b.seq,
              ep.indices.size, ep.offsets.size)
    return LwsCommitted(msg.transfer_id, b.seq, req_id=msg.req_id)


def _episode(cluster: Engine, b: LwsBegin, transfer: Transfer) -> episode_file.StoredEpisode:
    """The staged episode, checked: blocks inside the size and stored, ranges in one block."""
    bs = cluster.block_size
    u64 = np.zeros(0, dtype=np.uint64)
    idx = np.concatenate(transfer.indices) if transfer.indices else u64
    fps = (np.concatenate(transfer.fingerprints) if transfer.fingerprints
           else np.zeros((0, 16), dtype=np.uint8))
    offs = np.concatenate([r[0] for r in transfer.ranges]) if transfer.ranges else u64
    lens = np.concatenate([r[1] for r in transfer.ranges]) if transfer.ranges else u64
    data = (np.concatenate([r[2] for r in transfer.ranges]) if transfer.ranges
            else np.zeros(0, dtype=np.uint8))
    if idx.size and int(idx.max()) * bs >= b.size:
        raise InvalidArgument(f"LWS {b.name}: a block index lies beyond the vDisk size")
    if offs.size and (int((offs + lens).max()) > b.size or (
            (offs // np.uint64(bs)) != ((offs + lens - np.uint64(1)) // np.uint64(bs))).any()
            or not lens.all()):
        raise InvalidArgument(f"LWS {b.name}: a byte range is empty, crosses a block edge or "
                              "lies beyond the vDisk size")
    nonzero = fps.any(axis=1)
    if (cluster._ctx.store.lookup(fps[nonzero]) == 0).any():
        raise NotFound(f"LWS {b.name}: blocks it names are not stored here")
    order = np.argsort(idx, kind="stable")
    return episode_file.StoredEpisode(idx[order], fps[order], offs, lens, data)


def after_commit(cluster: Engine, source: str, b: LwsBegin) -> None:
    """Compose the vDisk snapshot the episode asks for (the episode is durable already)."""
    if not b.compose_as:
        return
    vid, _ = _replica(cluster, source, b)
    rows = cluster._ctx.catalog.rows(LWSEpisodeRow, "vdisk_id = ? AND seq = ?", (vid, b.seq))
    if rows and compose(cluster, rows[0]) is not None:
        drop_orphans(cluster)


def list_lws(cluster: Engine, source: str, vdisk: str, base_snapshot: str,
             req_id: int) -> LwsList:
    """The episodes held on `base_snapshot` of the replica of (source, vdisk)."""
    row = find_replica(cluster, source, vdisk)
    held = chain(cluster, row.id, base_snapshot) if row is not None else []
    return LwsList(tuple((r.seq, r.created_at) for r in held[-WIRE_MAX_BATCH:]), req_id=req_id)
