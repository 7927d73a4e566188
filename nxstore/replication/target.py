"""The target side of replication: one handler per authenticated connection.

Blocks are verified (XXH3-128 of the received bytes against the fingerprint
the source claims) before they are stored; map entries are staged in RAM per
transfer and applied in one atomic step at COMMIT (nxstore.replica). A dropped
connection or an ABORT drops the staging; blocks already stored stay and make
a retried transfer cheap. Any error is reported to the peer as ERROR, logged,
and ends the connection; the previous replica snapshot is never touched.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from ..constants import (
    WIRE_DEFAULT_WINDOW,
    WIRE_MAX_BATCH,
    WIRE_PRUNE_BY_NAME_VERSION,
    WIRE_STORED_BLOCKS_VERSION,
)
from ..errors import (
    ConnectionClosed,
    Corruption,
    InUse,
    InvalidArgument,
    NxError,
    ProtocolError,
)
from ..store import native
from ..store.extent_group import parse_group_name
from ..store.extent_read import StoredRecords
from .messages import (
    Abort,
    BeginTransfer,
    Blocks,
    Commit,
    Committed,
    Error,
    GetSnapshots,
    HaveFingerprints,
    MapEntries,
    Message,
    Missing,
    Ping,
    Pong,
    Prune,
    Pruned,
    PruneSnapshots,
    Ready,
    SnapshotInfo,
    Snapshots,
    StoredBlocks,
    VerifyRequest,
)
from .messages.replication import STORED_FLAG_LZ4
from .protocols import (
    SessionHandler,
    Transfer,
    TransferBegin,
    TransferKind,
    check_site,
    target_protocols,
)
from .replica import (
    apply_snapshot,
    delete_replica_snapshots,
    prune_replica,
    replica_snapshots,
)
from .transport import StreamTransport
from .verify import serve_verify
from .window import AckBatcher

if TYPE_CHECKING:
    from ..store.engine import Engine
    from .auth import SiteIdentity

log = logging.getLogger(__name__)

# bytes stored between extent-store syncs; the early writeback (_Writeback) does the
# flushing meanwhile, so these syncs (which hold the store lock) find little to write
REPLICA_SYNC_BYTES = 256 * 1024 * 1024
REPLICA_WRITEBACK_BYTES = 16 * 1024 * 1024  # bytes stored between early-writeback passes
WRITEBACK_MTIME_SLACK_NS = 1_000_000_000  # a pass also flushes groups changed 1 s before it
# bytes of BLOCKS data received ahead of the store worker: 4 batches of 4 MiB, or one of
# the largest (16 MiB); with the frame in hand this bounds what a connection buffers
STORE_QUEUE_BYTES = 16 * 1024 * 1024
LINGER_S = 2.0  # seconds a failed connection is drained before it is closed (see _linger)


def _block_bytes(msg: Message) -> int:
    """Bytes of block data a BLOCKS or STORED_BLOCKS message carries (0 for others)."""
    if isinstance(msg, Blocks):
        return msg.data.nbytes
    return msg.payload.nbytes if isinstance(msg, StoredBlocks) else 0


def _records(msg: StoredBlocks) -> StoredRecords:
    """The records of a STORED_BLOCKS message, as views of its payload (no copy)."""
    lengths = msg.lengths.astype(np.int64)
    offsets = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    return StoredRecords((msg.flags & STORED_FLAG_LZ4) != 0, lengths, offsets, msg.payload,
                         msg.fingerprints)


class _Writeback:
    """Flushes the extent groups being written, in a helper thread, while a transfer
    is still running: fdatasync of its own read-only descriptor of every group file
    changed since the previous pass. It holds no store lock, so the disk works while
    the store worker keeps writing, and the ExtentStore.sync calls (progressive and at
    COMMIT) find little left to flush. Only a hint: durability still comes from those
    syncs; errors are ignored. `kick()` starts a pass unless one is running."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._since = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nxstore-repl-wb")
        self._pass: concurrent.futures.Future[None] | None = None

    def kick(self) -> None:
        if self._pass is None or self._pass.done():
            self._pass = self._pool.submit(self._flush)

    def _flush(self) -> None:
        started = time.time_ns()
        with contextlib.suppress(OSError), os.scandir(self.directory) as it:
            for e in it:
                if parse_group_name(e.name) is None:
                    continue
                with contextlib.suppress(OSError):  # e.g. a group removed by gc meanwhile
                    if e.stat().st_mtime_ns < self._since:
                        continue
                    fd = os.open(e.path, os.O_RDONLY)
                    try:
                        os.fdatasync(fd)
                    finally:
                        os.close(fd)
        self._since = started - WRITEBACK_MTIME_SLACK_NS


