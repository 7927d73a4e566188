"""The source side of NearSync shipping: LWS episodes to one remote over one connection.

Per LWS (oldest first) and per member vDisk: LWS_BEGIN -> READY; the episode's full blocks as
in snapshot replication (HAVE_FINGERPRINTS -> MISSING, BLOCKS of the missing ones only, lz4
where it pays, then MAP_ENTRIES with every full block's fingerprint); the partial ranges in
LWS_RANGES; LWS_COMMIT -> LWS_COMMITTED once the target made the episode durable. After every
member of an LWS is committed, `on_shipped` records it (the release floor moves on). The whole
round runs under one timeout: a stalled link ends it with NxError and the next round resumes
at the first LWS not recorded. Before the first LWS a `before` hook gets the open session (the
driver asks the remote who owns the PD there, under the same timeout).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xxhash

from ..constants import WIRE_BLOCKS_BATCH_BYTES, WIRE_MAX_BATCH
from ..errors import NxError
from ..replication.messages import (
    Blocks,
    HaveFingerprints,
    LwsBegin,
    LwsCommit,
    LwsCommitted,
    LwsRanges,
    MapEntries,
    Missing,
    Ready,
)
from ..replication.sites import RemoteSite
from ..replication.source import open_session
from ..store.lws import LWSRow
from . import lws
from .episode import Episode, read_episodes

if TYPE_CHECKING:
    from ..replication.source import Session
    from ..store.engine import Engine


@dataclass
class Chain:
    """Where the remote's episode chain stands: the newest LWS it holds (`prev_seq`) on
    vDisk snapshot `base_snapshot`, which was taken with marker `base_seq`."""

    prev_seq: int
    base_snapshot: str
    base_seq: int


@dataclass(frozen=True)
class Shipped:
    """One LWS shipped to one remote."""

    lws: LWSRow
    bytes_written: int   # bytes the episode's records wrote (before coalescing)
    bytes_payload: int   # block and range bytes the episode needed after coalescing
    bytes_on_wire: int   # frames both ways, headers included
    blocks_sent: int
    blocks_deduped: int
    seconds: float


def ship(cluster: Engine, site: RemoteSite, pd_name: str, rows: list[LWSRow], chain: Chain,
         on_shipped: Callable[[Shipped, Chain], None], timeout: float,
         before: Callable[[Session], Awaitable[None]]) -> list[Shipped]:
    """Ship `rows` (in seq order) to `site` continuing `chain`, after `before(session)`; see
    module docstring. Raises NxError (timeout, connection), EpisodeGone, what the target
    reported, or what `before` raised (nothing shipped then)."""
    from ..replication.source import run

    async def bounded() -> list[Shipped]:
        try:
            return await asyncio.wait_for(
                _ship(cluster, site, pd_name, rows, chain, on_shipped, before), timeout)
        except TimeoutError:
            raise NxError(f"shipping LWS to {site.name} took over {timeout:g} s") from None

    return run(bounded())  # type: ignore[return-value]


async def _ship(cluster: Engine, site: RemoteSite, pd_name: str, rows: list[LWSRow],
                chain: Chain, on_shipped: Callable[[Shipped, Chain], None],
                before: Callable[[Session], Awaitable[None]]) -> list[Shipped]:
    s = await open_session(cluster, site)
    loop = asyncio.get_running_loop()
    done = []
    try:
        await before(s)
        for row in rows:
            started = time.perf_counter()
            wire0 = s.t.bytes_sent + s.t.bytes_received
            members = lws.members(row)
            episodes = await loop.run_in_executor(
                None, read_episodes, cluster._ctx, [m[0] for m in members.values()],
                chain.prev_seq, row.seq)
            sent = deduped = payload = 0
            for name, (vid, size, _head) in sorted(members.items()):
                ep = episodes[vid]
                a, b = await _ship_episode(cluster, s, site, pd_name, row, name, size,
                                           len(members), ep, chain)
                sent, deduped = sent + a, deduped + b
                payload += ep.data.nbytes + ep.range_data.nbytes
            chain = Chain(row.seq, row.snapshot or chain.base_snapshot,
                          row.seq if row.snapshot else chain.base_seq)
            shipped = Shipped(row, sum(e.written for e in episodes.values()), payload,
                              s.t.bytes_sent + s.t.bytes_received - wire0, sent, deduped,
                              time.perf_counter() - started)
            on_shipped(shipped, chain)
            done.append(shipped)
    finally:
        await s.close()
    return done


async def _ship_episode(cluster: Engine, s: Session, site: RemoteSite, pd_name: str,
                        row: LWSRow, vdisk: str, size: int, members: int, ep: Episode,
                        chain: Chain) -> tuple[int, int]:
    """One member's episode; returns (blocks sent, blocks the target already had)."""
    vd = cluster.vdisk(vdisk)
    container = site.vstore_mapping.get(vd.container, vd.container)
    tid = xxhash.xxh3_128_digest(f"{cluster.id}/{vdisk}/lws/{row.seq}".encode())
    first = chain.prev_seq == chain.base_seq
    ready = await s.request(lambda r: LwsBegin(
        tid, cluster.site_name, vdisk, container, pd_name, row.name, chain.base_snapshot,
        row.snapshot or None, row.created_at, row.seq, chain.prev_seq, size,
        cluster.block_size, members, first, req_id=r), Ready)
    s.window.window = max(1, ready.window)
    batch = max(1, min(ready.max_batch, WIRE_MAX_BATCH))
    fps = ep.fingerprints()
    sent = await _send_blocks(s, ep, fps, batch)
    for lo in range(0, ep.indices.size, batch):
        hi = lo + batch
        await s.post(lambda r, lo=lo, hi=hi: MapEntries(ep.indices[lo:hi], fps[lo:hi], req_id=r))
    nranges = await _send_ranges(s, ep, batch)
    await s.request(lambda r: LwsCommit(tid, int(ep.indices.size), nranges, req_id=r),
                    LwsCommitted)
    nonzero = int(np.count_nonzero(fps.any(axis=1)))
    return sent, nonzero - sent


