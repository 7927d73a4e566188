"""Replica verification: compare a snapshot with its replica at a remote site by block
fingerprints, moving no block data.

The source asks for the content fingerprints of the replica snapshot in ranges of at most
WIRE_MAX_BATCH blocks (VERIFY_REQUEST, a few in flight); the target reads and verifies
those blocks (so a damaged replica record is found too) and answers with their
fingerprints and the blocks that failed (VERIFY_REPLY). The source compares them with its
own, from its block map and extent table (read and verified as well on request), and
reports every block that differs. Needs protocol version 4 at both ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..constants import WIRE_MAX_BATCH, WIRE_VERIFY_VERSION
from ..errors import (
    ConnectionClosed,
    InvalidArgument,
    NotFound,
    ProtocolError,
)
from ..store.snapshot import Snapshot
from ..store.verify import RangeFingerprints
from .messages import Message, VerifyReply, VerifyRequest
from .replica import replica_snapshots
from .sites import get_site
from .source import Session, open_session, run

if TYPE_CHECKING:
    from ..store.engine import Engine

log = logging.getLogger(__name__)

VERIFY_IN_FLIGHT = 4  # VERIFY_REQUESTs a source keeps outstanding (the target reads one at a time)

Progress = Callable[[int, int], None]  # (blocks compared, blocks in all)


@dataclass(frozen=True)
class BlockDifference:
    """A block whose replica does not match the source snapshot."""

    offset: int  # byte offset of the block in the image
    problem: str


@dataclass(frozen=True)
class ReplicaVerifyResult:
    """What `verify_replica` compared and found."""

    site: str
    snapshot: str  # VDISK@SNAP
    size: int  # bytes of the image
    blocks_compared: int
    differences: tuple[BlockDifference, ...]  # every differing or damaged block, by offset
    bytes_on_wire: int  # both directions, frame headers included
    seconds: float

    @property
    def clean(self) -> bool:
        return not self.differences


# -- target ------------------------------------------------------------------------------

def serve_verify(cluster: Engine, source_cluster: str, site: str, msg: VerifyRequest,
                 version: int) -> VerifyReply:
    """Answer one VERIFY_REQUEST from `site` (cluster `source_cluster`) on a connection
    that negotiated `version`. Raises ProtocolError (version below 4), NotFound (no such
    replica snapshot), InvalidArgument (block size, range)."""
    if version < WIRE_VERIFY_VERSION:  # an older peer never sends it
        raise ProtocolError(f"VERIFY_REQUEST needs protocol version {WIRE_VERIFY_VERSION}; "
                            f"{site} negotiated {version}")
    if msg.block_size != cluster.block_size:
        raise InvalidArgument(f"block size {msg.block_size} differs from this site's "
                              f"{cluster.block_size}")
    snap = next((s for s in replica_snapshots(cluster, source_cluster, msg.vdisk)
                 if s.name == msg.snapshot and s.created_at == msg.created_at), None)
    if snap is None:
        raise NotFound(f"this site holds no replica snapshot {msg.vdisk}@{msg.snapshot} of "
                       f"{site} (taken at that time)")
    nblocks = -(-snap.size // cluster.block_size)
    if msg.first + msg.count > nblocks:
        raise InvalidArgument(f"blocks {msg.first}..{msg.first + msg.count - 1} are past the "
                              f"end of {msg.vdisk}@{msg.snapshot} ({nblocks} blocks)")
    r = snap.block_fingerprints(msg.first, msg.count, reread=msg.reread)
    fps = r.fps
    damaged = np.array(sorted(r.damaged), np.uint32)
    if damaged.size:
        fps = fps.copy()
        fps[damaged] = 0
        for i in damaged.tolist():
            log.warning("replica %s@%s of %s: block at offset %d is damaged: %s", msg.vdisk,
                        msg.snapshot, site, (msg.first + i) * cluster.block_size, r.damaged[i])
    return VerifyReply(msg.first, fps, damaged, req_id=msg.req_id)


# -- source ------------------------------------------------------------------------------

async def _compare(engine: Engine, s: Session, site: str, snap: Snapshot, *, reread_here: bool,
                   reread_there: bool, progress: Progress | None) -> list[BlockDifference]:
    """Every block of `snap` whose fingerprint differs from the replica's at `site`, or that
    failed verification on either side; VERIFY_IN_FLIGHT requests outstanding."""
    bs = engine.block_size
    nblocks = -(-snap.size // bs)
    ranges = [(first, min(WIRE_MAX_BATCH, nblocks - first))
              for first in range(0, nblocks, WIRE_MAX_BATCH)]

    def ask(first: int, count: int) -> asyncio.Future[Message]:
        async def send() -> Message:
            return await (await s.ask(lambda r: VerifyRequest(
                snap.vdisk_name, snap.name, snap.created_at, bs, first, count, reread_there,
                req_id=r)))
        return asyncio.ensure_future(send())

    pending = [ask(*rng) for rng in ranges[:VERIFY_IN_FLIGHT]]
    found: list[BlockDifference] = []
    try:
        for k, (first, count) in enumerate(ranges):
            mine = await asyncio.to_thread(snap.block_fingerprints, first, count,
                                           reread=reread_here)
            reply = await pending[k]
            if k + VERIFY_IN_FLIGHT < len(ranges):
                pending.append(ask(*ranges[k + VERIFY_IN_FLIGHT]))
            if not isinstance(reply, VerifyReply) or reply.first != first or \
                    len(reply.fingerprints) != count:
                raise ProtocolError(f"site {site!r} answered blocks {first}.."
                                    f"{first + count - 1} with {type(reply).__name__} of "
                                    "another range")
            found += _differences(mine, reply, site, bs)
            if progress is not None:
                progress(first + count, nblocks)
    finally:
        for fut in pending:  # after a failure: nothing left running, no error unretrieved
            fut.cancel()
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return found


def _differences(mine: RangeFingerprints, reply: VerifyReply, site: str,
                 block_size: int) -> list[BlockDifference]:
    count = len(mine.fps)
    theirs = np.zeros(count, bool)
    theirs[reply.damaged] = True
    differ = (mine.fps != reply.fingerprints).any(axis=1) | theirs
    differ[list(mine.damaged)] = True
    out = []
    for i in np.flatnonzero(differ).tolist():
        if i in mine.damaged:
            what = f"damaged here: {mine.damaged[i]}"
        elif theirs[i]:
            what = f"damaged at {site}: its stored record failed verification"
        else:
            what = f"differs from the replica at {site}"
        out.append(BlockDifference((mine.first + i) * block_size, what))
    return out


def verify_replica(engine: Engine, site: str, snap: Snapshot, *, reread_here: bool = False,
                   reread_there: bool = True, progress: Progress | None = None
                   ) -> ReplicaVerifyResult:
    """Compare snapshot `snap` with its replica at remote `site` block by block, by
    content fingerprint. The site reads and verifies its replica's blocks (unless not
    `reread_there`: then its extent table's fingerprints are compared); with `reread_here`
    this side reads and verifies its own blocks too (otherwise its table is trusted).
    Every block that differs or failed verification on either side is in the result.
    `progress(blocks done, blocks in all)` after each range. Raises NotFound (site, or the
    site holds no replica of that snapshot), VersionMismatch (the site speaks protocol
    version 3 or older: nothing compared), NxError (connection)."""
    remote = get_site(engine.ctx.catalog, site)

    async def go() -> ReplicaVerifyResult:
        started = time.perf_counter()
        s = await open_session(engine, remote)
        try:
            s.require_version(site, WIRE_VERIFY_VERSION, "verifying a replica")
            try:
                found = await _compare(engine, s, site, snap, reread_here=reread_here,
                                       reread_there=reread_there, progress=progress)
            except ConnectionClosed as exc:  # say what the peer reported, if it did
                reported = await s.explain(exc)
                if reported is exc:
                    raise
                raise reported from exc
            wire = s.t.bytes_sent + s.t.bytes_received
        finally:
            await s.close()
        nblocks = -(-snap.size // engine.block_size)
        return ReplicaVerifyResult(site, f"{snap.vdisk_name}@{snap.name}", snap.size, nblocks,
                                   tuple(found), wire, time.perf_counter() - started)

    result = run(go())
    assert isinstance(result, ReplicaVerifyResult)
    return result