async def _linger(t: StreamTransport, seconds: float = LINGER_S) -> None:
    """After an ERROR: read and discard what the peer still sends until it closes (or
    `seconds` pass). Closing a socket with unread input makes the kernel send RST, which
    can destroy the ERROR in flight; the peer would see "connection reset", not why."""
    reader = getattr(t, "_reader", None)
    if not isinstance(reader, asyncio.StreamReader):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with contextlib.suppress(Exception):
        while await asyncio.wait_for(reader.read(1 << 16), max(0.0, deadline - loop.time())):
            pass


class ReplicationTarget:
    """Serves replication requests into `cluster` (see `nxstore serve`): snapshot
    replication, and what the layers above registered in its TargetProtocols
    (nxstore.replication.protocols), whose `on_start` actions run here."""

    def __init__(self, cluster: Engine) -> None:
        self.cluster = cluster
        self._protocols = target_protocols(cluster)
        self._busy: set[tuple[str, str]] = set()
        # One per target: connections share the store (threads start on first use).
        self._writeback = _Writeback(cluster._ctx.store.directory)
        self._protocols.start()  # e.g. compose the snapshots a crash kept from being composed

    async def handle(self, t: StreamTransport) -> None:
        """Serve one connection until the peer closes it or an error ends it."""
        peer = t.peer
        assert peer is not None  # serve() only hands over authenticated transports
        acks = AckBatcher()
        transfer: Transfer | None = None
        # BLOCKS batches are verified and stored in order by one worker thread while
        # the next frames arrive (hashing and file writes release the GIL), at most
        # STORE_QUEUE_BYTES of them queued; anything other than BLOCKS first waits for
        # all of them, so COMMIT never sees a block still in flight.
        storing: collections.deque[tuple[asyncio.Future[None], int]] = collections.deque()
        queued = 0
        worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nxstore-repl-store")
        loop = asyncio.get_running_loop()
        first = True
        try:
            while True:
                try:
                    msg = await t.recv()
                except ProtocolError as exc:
                    if transfer is not None:
                        log.warning("transfer from %s abandoned, nothing of it applied: %s",
                                    peer.site, exc)
                    if not isinstance(exc, ConnectionClosed):
                        # A damaged frame or garbage: tell the peer why before closing,
                        # so its transfer fails with this error, not "connection closed".
                        if transfer is None:
                            log.warning("connection from %s dropped: %s", peer.site, exc)
                        with contextlib.suppress(NxError, OSError):
                            await t.send(Error.from_exception(exc))
                        await _linger(t)
                    return
                session = self._protocols.session(type(msg)) if first else None
                first = False
                if session is not None:
                    await self._serve_session(session, peer, t, msg)
                    return
                try:
                    incoming = _block_bytes(msg)
                    while storing and (storing[0][0].done() or not incoming
                                       or queued + incoming > STORE_QUEUE_BYTES):
                        fut, nbytes = storing.popleft()
                        queued -= nbytes
                        await fut
                    stage = self._protocols.stage(type(msg))
                    if isinstance(msg, (Blocks, StoredBlocks)):
                        self._check_blocks(msg, transfer, t.version)
                        storing.append((loop.run_in_executor(worker, self._store_blocks, msg,
                                                             transfer), incoming))
                        queued += incoming
                    elif isinstance(msg, MapEntries):
                        self._stage_map(msg, transfer)
                    elif stage is not None:
                        stage(msg, transfer)
                    if isinstance(msg, (Blocks, StoredBlocks, MapEntries)) or stage is not None:
                        ack = acks.done(msg.req_id)
                        if ack:
                            await t.send(ack)
                        continue
                    ack = acks.flush()
                    if ack:
                        await t.send(ack)
                    begun = self._protocols.begun_by(type(msg))
                    committed = self._protocols.committed_by(type(msg))
                    if begun is not None:
                        begun.check_begin(peer.cluster_id, msg)
                    if isinstance(msg, BeginTransfer) or begun is not None:
                        transfer = self._begin(peer.cluster_id, peer.site, msg, transfer,
                                               begun)
                        reply: Message | None = Ready(WIRE_DEFAULT_WINDOW, WIRE_MAX_BATCH,
                                                      req_id=msg.req_id)
                    elif isinstance(msg, Commit):
                        reply = self._commit(peer.cluster_id, msg, transfer)
                        self._release(peer.cluster_id, transfer)
                        transfer = None
                    elif committed is not None:
                        begin = transfer.begin if transfer is not None else None
                        reply = committed.on_commit(peer.cluster_id, msg, transfer)
                        self._release(peer.cluster_id, transfer)
                        transfer = None
                        # Follow-up work (NearSync: compose, once per compose interval)
                        # before the reply, so that remote retention that follows it sees
                        # the composed snapshot.
                        await loop.run_in_executor(worker, committed.after_commit,
                                                   peer.cluster_id, begin)
                    elif isinstance(msg, Abort):
                        self._release(peer.cluster_id, transfer)
                        transfer, reply = None, None
                    elif self._protocols.blocking(type(msg)) or isinstance(msg, VerifyRequest):
                        reply = await asyncio.to_thread(self._query, peer.cluster_id,
                                                        peer.site, msg, t.version)
                    else:
                        reply = self._query(peer.cluster_id, peer.site, msg, t.version)
                    if reply is not None:
                        await t.send(reply)
                except NxError as exc:
                    log.error("replication from %s failed: %s", peer.site, exc)
                    await t.send(Error.from_exception(exc, req_id=msg.req_id))
                    await _linger(t)
                    return
        finally:
            for fut, _ in storing:
                with contextlib.suppress(Exception):
                    await fut
            worker.shutdown(wait=False)
            self._release(peer.cluster_id, transfer)

    @staticmethod
    async def _serve_session(handler: SessionHandler, peer: SiteIdentity, t: StreamTransport,
                             msg: Message) -> None:
        """Hand the connection to a registered session (TargetProtocols.add_session)."""
        try:
            await handler(peer, t, msg)
        except NxError as exc:
            log.error("%s session from %s failed: %s", type(msg).__name__, peer.site, exc)
            with contextlib.suppress(NxError, OSError):
                await t.send(Error.from_exception(exc, req_id=msg.req_id))
            await _linger(t)

    # -- requests ------------------------------------------------------------------
    def _query(self, source: str, site: str, msg: Message, version: int) -> Message:
        if isinstance(msg, GetSnapshots):
            check_site(site, msg.source_site)
            snaps = replica_snapshots(self.cluster, source, msg.vdisk)
            bs = self.cluster.block_size
            return Snapshots(tuple(SnapshotInfo(s.name, s.created_at, s.size, bs) for s in snaps),
                             req_id=msg.req_id)
        if isinstance(msg, HaveFingerprints):
            ids = self.cluster._ctx.store.lookup(msg.fingerprints)
            return Missing(ids == 0, req_id=msg.req_id)
        if isinstance(msg, Prune):
            deleted = prune_replica(self.cluster, source, msg.vdisk, msg.keep)
            return Pruned(tuple(deleted), req_id=msg.req_id)
        if isinstance(msg, PruneSnapshots):
            if version < WIRE_PRUNE_BY_NAME_VERSION:  # a version 2 peer never sends it
                raise ProtocolError(f"PRUNE_SNAPSHOTS needs protocol version "
                                    f"{WIRE_PRUNE_BY_NAME_VERSION}; {site} negotiated {version}")
            deleted = delete_replica_snapshots(self.cluster, source, msg.vdisk, msg.names)
            log.info("deleted replica snapshots of %s:%s asked for by name: %s", site, msg.vdisk,
                     ", ".join(deleted) or "none held")
            return Pruned(tuple(deleted), req_id=msg.req_id)
        if isinstance(msg, VerifyRequest):  # reads the replica: run in a thread (handle)
            return serve_verify(self.cluster, source, site, msg, version)
        if isinstance(msg, Ping):
            return Pong(msg.sent_ns, req_id=msg.req_id)
        handler = self._protocols.query(type(msg))
        if handler is not None:
            return handler(source, site, msg)
        raise ProtocolError(f"unexpected {type(msg).__name__} from {site}")

    def _begin(self, source: str, site: str, msg: TransferBegin, current: Transfer | None,
               kind: TransferKind | None) -> Transfer:
        check_site(site, msg.source_site)
        if current is not None:
            raise ProtocolError("BEGIN_TRANSFER while a transfer is open on this connection")
        if msg.block_size != self.cluster.block_size:
            raise InvalidArgument(
                f"block size {msg.block_size} differs from this cluster's {self.cluster.block_size}")
        self.cluster.container(msg.container)  # NotFound for an unknown target container
        key = (source, msg.vdisk)
        if key in self._busy:
            raise InUse(f"a transfer of {site}:{msg.vdisk} is already running")
        self._busy.add(key)
        return Transfer(msg, kind)

    @staticmethod
    def _stage_map(msg: MapEntries, transfer: Transfer | None) -> None:
        if transfer is None:
            raise ProtocolError("MAP_ENTRIES outside a transfer")
        transfer.indices.append(np.array(msg.indices, dtype=np.uint64))
        transfer.fingerprints.append(np.array(msg.fingerprints, dtype=np.uint8))

    def _check_blocks(self, msg: Blocks | StoredBlocks, transfer: Transfer | None,
                      version: int) -> None:
        what = msg.TYPE.name
        if isinstance(msg, StoredBlocks) and version < WIRE_STORED_BLOCKS_VERSION:
            raise ProtocolError(f"{what} needs protocol version {WIRE_STORED_BLOCKS_VERSION}; "
                                f"the session negotiated {version}")
        if transfer is None:
            raise ProtocolError(f"{what} outside a transfer")
        if msg.block_size != self.cluster.block_size:
            raise ProtocolError(f"{what} of {msg.block_size}-byte blocks")

    def _store_blocks(self, msg: Blocks | StoredBlocks, transfer: Transfer) -> None:
        """Verify a batch against its fingerprints, then store it (worker thread)."""
        if isinstance(msg, Blocks):
            fps, _ = native.fingerprint_blocks(msg.data, msg.block_size)
            bad = np.flatnonzero((fps != msg.fingerprints).any(axis=1))
            if bad.size:
                raise Corruption(f"received block {int(bad[0])} of a BLOCKS batch does not match "
                                 f"its fingerprint ({bad.size} bad): nothing of it was stored")
        container = self.cluster.container(transfer.begin.container)
        # Indexed, so the target finds them by fingerprint, unless the snapshot's container
        # has dedup off (nxstore.replica), for transfers that honour that policy (LWS
        # episodes do not: they name their blocks by fingerprint).
        private = not container.dedup and (transfer.kind is None
                                           or transfer.kind.honours_dedup_policy)
        store = self.cluster._ctx.store
        if isinstance(msg, Blocks):
            ids = store.put_blocks_known(msg.data, msg.fingerprints, dedup=not private,
                                         compress=container.compression,
                                         container_id=container.id)
        else:
            try:  # verified (decompressed, fingerprinted) before anything is stored
                ids = store.put_stored(_records(msg), dedup=not private,
                                       compress=container.compression, container_id=container.id)
            except Corruption as exc:
                raise Corruption(f"received STORED_BLOCKS (request {msg.req_id}): {exc}") from exc
        if private:
            transfer.private.append((np.array(msg.fingerprints, dtype=np.uint8), ids))
        # Flush as data arrives (early writeback without the store lock, a store sync
        # now and then), so COMMIT does not wait for one huge writeback.
        nbytes = _block_bytes(msg)
        transfer.unsynced += nbytes
        transfer.unflushed += nbytes
        if transfer.unflushed >= REPLICA_WRITEBACK_BYTES:
            self._writeback.kick()
            transfer.unflushed = 0
        if transfer.unsynced >= REPLICA_SYNC_BYTES:
            store.sync()
            transfer.unsynced = 0

    def _commit(self, source: str, msg: Commit, transfer: Transfer | None) -> Committed:
        if transfer is None or not isinstance(transfer.begin, BeginTransfer) or (
                transfer.begin.transfer_id != msg.transfer_id):
            raise ProtocolError("COMMIT of a transfer that was not begun on this connection")
        if transfer.entries != msg.map_entries:
            raise ProtocolError(
                f"COMMIT announces {msg.map_entries} map entries, {transfer.entries} arrived")
        b = transfer.begin
        empty = np.zeros(0, dtype=np.uint64)
        snap = apply_snapshot(
            self.cluster, source_cluster=source, source_site=b.source_site, vdisk=b.vdisk,
            container=b.container, snapshot=b.snapshot, created_at=b.created_at, size=b.size,
            base_snapshot=b.base_snapshot,
            indices=np.concatenate(transfer.indices) if transfer.indices else empty,
            fingerprints=(np.concatenate(transfer.fingerprints) if transfer.fingerprints
                          else np.zeros((0, 16), dtype=np.uint8)),
            received=(np.concatenate([p[0] for p in transfer.private]),
                      np.concatenate([p[1] for p in transfer.private])) if transfer.private
            else None,
        )
        log.info("applied replica snapshot %s@%s from %s", snap.vdisk_name, snap.name, b.source_site)
        return Committed(msg.transfer_id, snap.name, req_id=msg.req_id)

    def _release(self, source: str, transfer: Transfer | None) -> None:
        if transfer is not None:
            self._busy.discard((source, transfer.begin.vdisk))
