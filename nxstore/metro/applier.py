"""The standby's side of the Metro mirror stream: applying an active site's writes.

`register(protocols, engine, accept)` makes METRO_OPEN, first on a connection, hand the
connection to `serve_mirror`. `accept(peer_cluster, peer_site, open_msg)` (the Metro
controller's: it checks pair, epoch and role) returns a `Grant`: the replica vDisks by
index in METRO_OPEN, a `check` run before each batch is applied and each barrier confirmed
(it raises, e.g. MetroFenced, once the session's epoch is no longer this site's: fencing is
per barrier, not only at open) and an `ended` hook; or it raises NxError, which goes back
as ERROR. Each replica must be read-only and of the size METRO_OPEN states.

Once accepted, the connection leaves the event loop (`transport.detach`: the same frames,
keys and counters on a blocking socket; a TLS connection stays on the loop behind a
`LoopStream`) and one thread serves the session: it reads METRO_WRITES and METRO_FLUSH in
order, applies the writes with `VDisk.apply_mirrored_write/trim`, answers PING, and per
barrier (METRO_FLUSH, or METRO_WRITES carrying one) syncs the replicas written since the
previous barrier once (group commit: `VDisk.flush`, one OpLog sync for them all) and sends
METRO_FLUSHED, in the same write as the pending ACK; ACK (credit) every WIRE_ACK_EVERY
batches otherwise. Barriers that follow each other closely share a sync: while more of the
stream has arrived already, it is applied first (up to STANDBY_MERGE_BYTES), then one sync
confirms every barrier applied. No thread hop between the socket and the disk: while the
thread applies or syncs, what the active site sends next waits in the kernel's buffers
(back-pressure: the active site's sends block once they are full). Any failure ends the
session with ERROR; nothing after the failed write is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from ..constants import WIRE_METRO_BARRIER_VERSION
from ..errors import ConnectionClosed, InvalidArgument, NxError, ProtocolError
from ..replication.messages import (
    Error,
    Message,
    MetroAccept,
    MetroFlush,
    MetroFlushed,
    MetroOpen,
    MetroWrites,
    Ping,
    Pong,
)
from ..replication.target import LINGER_S
from ..replication.transport import FrameStream, LoopStream, SocketStream, detach
from ..replication.window import AckBatcher

if TYPE_CHECKING:
    from ..replication.auth import SiteIdentity
    from ..replication.protocols import TargetProtocols
    from ..replication.transport import StreamTransport
    from ..store.engine import Engine
    from ..store.vdisk import VDisk

log = logging.getLogger(__name__)

STANDBY_MERGE_BYTES = 8 * 1024 * 1024  # write bytes applied at most before a pending barrier's sync


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
        try:
            stream = await detach(t) or LoopStream(t, asyncio.get_running_loop())
        except ConnectionClosed:
            return  # the active site went away at once
        log.info("mirror session from site %s accepted: pair %s, epoch %d, %d vDisk(s)%s",
                 peer.site, msg.pair_id, msg.epoch, len(replicas),
                 "" if isinstance(stream, SocketStream) else " (through the event loop)")
        session = _Session(stream, _Applier(replicas, grant.check), msg.req_id)
        await session.run()
    finally:
        grant.ended()
    if session.failed is not None:
        log.error("mirror session from site %s (pair %s) failed: %s", peer.site, msg.pair_id,
                  session.failed)
    else:
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
    """One accepted session, served by a thread of its own (module docstring)."""

    def __init__(self, stream: FrameStream, applier: _Applier, open_req: int) -> None:
        self.stream = stream
        self.applier = applier
        self.open_req = open_req  # METRO_OPEN's request id: an ERROR answers it
        self.failed: NxError | None = None  # what ended the session, sent as ERROR

    async def run(self) -> None:
        """Serve until the active site closes the session or it fails (`failed`). If
        cancelled, breaks the connection and still waits for the thread: nothing may run on
        the replicas once a session is over."""
        loop = asyncio.get_running_loop()
        over = loop.create_future()

        def serve() -> None:
            try:
                self._serve()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(lambda: over.done() or over.set_result(None))

        thread = threading.Thread(target=serve, daemon=True, name="nxstore-metro-standby")
        thread.start()
        cancelled = False
        while not over.done():
            try:
                await asyncio.shield(over)
            except asyncio.CancelledError:
                cancelled = True
                self.stream.abort()
        if cancelled:
            raise asyncio.CancelledError

    def _serve(self) -> None:
        """The session's thread: every message in order, until the active site closes the
        connection or something fails (then ERROR to the active site)."""
        acks = AckBatcher()
        stream = self.stream
        done: list[MetroFlushed] = []  # barriers applied, to confirm after the next sync
        merged = 0  # write bytes applied since the first of them
        try:
            while True:
                # Barriers merge: while more of the stream is already here (an active site
                # with many flushers keeps two barriers in flight), apply it first, then one
                # sync confirms them all. Bounded by STANDBY_MERGE_BYTES.
                if done and (merged >= STANDBY_MERGE_BYTES or not stream.readable()):
                    self.applier.sync()
                    ack = acks.flush()
                    stream.send(*((ack, *done) if ack is not None else done))
                    done, merged = [], 0
                try:
                    msg = stream.recv()
                except ConnectionClosed:
                    return
                if isinstance(msg, Ping):
                    stream.send(Pong(msg.sent_ns, req_id=msg.req_id))
                    continue
                if isinstance(msg, MetroWrites):
                    n = len(self.applier.replicas)
                    if msg.vdisks.size and int(msg.vdisks.max()) >= n:
                        raise ProtocolError(f"METRO_WRITES names vDisk {int(msg.vdisks.max())} "
                                            f"of {n}")
                    if msg.barrier and stream.version < WIRE_METRO_BARRIER_VERSION:
                        raise ProtocolError(f"a barrier in METRO_WRITES needs protocol version "
                                            f"{WIRE_METRO_BARRIER_VERSION}; the session "
                                            f"negotiated {stream.version}")
                    self.applier.apply(msg)
                    if done:
                        merged += msg.nbytes
                    if not msg.barrier:
                        if (ack := acks.done(msg.req_id)) is not None:
                            stream.send(ack)  # credit only: the window is larger
                        continue
                elif not isinstance(msg, MetroFlush):
                    raise ProtocolError(f"unexpected {type(msg).__name__} in a mirror session")
                done.append(MetroFlushed(msg.barrier, req_id=msg.req_id))
        except ConnectionClosed:
            return  # the active site went away while we answered
        except BaseException as exc:  # noqa: BLE001 - sent as ERROR, the session is over
            if not isinstance(exc, NxError):
                log.error("mirror applier failed", exc_info=exc)
                exc = NxError(f"applying mirrored writes failed: {exc!r}")
            self.failed = exc
            with contextlib.suppress(NxError, OSError):
                stream.send(Error.from_exception(exc, req_id=self.open_req))
                stream.linger(LINGER_S)
        finally:
            stream.close()