async def _send_blocks(s: Session, ep: Episode, fps: np.ndarray, batch: int) -> int:
    """BLOCKS for the distinct nonzero full blocks the target lacks; returns how many."""
    nonzero = np.flatnonzero(fps.any(axis=1))
    _, first = np.unique(fps[nonzero].view("V16").ravel(), return_index=True)
    unique = nonzero[np.sort(first)]
    per_frame = max(1, min(batch, WIRE_BLOCKS_BATCH_BYTES // ep.block_size))
    sent = 0
    for lo in range(0, unique.size, batch):
        chunk = unique[lo:lo + batch]
        reply = await s.request(lambda r, c=chunk: HaveFingerprints(fps[c], req_id=r), Missing)
        lacking = chunk[np.asarray(reply.missing, dtype=bool)]
        for b in range(0, lacking.size, per_frame):
            part = lacking[b:b + per_frame]
            await s.post(lambda r, p=part: Blocks(ep.block_size, fps[p], ep.data[p], req_id=r))
            sent += part.size
    return sent


async def _send_ranges(s: Session, ep: Episode, batch: int) -> int:
    """LWS_RANGES of at most `batch` ranges and about WIRE_BLOCKS_BATCH_BYTES each."""
    ends = np.cumsum(ep.lengths.astype(np.int64))
    count, lo, pos = 0, 0, 0
    while lo < ep.offsets.size:
        limit = int(np.searchsorted(ends, pos + WIRE_BLOCKS_BATCH_BYTES, side="right"))
        hi = min(ep.offsets.size, lo + batch, max(lo + 1, limit))
        end = int(ends[hi - 1])
        await s.post(lambda r, a=lo, b=hi, p=pos, e=end: LwsRanges(
            ep.offsets[a:b], ep.lengths[a:b], ep.range_data[p:e], req_id=r))
        count, lo, pos = count + 1, hi, end
    return count
