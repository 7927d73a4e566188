"""The standby's side of the Metro mirror stream: applying an active site's writes.

`register(protocols, engine, accept)` makes METRO_OPEN, first on a connection, hand the
connection to `serve_mirror`. `accept(peer_cluster, peer_site, open_msg)` (the Metro
controller's: it checks pair, epoch and role) returns a `Grant`: the replica vDisks by
index in METRO_OPEN, a `check` run before each batch is applied and each barrier confirmed
(it raises, e.g. MetroFenced, once the session's epoch is no longer this site's: fencing is
per barrier, not only at open) and an `ended` hook; or it raises NxError, which goes back
as ERROR. Each replica must be read-only and of the size METRO_OPEN states.

A session has three parts: the receiver (on the event loop) reads METRO_WRITES and
METRO_FLUSH and queues them, at most STANDBY_QUEUE_BYTES of write data ahead, and answers
PING at once; the applier thread applies the writes in order with
`VDisk.apply_mirrored_write/trim` and, per barrier (METRO_FLUSH, or METRO_WRITES carrying
one), syncs the replicas written since the previous barrier once (group commit: `VDisk.flush`, one OpLog sync for them all); the
replier (on the event loop) sends what the applier hands it: ACK every WIRE_ACK_EVERY
batches (credit), METRO_FLUSHED once a barrier is durable. One thread hop per message, none
back to the event loop but for replies. Any failure ends the session with ERROR; nothing
after the failed write is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from ..constants import WIRE_METRO_BARRIER_VERSION
from ..errors import ConnectionClosed, InvalidArgument, NxError, ProtocolError
from ..replication.messages import (
    Message,
    MetroAccept,
    MetroFlush,
    MetroFlushed,
    MetroOpen,
    MetroWrites,
    Ping,
    Pong,
)
from ..replication.window import AckBatcher

if TYPE_CHECKING:
    from ..replication.auth import SiteIdentity
    from ..replication.protocols import TargetProtocols
    from ..replication.transport import StreamTransport
    from ..store.engine import Engine
    from ..store.vdisk import VDisk

log = logging.getLogger(__name__)

STANDBY_QUEUE_BYTES = 16 * 1024 * 1024  # write bytes received ahead of the applier



def _always() -> None:
    """A grant's default check and end hook: nothing to check, nothing to tell."""


@dataclass(frozen=True)
class Grant:
    """What `accept` grants a mirror session (module docstring)."""

    replicas: Mapping[int, VDisk]  # by index in METRO_OPEN
    check: Callable[[], None] = _always  # raises NxError once the session may not go on
    ended: Callable[[], None] = _always  # the session is over (called once)


# accept(peer_cluster_id, peer_site, open message) -> Grant
Accept = Callable[[str, str, MetroOpen], Grant]


def register(protocols: TargetProtocols, engine: Engine, accept: Accept) -> None:
    """Serve Metro mirror sessions into `engine` on its replication targets (module
    docstring)."""
    protocols.add_session(MetroOpen, partial(serve_mirror, engine, accept))


async def serve_mirror(engine: Engine, accept: Accept, peer: SiteIdentity,
                       t: StreamTransport, msg: Message) -> None:
    """One mirror session, until the active site closes it. Raises NxError (the target sends
    it as ERROR and ends the connection): what `accept` raised, InvalidArgument (a replica
    is writable or of another size), ProtocolError, what applying a write raised."""
    assert isinstance(msg, MetroOpen)
    grant = await asyncio.to_thread(accept, peer.cluster_id, peer.site, msg)
    try:
        replicas = _checked(grant, peer, msg)
        await t.send(MetroAccept(msg.epoch, req_id=msg.req_id))
        log.info("mirror session from site %s accepted: pair %s, epoch %d, %d vDisk(s)",
                 peer.site, msg.pair_id, msg.epoch, len(replicas))
        await _Session(t, _Applier(replicas, grant.check)).run()
    finally:
        grant.ended()
    log.info("mirror session from site %s (pair %s) ended", peer.site, msg.pair_id)


def _checked(grant: Grant, peer: SiteIdentity, msg: MetroOpen) -> list[VDisk]:
    """The grant's replicas as a list by index, each a read-only vDisk of the source's size."""
    found = dict(grant.replicas)
    if sorted(found) != list(range(len(msg.vdisks))):
        raise InvalidArgument(f"mirror session: replicas for indexes {sorted(found)} of "
                              f"{len(msg.vdisks)} vDisks")
    for i, v in enumerate(msg.vdisks):
        vd = found[i]
        if not vd.read_only:
            raise InvalidArgument(f"vDisk {vd.name!r} is writable: it cannot mirror {v.source}")
        if vd.size != v.size:
            raise InvalidArgument(f"replica {vd.name!r} is {vd.size} bytes, {v.source} at "
                                  f"{peer.site} is {v.size}")
    return [found[i] for i in range(len(msg.vdisks))]


