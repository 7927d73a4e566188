"""The source side of replication: plan, dedup over the wire, ship, commit.

For each snapshot: ask the target which replica snapshots it holds and pick
the newest one both sides have (same name and creation time) as the base; the
blocks to ship are the ones that differ from it, with the fingerprints the
extent store already keeps (no re-hashing). The target is asked which
fingerprints it lacks, only those blocks are read (and verified) and sent in
BLOCKS batches, pipelined under the credit window; then the map entries and a
COMMIT. A transfer that is cut off and started again finds its blocks stored
at the target and no longer missing: resume costs only the map.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xxhash

from ..constants import (
    WIRE_BLOCKS_BATCH_BYTES,
    WIRE_MAX_BATCH,
    WIRE_PRUNE_BY_NAME_VERSION,
    WIRE_STORED_BLOCKS_VERSION,
)
from ..errors import (
    AuthenticationError,
    ConnectionClosed,
    Corruption,
    InvalidArgument,
    NxError,
    ProtocolError,
    VersionMismatch,
)
from ..store.extent_store import ExtentCorruption, ExtentStore
from ..store.snapshot import Snapshot, block_delta
from ..store.vdisk import check_int
from .auth import SiteIdentity
from .messages import (
    Ack,
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
    Prune,
    Pruned,
    PruneSnapshots,
    Ready,
    SnapshotInfo,
    Snapshots,
    StoredBlocks,
)
from .messages.replication import STORED_FLAG_LZ4
from .sites import RemoteSite, get_site
from .transport import StreamTransport, connect
from .window import SendWindow

if TYPE_CHECKING:
    from ..store.engine import Engine

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int, int], None]  # (phase, done, total, bytes_on_wire)


@dataclass(frozen=True)
class ReplicationResult:
    """What one `Cluster.replicate` call did (summed over a group's members)."""

    blocks_total: int      # blocks that differ from the base (what had to be described)
    blocks_sent: int       # blocks whose bytes crossed the wire
    blocks_deduped: int    # changed nonzero blocks the target already held
    bytes_on_wire: int     # both directions, frame headers included
    seconds: float
    base_snapshot: str | None  # the common snapshot the (last) transfer was based on


class Session:
    """One authenticated connection: requests with replies, and pipelined data
    requests acknowledged in batches. One reader task routes every reply."""

    def __init__(self, t: StreamTransport) -> None:
        self.t = t
        self.window = SendWindow()
        self._waiters: dict[int, asyncio.Future[Message]] = {}
        self.peer_error: NxError | None = None  # what the peer reported in an ERROR
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.t.recv()
                if isinstance(msg, Ack):
                    self.window.ack(msg.upto, msg.window)
                    continue
                waiter = self._waiters.pop(msg.req_id, None)
                if isinstance(msg, Error):
                    self.peer_error = msg.to_exception()
                    if waiter is not None and not waiter.done():
                        waiter.set_exception(self.peer_error)  # the request it answers
                    self._fail(self.peer_error)
                    return
                if waiter is None:
                    raise ProtocolError(f"unexpected {type(msg).__name__} (req {msg.req_id})")
                self.window.complete(msg.req_id)
                waiter.set_result(msg)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            self._fail(exc if isinstance(exc, Exception) else ProtocolError("connection closed"))

    def _fail(self, exc: BaseException) -> None:
        self.window.fail(exc)
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(exc)
        self._waiters.clear()

    async def explain(self, exc: BaseException) -> BaseException:
        """The error the peer reported before the connection broke (a peer that finds
        a damaged frame sends ERROR, then closes: a send of ours may fail first), else
        `exc`. Waits briefly for the reader to take in what is still buffered."""
        if self.peer_error is None and not self._reader.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
        return self.peer_error or exc

    async def ask(self, make: Callable[[int], Message]) -> asyncio.Future[Message]:
        """Send a request (built with its req_id); return the future of its reply."""
        rid = await self.window.acquire()
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        await self.t.send(make(rid))
        return fut

    async def request(self, make: Callable[[int], Message], expect: type[Message]) -> Message:
        reply = await (await self.ask(make))
        if not isinstance(reply, expect):
            raise ProtocolError(f"expected {expect.__name__}, got {type(reply).__name__}")
        return reply

    async def post(self, make: Callable[[int], Message]) -> None:
        """Send a data request answered by a batched ACK."""
        rid = await self.window.acquire()
        await self.t.send(make(rid))

    def require_version(self, site: str, version: int, what: str, outcome: str = "") -> None:
        """Raise VersionMismatch unless the session speaks at least `version`: "`what` needs
        version N: upgrade nxstore there (`outcome`)"."""
        if self.t.version < version:
            after = f" ({outcome})" if outcome else ""
            raise VersionMismatch(f"site {site!r} speaks replication protocol version "
                                  f"{self.t.version}; {what} needs version {version}: "
                                  f"upgrade nxstore there{after}")

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.t.close()


async def open_transport(cluster: Engine, site: RemoteSite,
                         bandwidth_limit: float | None = None) -> StreamTransport:
    """An authenticated connection to `site`. Raises what `connect` raises; a failed
    challenge as AuthenticationError naming the site as registered here and its address."""
    host, port = site.host_port()
    try:
        return await connect(host, port, identity=SiteIdentity(cluster.id, cluster.site_name),
                             secret=site.secret, bandwidth_limit=bandwidth_limit,
                             ssl=site.ssl_context())
    except AuthenticationError as exc:
        raise AuthenticationError(f"authentication with site {site.name!r} at {host}:{port} "
                                  "failed: the shared secrets differ") from exc


async def open_session(cluster: Engine, site: RemoteSite,
                       bandwidth_limit: float | None = None) -> Session:
    """An authenticated session with `site` (`open_transport`)."""
    return Session(await open_transport(cluster, site, bandwidth_limit))


def _transfer_id(cluster: Engine, snap: Snapshot) -> bytes:
    # Deterministic, so a retried transfer of the same snapshot is the same transfer.
    key = f"{cluster.id}/{snap.vdisk_name}@{snap.name}/{snap.created_at!r}"
    return xxhash.xxh3_128_digest(key.encode())


async def send_snapshot(cluster: Engine, s: Session, snap: Snapshot, site: RemoteSite,
                        progress: Progress | None) -> ReplicationResult:
    """Replicate one snapshot over an open session."""
    started = time.perf_counter()
    wire0 = s.t.bytes_sent + s.t.bytes_received
    vd = cluster.vdisk(snap.vdisk_name)
    container = site.vstore_mapping.get(vd.container, vd.container)
    held = await _held(cluster, s, snap.vdisk_name, container)
    remote = {(info.name, info.created_at) for info in held}
    if (snap.name, snap.created_at) in remote:
        return ReplicationResult(0, 0, 0, s.t.bytes_sent + s.t.bytes_received - wire0,
                                 time.perf_counter() - started, snap.name)
    base = _common_base(vd.snapshots(), snap, remote)
    indices, ids = block_delta(cluster._ctx, base, snap.layer_id)
    fps = cluster._ctx.store.fingerprints(ids)
    fps[ids == 0] = 0
    tid = _transfer_id(cluster, snap)
    ready = await s.request(lambda r: BeginTransfer(
        tid, cluster.site_name, snap.vdisk_name, container, snap.name, snap.created_at,
        snap.size, cluster.block_size, base.name if base else None, req_id=r), Ready)
    s.window.window = max(1, ready.window)
    batch = max(1, min(ready.max_batch, WIRE_MAX_BATCH))
    wire = lambda: s.t.bytes_sent + s.t.bytes_received - wire0  # noqa: E731
    # The block batches sent last: a block the target refuses is among them (it has at most
    # a credit window of data requests unacknowledged), re-read and verified here.
    recent: collections.deque[np.ndarray] = collections.deque(maxlen=2 * s.window.window + 2)
    try:
        sent, deduped = await _ship_missing(cluster, s, ids, fps, batch, progress, wire, recent)
        for lo in range(0, indices.size, batch):
            hi = lo + batch
            await s.post(lambda r, lo=lo, hi=hi: MapEntries(indices[lo:hi], fps[lo:hi], req_id=r))
        if progress:
            progress("map", indices.size, indices.size, wire())
        # No wait for the last ACK: the target acknowledges everything before it answers COMMIT.
        done = await s.request(lambda r: Commit(tid, int(indices.size), req_id=r), Committed)
    except (Corruption, ConnectionClosed) as exc:
        reported = await s.explain(exc) if isinstance(exc, ConnectionClosed) else exc
        if s.t.version >= WIRE_STORED_BLOCKS_VERSION and isinstance(reported, Corruption):
            # the source no longer decompresses what it sends: name the damaged extent here
            await asyncio.to_thread(_verify_sent, cluster._ctx.store, ids, recent, reported)
        raise
    log.info("replicated %s@%s to %s: %d blocks changed, %d sent, %d deduped, %d bytes on wire",
             snap.vdisk_name, done.snapshot, site.name, indices.size, sent, deduped, wire())
    if progress:
        progress("commit", 1, 1, wire())
    return ReplicationResult(int(indices.size), sent, deduped, wire(),
                             time.perf_counter() - started, base.name if base else None)


async def _held(cluster: Engine, s: Session, vdisk: str, container: str
                ) -> tuple[SnapshotInfo, ...]:
    """The replica snapshots of `vdisk` the target holds, oldest first."""
    reply = await s.request(
        lambda r: GetSnapshots(cluster.site_name, vdisk, container, req_id=r), Snapshots)
    return reply.snapshots


def _common_base(local: list[Snapshot], snap: Snapshot,
                 remote: set[tuple[str, float]]) -> Snapshot | None:
    """The newest snapshot older than `snap` that the target also holds."""
    older = [x for x in local if x.id != snap.id and x.created_at <= snap.created_at]
    both = [x for x in older if (x.name, x.created_at) in remote]
    return max(both, key=lambda x: (x.created_at, x.id)) if both else None


async def _ship_missing(cluster: Engine, s: Session, ids: np.ndarray, fps: np.ndarray,
                        batch: int, progress: Progress | None, wire: Callable[[], int],
                        recent: collections.deque[np.ndarray]) -> tuple[int, int]:
    """Send the blocks the target lacks; return (blocks sent, blocks deduped). The
    batches sent are appended to `recent` (indices into ids).

    Nothing waits for a round trip: the HAVE_FINGERPRINTS of the next chunk is sent
    before the blocks of the current one (its MISSING is there when needed), and the
    next batch is read in a worker thread while the current one is being sent. Batches
    carry about WIRE_BLOCKS_BATCH_BYTES of blocks each: STORED_BLOCKS of the records as
    stored (headers checked here, payloads verified by the target) on a protocol
    version 4 session, else BLOCKS of raw blocks read and verified here."""
    nonzero = np.flatnonzero(ids != 0)
    # One copy of each distinct block: equal fingerprints need to travel once.
    _, first = np.unique(fps[nonzero].view("V16").ravel(), return_index=True)
    unique = nonzero[np.sort(first)]
    total, sent = unique.size, 0
    block_size = cluster.block_size
    per_frame = max(1, min(batch, WIRE_BLOCKS_BATCH_BYTES // block_size))
    store = cluster._ctx.store
    loop = asyncio.get_running_loop()
    stored = s.t.version >= WIRE_STORED_BLOCKS_VERSION

    def read(part: np.ndarray) -> Callable[[int], Message]:
        if stored:
            rec = store.read_stored(ids[part])  # headers checked; not decompressed
            flags = rec.compressed.view(np.uint8) * np.uint8(STORED_FLAG_LZ4)
            return lambda r: StoredBlocks(block_size, fps[part], flags, rec.lengths,
                                          rec.payload, req_id=r)
        data = np.empty(part.size * block_size, dtype=np.uint8)
        store.read_blocks(ids[part], data)  # verified read
        return lambda r: Blocks(block_size, fps[part], data, req_id=r)

    def ask_missing(lo: int) -> Awaitable[asyncio.Future[Message]]:
        chunk = unique[lo: lo + batch]
        return s.ask(lambda r: HaveFingerprints(fps[chunk], req_id=r))

    pending: asyncio.Future[Callable[[int], Message]] | None = None
    nxt: asyncio.Future[Message] | None = None
    try:
        nxt = await ask_missing(0) if total else None
        for lo in range(0, total, batch):
            chunk = unique[lo: lo + batch]
            assert nxt is not None
            reply = await nxt
            if not isinstance(reply, Missing):
                raise ProtocolError(f"expected Missing, got {type(reply).__name__}")
            nxt = await ask_missing(lo + batch) if lo + batch < total else None
            lacking = chunk[np.asarray(reply.missing, dtype=bool)]
            parts = [lacking[b: b + per_frame] for b in range(0, lacking.size, per_frame)]
            if parts:
                pending = loop.run_in_executor(None, read, parts[0])
            for i, part in enumerate(parts):
                assert pending is not None
                make = await pending
                pending = (loop.run_in_executor(None, read, parts[i + 1])
                           if i + 1 < len(parts) else None)
                recent.append(part)
                await s.post(make)
                sent += part.size
                if progress and i + 1 < len(parts):  # per frame: a caller may stop it sooner
                    progress("blocks", lo + chunk.size * (i + 1) // len(parts), total, wire())
            if progress:
                progress("blocks", min(lo + batch, total), total, wire())
    finally:
        if nxt is not None:  # not awaited: a failure set on it later is not an error
            nxt.add_done_callback(lambda f: f.cancelled() or f.exception())
        if pending is not None:  # a failed send: let the read finish before returning
            with contextlib.suppress(Exception):
                await pending
    return sent, int(nonzero.size - sent)


def _verify_sent(store: ExtentStore, ids: np.ndarray, parts: Iterable[np.ndarray],
                 reported: Corruption) -> None:
    """The target refused a block (`reported`): read the parts sent lately with full
    verification and raise the ExtentCorruption that names the damaged extent here (group
    file and offset), chained to the target's report. Returns if they all verify."""
    for part in parts:
        data = np.empty(part.size * store.block_size, dtype=np.uint8)
        try:
            store.read_blocks(ids[part], data)
        except ExtentCorruption as local:
            raise ExtentCorruption(f"{local} (the replication target refused it: {reported})",
                                   local.extent_id, None, local.group, local.offset) from reported


async def replicate(cluster: Engine, snaps: list[Snapshot], site: RemoteSite,
                    progress: Progress | None, bandwidth_limit: float | None) -> ReplicationResult:
    """Replicate `snaps` (one, or a consistency group) to `site` over one connection."""
    s = await open_session(cluster, site, bandwidth_limit)
    try:
        results = [await send_snapshot(cluster, s, snap, site, progress) for snap in snaps]
    except ConnectionClosed as exc:
        reported = await s.explain(exc)
        if reported is exc:
            raise
        raise reported from exc
    finally:
        await s.close()
    return ReplicationResult(
        sum(r.blocks_total for r in results), sum(r.blocks_sent for r in results),
        sum(r.blocks_deduped for r in results), sum(r.bytes_on_wire for r in results),
        sum(r.seconds for r in results), results[-1].base_snapshot if results else None)


async def prune_remote(cluster: Engine, site: RemoteSite, vdisk: str, keep: int) -> list[str]:
    """Ask `site` to keep only the newest `keep` replica snapshots of `vdisk`."""
    s = await open_session(cluster, site)
    try:
        reply = await s.request(lambda r: Prune(vdisk, keep, req_id=r), Pruned)
    finally:
        await s.close()
    return list(reply.deleted)


async def prune_named(cluster: Engine, site: RemoteSite,
                      names: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """Ask `site` to delete, per vDisk, the replica snapshots named (one connection)."""
    s = await open_session(cluster, site)
    try:
        s.require_version(site.name, WIRE_PRUNE_BY_NAME_VERSION,
                          "deleting replica snapshots by name", "nothing was deleted")
        deleted = {}
        for vdisk, doomed in names.items():
            for lo in range(0, len(doomed), WIRE_MAX_BATCH):
                reply = await s.request(lambda r, v=vdisk, part=doomed[lo:lo + WIRE_MAX_BATCH]:
                                        PruneSnapshots(v, part, req_id=r), Pruned)
                deleted.setdefault(vdisk, []).extend(reply.deleted)
    finally:
        await s.close()
    return deleted


async def held_names(cluster: Engine, site: RemoteSite, vdisks: Sequence[str]
                     ) -> dict[str, list[str]]:
    """The names of the replica snapshots `site` holds of each of `vdisks` (one connection)."""
    s = await open_session(cluster, site)
    try:
        out = {}
        for name in vdisks:
            container = cluster.vdisk(name).container
            held = await _held(cluster, s, name, site.vstore_mapping.get(container, container))
            out[name] = [info.name for info in held]
    finally:
        await s.close()
    return out


def replicate_snapshots(engine: Engine, snapshot_or_group: Snapshot | Sequence[Snapshot],
                        site: str, progress: Progress | None = None,
                        bandwidth_limit: float | None = None) -> ReplicationResult:
    """Ship a snapshot (or a consistency group's snapshots) to remote `site`.

    Incremental from the newest snapshot both sides hold, else a full seed; only blocks the
    target lacks cross the wire (lz4 where it pays, every frame authenticated, every block
    verified by the target). The target applies the snapshot atomically; a cut-off transfer
    can simply be run again and sends only what the target does not hold yet.
    progress(phase, done, total, bytes_on_wire). Raises InvalidArgument, NotFound (site),
    AuthenticationError, ProtocolError, Corruption, NxError (connection)."""
    snaps = [snapshot_or_group] if isinstance(snapshot_or_group, Snapshot) else list(
        snapshot_or_group)
    if not snaps or not all(isinstance(s, Snapshot) for s in snaps):
        raise InvalidArgument("replicate needs a Snapshot or a list of Snapshots")
    remote = get_site(engine.ctx.catalog, site)
    result = run(replicate(engine, snaps, remote, progress, bandwidth_limit))
    assert isinstance(result, ReplicationResult)
    return result


def prune_remote_snapshots(engine: Engine, site: str, vdisk_name: str, keep: int) -> list[str]:
    """Keep only the newest `keep` replica snapshots of `vdisk_name` at `site`; returns the
    names deleted there (remote retention). Raises InvalidArgument, NotFound (site), NxError."""
    keep = check_int("keep", keep)
    if keep < 1:
        raise InvalidArgument(f"keep must be a positive int, not {keep!r}")
    deleted = run(prune_remote(engine, get_site(engine.ctx.catalog, site), vdisk_name, keep))
    assert isinstance(deleted, list)
    return deleted


def delete_remote_snapshots(engine: Engine, site: str, names: dict[str, Sequence[str]]
                            ) -> dict[str, list[str]]:
    """Delete, at `site`, the replica snapshots of each vDisk named in `names` ({vDisk name:
    snapshot names}; names the site does not hold are skipped, so a retry is harmless);
    return {vDisk name: names deleted there}. Remote retention that counts only the
    snapshots it chose (nxstore.protection.schedule). The site refuses to delete its
    newest replica snapshot of a vDisk, the base of the next incremental transfer (InUse:
    nothing of that vDisk or of those after it in `names` deleted). Raises InvalidArgument, NotFound (site), InUse,
    VersionMismatch (the site runs a build older than protocol version 3), NxError."""
    clean: dict[str, tuple[str, ...]] = {}
    for vdisk, doomed in names.items():
        if not isinstance(vdisk, str) or isinstance(doomed, str) or not all(
                isinstance(n, str) for n in doomed):
            raise InvalidArgument("names maps vDisk names to lists of snapshot names")
        if doomed:
            clean[vdisk] = tuple(doomed)
    if not clean:
        return {}
    deleted = run(prune_named(engine, get_site(engine.ctx.catalog, site), clean))
    assert isinstance(deleted, dict)
    return deleted


def remote_snapshot_names(engine: Engine, site: str, vdisks: Sequence[str]
                          ) -> dict[str, list[str]]:
    """{vDisk name: names of the replica snapshots `site` holds of it, oldest first} for
    each of `vdisks` (local vDisks: NotFound otherwise; [] where the site holds no replica).
    Raises NotFound (site, vDisk), NxError."""
    if not vdisks:
        return {}
    held = run(held_names(engine, get_site(engine.ctx.catalog, site), list(vdisks)))
    assert isinstance(held, dict)
    return held


def run(coro: object) -> object:
    """Run a replication coroutine from synchronous code; NxError passes through."""
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except NxError:
        raise
    except OSError as exc:
        raise NxError(f"replication connection failed: {exc}") from exc