class _Applier:
    """Applies write batches to the replicas and syncs them per barrier (applier thread)."""

    def __init__(self, replicas: list[VDisk], check: Callable[[], None]) -> None:
        self.replicas = replicas
        self.check = check
        self.touched: set[int] = set()  # replicas written since the last barrier

    def apply(self, msg: MetroWrites) -> None:
        self.check()
        data = memoryview(msg.data)
        pos = 0
        for i, offset, length, trim in zip(msg.vdisks.tolist(), msg.offsets.tolist(),
                                           msg.lengths.tolist(), msg.trims.tolist(), strict=True):
            vd = self.replicas[i]
            if trim:
                vd.apply_mirrored_trim(offset, length)
            else:
                vd.apply_mirrored_write(offset, data[pos: pos + length])
                pos += length
            self.touched.add(i)

    def sync(self) -> None:
        # One OpLog sync serves them all: after the first, the others find it done.
        for i in sorted(self.touched):
            self.replicas[i].flush()
        self.touched.clear()
        self.check()  # durable, but confirmed only while the session's epoch holds


class _Session:
    """One accepted session: receiver, applier thread and replier (module docstring)."""

    def __init__(self, t: StreamTransport, applier: _Applier) -> None:
        self.t = t
        self.applier = applier
        self.loop = asyncio.get_running_loop()
        self.jobs: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        # the applier's replies, a failure, or None once it stopped
        self.replies: asyncio.Queue[Message | BaseException | None] = asyncio.Queue()
        self.lock = threading.Lock()  # guards queued and waiting
        self.queued = 0  # write bytes queued for the applier
        self.waiting = False  # the receiver waits for `room`
        self.room = asyncio.Event()
        self.over = False  # the session ended: the applier stops at the next message
        self.thread = threading.Thread(target=self._apply_all, daemon=True,
                                       name="nxstore-metro-apply")

    async def run(self) -> None:
        self.thread.start()
        receiving = asyncio.ensure_future(self._receive())
        replying = asyncio.ensure_future(self._reply())
        try:
            await asyncio.wait({receiving, replying}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            receiving.cancel()  # the replier failed (or the session is cancelled)
            self.over = True  # the applier drops what is still queued (none of it confirmed)
            self.jobs.put(None)
            results = await asyncio.gather(receiving, replying, return_exceptions=True)
            await self._join_applier()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(
                    result, (ConnectionClosed, asyncio.CancelledError)):
                raise result

    async def _join_applier(self) -> None:
        """Wait for the applier thread to stop, even if cancelled meanwhile (then raise
        CancelledError afterwards): nothing may run on the replicas once a session is over."""
        joined = asyncio.ensure_future(asyncio.to_thread(self.thread.join))
        cancelled = False
        while not joined.done():
            try:
                await asyncio.shield(joined)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    async def _receive(self) -> None:
        while True:
            try:
                msg = await self.t.recv()
            except ConnectionClosed:
                return
            if isinstance(msg, Ping):
                await self.t.send(Pong(msg.sent_ns, req_id=msg.req_id))
                continue
            if isinstance(msg, MetroWrites):
                n = len(self.applier.replicas)
                if msg.vdisks.size and int(msg.vdisks.max()) >= n:
                    raise ProtocolError(f"METRO_WRITES names vDisk {int(msg.vdisks.max())} of {n}")
                if msg.barrier and self.t.version < WIRE_METRO_BARRIER_VERSION:
                    raise ProtocolError(f"a barrier in METRO_WRITES needs protocol version "
                                        f"{WIRE_METRO_BARRIER_VERSION}; the session "
                                        f"negotiated {self.t.version}")
            elif not isinstance(msg, MetroFlush):
                raise ProtocolError(f"unexpected {type(msg).__name__} in a mirror session")
            nbytes = msg.nbytes if isinstance(msg, MetroWrites) else 0
            with self.lock:
                self.queued += nbytes
                full = self.waiting = self.queued > STANDBY_QUEUE_BYTES
            if full:
                self.room.clear()
            self.jobs.put(msg)
            if full:
                await self.room.wait()

    async def _reply(self) -> None:
        while (item := await self.replies.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            await self.t.send(item)

    def _apply_all(self) -> None:
        """The applier thread: every queued message in order, until None or a failure."""
        acks = AckBatcher()
        try:
            while (msg := self.jobs.get()) is not None and not self.over:
                barrier = msg.barrier
                if isinstance(msg, MetroWrites):
                    self.applier.apply(msg)
                    self._applied(msg.nbytes)
                    if not barrier:
                        if (ack := acks.done(msg.req_id)) is not None:
                            self._post(ack)  # credit only: the window is larger
                        continue
                self.applier.sync()
                if (ack := acks.flush()) is not None:
                    self._post(ack)
                self._post(MetroFlushed(barrier, req_id=msg.req_id))
        except BaseException as exc:  # noqa: BLE001 - the replier raises it: ERROR, session over
            if not isinstance(exc, NxError):
                log.error("mirror applier failed", exc_info=exc)
                exc = NxError(f"applying mirrored writes failed: {exc!r}")
            self._post(exc)
        finally:
            self._post(None)

    def _applied(self, nbytes: int) -> None:
        with self.lock:
            self.queued -= nbytes
            wake = self.waiting and self.queued <= STANDBY_QUEUE_BYTES
            if wake:
                self.waiting = False
        if wake:
            self.loop.call_soon_threadsafe(self.room.set)

    def _post(self, item: Message | BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self.loop.call_soon_threadsafe(self.replies.put_nowait, item)
