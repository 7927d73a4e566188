"""The Metro mirror stream, active side: the synchronous link to the standby.

A `MirrorLink` is one authenticated replication connection to the standby
(`replication.source.open_session`), opened with METRO_OPEN (pair, epoch, the vDisks and
their replicas) and accepted by the standby. `LinkMirror(link)` is the `WriteMirror`
(nxstore.store.mirror) installed on the mirrored vDisks: every write and trim is copied,
under the vDisk's lock, into the link's open batch, and the link's event-loop thread sends
each batch as METRO_WRITES once it is full or a flush wants it, while writers go on
(pipelined: no write waits for a round trip). At most `window` requests are unacknowledged
(ACK credit), batches carry at most `batch_bytes`, and at most two more wait to be sent: a
writer that finds no room blocks (back-pressure), up to the link's timeout.

Flushes are group-committed: one METRO_FLUSH barrier covers every write given to the link
before it, at most two barriers are in flight, and the flushers that arrive meanwhile share
the next one. A barrier travels in the frame of the last batch before it when the standby
speaks protocol version 5 (one frame each way per flush), else as its own METRO_FLUSH. A
vDisk's flush starts its barrier before its local sync (`prepare_flush`), so the two
overlap. A flush that is not confirmed within its timeout, or any error on the
connection, kills the link: every later call raises `LinkDown`, and `unacked_blocks()`
names the blocks of every write not covered by a confirmed barrier (sent or not), the
dirty set a break starts from.

The standby side is nxstore.metro.applier (its `register` is re-exported here).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from ..constants import WIRE_ACK_EVERY, WIRE_MAX_BATCH, WIRE_METRO_BARRIER_VERSION
from ..errors import ConnectionClosed, InUse, InvalidArgument, LinkDown, NxError, ProtocolError
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
from ..replication.source import Session, open_session
from .applier import register as register  # the standby side of the stream

if TYPE_CHECKING:
    from ..replication.sites import RemoteSite
    from ..store.engine import Engine
    from ..store.vdisk import VDisk

log = logging.getLogger(__name__)

MIRROR_BATCH_BYTES = 1024 * 1024  # data bytes per METRO_WRITES at most (larger writes are split)
MIRROR_WINDOW = 16  # METRO_WRITES (and requests) unacknowledged at once
MIRROR_UNSENT_BATCHES = 2  # batches filled ahead of the sender before writers block
MIRROR_BARRIERS_IN_FLIGHT = 2  # a barrier may go while the previous one is unconfirmed
MIRROR_BARRIER_BATCHES = 256  # batches sent unconfirmed before the link sends a barrier itself
MIRROR_TIMEOUT_S = 15.0  # default: a flush unconfirmed, or a writer without room, this long


# -- source side ---------------------------------------------------------------------------
class _Batch:
    """Writes and trims given to the link, in order, for one METRO_WRITES. Once sent, only
    the op ranges stay (`ranges`, for unacked_blocks)."""

    __slots__ = ("vdisks", "offsets", "lengths", "trims", "data", "end", "ranges")

    def __init__(self) -> None:
        self.vdisks: list[int] = []
        self.offsets: list[int] = []
        self.lengths: list[int] = []
        self.trims: list[bool] = []
        self.data: bytearray | None = bytearray()
        self.end = 0  # the link's op count after this batch's last op
        self.ranges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def op_ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vDisk indexes, offsets, lengths) of its ops, as int64 arrays."""
        if self.ranges is not None:
            return self.ranges
        return (np.array(self.vdisks, np.int64), np.array(self.offsets, np.int64),
                np.array(self.lengths, np.int64))

    def add(self, index: int, offset: int, length: int, data: memoryview | None) -> None:
        self.vdisks.append(index)
        self.offsets.append(offset)
        self.lengths.append(length)
        self.trims.append(data is None)
        if data is not None:
            assert self.data is not None
            self.data += data

    def message(self, req_id: int, barrier: int = 0) -> MetroWrites:
        assert self.data is not None
        return MetroWrites(np.array(self.vdisks, np.uint32), np.array(self.offsets, np.uint64),
                           np.array(self.lengths, np.uint64), np.array(self.trims, bool),
                           self.data, barrier, req_id=req_id)

    def sent(self) -> None:
        """Keep only what unacked_blocks needs (compact), not the data."""
        self.ranges = self.op_ranges()
        self.vdisks, self.offsets, self.lengths, self.trims = [], [], [], []
        self.data = None


class MirrorLink:
    """The active site's synchronous link to the standby `site` for Metro pair `pair_id` in
    `epoch`, mirroring `vdisks` ({local vDisk name: replica name at the standby}); see the
    module docstring. Thread-safe; its connection runs on a thread of its own. `timeout`
    (seconds) bounds a flush and a writer's wait for room unless a call says otherwise."""

    def __init__(self, engine: Engine, site: RemoteSite, pair_id: str, epoch: int,
                 vdisks: Mapping[str, str], *, timeout: float = MIRROR_TIMEOUT_S,
                 batch_bytes: int = MIRROR_BATCH_BYTES, window: int = MIRROR_WINDOW) -> None:
        if not vdisks:
            raise InvalidArgument("a mirror link needs at least one vDisk")
        if timeout <= 0 or batch_bytes <= 0 or window < WIRE_ACK_EVERY:
            raise InvalidArgument(f"mirror link: timeout and batch_bytes must be positive, window "
                                  f"at least {WIRE_ACK_EVERY} (how often the standby acknowledges)")
        self.site = site
        self.pair_id = pair_id
        self.epoch = epoch
        self.timeout = timeout
        self._engine = engine
        self._batch_bytes = batch_bytes
        self._window = window
        mirrored = [engine.vdisk(name) for name in vdisks]
        self._names = [vd.name for vd in mirrored]
        self._index = {vd.id: i for i, vd in enumerate(mirrored)}
        opened = tuple((vd.name, vdisks[vd.name], vd.size) for vd in mirrored)
        self._open_msg = lambda r: MetroOpen(pair_id, epoch, opened, req_id=r)
        self._lock = threading.Lock()  # guards the state below
        self._room = threading.Condition(self._lock)  # writers wait for room
        self._done = threading.Condition(self._lock)  # flushers wait for a confirmed barrier
        self._given = 0  # ops (writes, trims) given to the link
        self._wanted = 0  # ops a flusher waits to see confirmed
        self._asked = 0  # ops covered by the newest barrier sent
        self._confirmed = 0  # ops covered by a confirmed barrier
        self._barriers_out = 0  # barriers sent, not confirmed yet
        self._barriers = 0
        self._unsent: collections.deque[_Batch] = collections.deque()
        self._unconfirmed: collections.deque[_Batch] = collections.deque()
        self._lost: list[tuple[int, int, int]] = []  # given after the link died
        self._dead: LinkDown | None = LinkDown(f"mirror link to site {site.name} is not open")
        self._kicked = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: Session | None = None
        self._wake: asyncio.Event | None = None
        self._sender: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def open(self, timeout: float | None = None) -> None:
        """Connect, authenticate and have the standby accept the session. Raises what the
        standby raised to refuse it (its ERROR: wrong epoch, unknown replica, ...),
        AuthenticationError, LinkDown (unreachable, no answer within `timeout`), or
        InvalidArgument (opened before)."""
        if self._loop is not None:
            raise InvalidArgument(f"mirror link to site {self.site.name} was opened before")
        timeout = self.timeout if timeout is None else timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"nxstore-metro-{self.site.name}")
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._connect(timeout), self._loop)
        try:
            fut.result()
        except BaseException:
            self.close()
            raise
        with self._lock:
            self._dead = None
        log.info("mirror link to site %s open: pair %s, epoch %d, %d vDisk(s)",
                 self.site.name, self.pair_id, self.epoch, len(self._names))

    async def _connect(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._handshake(), timeout)
        except asyncio.TimeoutError:
            raise LinkDown(f"site {self.site.name} did not accept the mirror session within "
                           f"{timeout:g} s") from None
        except OSError as exc:
            raise LinkDown(f"cannot reach site {self.site.name} at {self.site.address}: "
                           f"{exc}") from exc
        self._wake = asyncio.Event()
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())

    async def _handshake(self) -> None:
        s = self._session = await open_session(self._engine, self.site)
        s.window.window = self._window
        try:
            await s.request(self._open_msg, MetroAccept)
        except ConnectionClosed as exc:
            raise await s.explain(exc) from exc

    def close(self) -> None:
        """Close the connection and stop the link's thread; every later call, and every
        one still waiting, raises LinkDown. Idempotent."""
        with self._lock:
            self._kill_locked(LinkDown(f"mirror link to site {self.site.name} was closed"),
                              expected=True)
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()

    async def _shutdown(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- the WriteMirror calls ----------------------------------------------------------------
    def write(self, vd: VDisk, offset: int, data: memoryview) -> None:
        """Give the link a write of `vd` (copied). Blocks while the link has no room; raises
        LinkDown if it is down or stays full for the link's timeout."""
        index = self._index_of(vd)
        with self._lock:
            for lo in range(0, len(data), self._batch_bytes):
                piece = data[lo: lo + self._batch_bytes]
                try:
                    self._give(index, offset + lo, len(piece), piece)
                except LinkDown:
                    self._lost.append((index, offset + lo, len(data) - lo))
                    raise

    def trim(self, vd: VDisk, offset: int, length: int) -> None:
        """Give the link a trim of `vd`; like `write`."""
        index = self._index_of(vd)
        with self._lock:
            try:
                self._give(index, offset, length, None)
            except LinkDown:
                self._lost.append((index, offset, length))
                raise

    def start_flush(self) -> None:
        """Send a barrier covering every write and trim given so far as soon as possible,
        without waiting for it (a later `flush` waits; it overlaps the local sync)."""
        with self._lock:
            if self._dead is None and self._given > self._wanted:
                self._wanted = self._given
                self._kick()

    def flush(self, timeout: float | None = None) -> None:
        """Return once every write and trim given to the link before this call is durable at
        the standby. Raises LinkDown (the link is then dead) if that is not confirmed within
        `timeout` seconds (default: the link's), or the link is or goes down."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            need = self._given
            self._check_alive()
            if self._confirmed >= need:
                return
            if need > self._wanted:
                self._wanted = need
                self._kick()
            while self._confirmed < need:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._kill_locked(LinkDown(f"site {self.site.name} did not confirm a "
                                                     f"flush within {timeout:g} s"))
                self._check_alive()
                self._done.wait(remaining)

    def _index_of(self, vd: VDisk) -> int:
        index = self._index.get(vd.id)
        if index is None:
            raise InvalidArgument(f"vDisk {vd.name!r} is not mirrored to site {self.site.name}")
        return index

    def _give(self, index: int, offset: int, length: int, data: memoryview | None) -> None:
        """Add one op to the open batch (caller holds the lock), waiting for room."""
        nbytes = 0 if data is None else length
        deadline = None
        while True:
            self._check_alive()
            if len(self._unsent) < MIRROR_UNSENT_BATCHES or self._fits(self._unsent[-1], nbytes):
                break
            deadline = deadline or time.monotonic() + self.timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._kill_locked(LinkDown(f"site {self.site.name} took no data for "
                                                 f"{self.timeout:g} s"))
            self._room.wait(remaining)
        if not self._unsent or not self._fits(self._unsent[-1], nbytes):
            self._unsent.append(_Batch())
        self._given += 1
        batch = self._unsent[-1]
        batch.add(index, offset, length, data)
        batch.end = self._given
        # A full batch goes at once; a partial one with the next barrier (or when full):
        # the writer that flushes next wakes the sender once for both.
        if len(self._unsent) > 1 or not self._fits(batch, 1):
            self._kick()

    def _fits(self, batch: _Batch, nbytes: int) -> bool:
        assert batch.data is not None
        return len(batch.vdisks) < WIRE_MAX_BATCH and (
            not batch.vdisks or len(batch.data) + nbytes <= self._batch_bytes)

    # -- state, for the controller -------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._dead is None

    @property
    def barriers(self) -> int:
        """METRO_FLUSH barriers sent so far (group commit: fewer than the flushes)."""
        return self._barriers

    def unacked_blocks(self) -> dict[str, np.ndarray]:
        """{local vDisk name: sorted block indexes (uint64, this cluster's block size)} of
        every write and trim given to the link and not covered by a confirmed barrier
        (sent, waiting, or refused because the link was down). Names without any are left
        out."""
        with self._lock:
            ops = [b.op_ranges() for b in (*self._unconfirmed, *self._unsent)]
            if self._lost:
                ops.append(tuple(np.array(col, np.int64) for col in zip(*self._lost, strict=True)))
        if not ops:
            return {}
        index, offsets, lengths = (np.concatenate(col) for col in zip(*ops, strict=True))
        bs = self._engine.block_size
        first = offsets // bs
        count = (offsets + lengths - 1) // bs - first + 1
        starts = np.repeat(first - (np.cumsum(count) - count), count)
        blocks = (starts + np.arange(int(count.sum()))).astype(np.uint64)
        owner = np.repeat(index, count)
        return {self._names[i]: np.unique(blocks[owner == i]) for i in np.unique(index).tolist()}

    def rtt(self, timeout: float | None = None) -> float:
        """Seconds of one PING / PONG round trip on the link's connection (behind whatever
        it is sending). Raises LinkDown (the link is then dead) without an answer within
        `timeout` (default: the link's)."""
        timeout = self.timeout if timeout is None else timeout
        with self._lock:
            self._check_alive()
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self._ping(), self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise self._die(LinkDown(f"site {self.site.name} did not answer a ping within "
                                     f"{timeout:g} s")) from None
        except NxError as exc:
            raise self._die(exc) from exc

    async def _ping(self) -> float:
        assert self._session is not None
        started = time.perf_counter()
        await self._session.request(lambda r: Ping(time.monotonic_ns(), req_id=r), Pong)
        return time.perf_counter() - started

    # -- the link's thread -------------------------------------------------------------------
    def _kick(self) -> None:
        """Wake the sender (caller holds the lock); once until it looks again."""
        if not self._kicked and self._loop is not None and self._wake is not None:
            self._kicked = True
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _send_loop(self) -> None:
        assert self._session is not None and self._wake is not None
        s = self._session
        inline = s.t.version >= WIRE_METRO_BARRIER_VERSION  # a barrier may ride in a batch
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while (work := self._next_work(inline)) is not None:
                    batch, barrier, covers = work
                    if batch is not None and not barrier:
                        await s.post(batch.message)
                    else:
                        make = (partial(batch.message, barrier=barrier) if batch is not None
                                else lambda r, b=barrier: MetroFlush(b, req_id=r))
                        fut = await s.ask(make)
                        fut.add_done_callback(partial(self._flushed, barrier, covers))
                    if batch is not None:
                        with self._lock:
                            batch.sent()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the link dies of it
            self._die(exc)

    def _next_work(self, inline: bool) -> tuple[_Batch | None, int, int] | None:
        """What to send next: (the oldest unsent batch or None, the barrier to send with or
        after it or 0, the ops that barrier covers), or None for nothing. Called by the
        sender; a barrier goes out only after every batch before it: in the same frame as
        the last of them when `inline` (the peer speaks WIRE_METRO_BARRIER_VERSION)."""
        with self._lock:
            self._kicked = False
            if self._dead is not None:
                return None
            batch = None
            if self._unsent:
                batch = self._unsent.popleft()
                self._unconfirmed.append(batch)
                self._room.notify_all()
                if self._unsent or not inline:
                    return batch, 0, 0
            if self._barriers_out >= MIRROR_BARRIERS_IN_FLIGHT:
                return None if batch is None else (batch, 0, 0)
            # Without flushes, a barrier now and then bounds what the link remembers and
            # what the standby holds unsynced.
            if self._wanted <= self._asked and (
                    self._barriers_out or len(self._unconfirmed) < MIRROR_BARRIER_BATCHES):
                return None if batch is None else (batch, 0, 0)
            self._barriers_out += 1
            self._barriers += 1
            self._asked = self._given
            return batch, self._barriers, self._given

    def _flushed(self, barrier: int, covers: int, fut: asyncio.Future[Message]) -> None:
        """A barrier's reply (or failure) arrived (on the link's thread)."""
        exc = ConnectionClosed("closed") if fut.cancelled() else fut.exception()
        reply = None if exc is not None else fut.result()
        if not isinstance(reply, MetroFlushed) or reply.barrier != barrier:
            self._die(exc or ProtocolError(f"expected METRO_FLUSHED {barrier}, got {reply!r}"))
            return
        with self._lock:
            if self._dead is not None:
                return
            self._confirmed = covers  # the standby answers barriers in order
            self._barriers_out -= 1
            while self._unconfirmed and self._unconfirmed[0].end <= covers:
                self._unconfirmed.popleft()
            self._done.notify_all()
            if self._wanted > self._asked:
                self._kick()

    # -- death ---------------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self._dead is not None:
            raise LinkDown(str(self._dead)) from self._dead

    def _die(self, exc: BaseException) -> LinkDown:
        with self._lock:
            return self._kill_locked(exc)

    def _kill_locked(self, exc: BaseException, expected: bool = False) -> LinkDown:
        """Mark the link dead of `exc` unless it is dead already (caller holds the
        condition): wake every waiter and drop the connection, so that nothing later is
        confirmed. Returns the LinkDown the link died of (logged unless `expected`)."""
        if self._dead is None:
            dead = exc if isinstance(exc, LinkDown) else LinkDown(
                f"mirror link to site {self.site.name} is down: {exc}")
            if dead is not exc:
                dead.__cause__ = exc
            self._dead = dead
            log.log(logging.INFO if expected else logging.WARNING, "%s", dead)
            self._room.notify_all()
            self._done.notify_all()
            if self._session is not None and self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                    self._loop.call_soon_threadsafe(self._session.t.abort)
        return self._dead


class LinkMirror:
    """The WriteMirror (nxstore.store.mirror) that copies the writes of the vDisks it is
    installed on to `link`: a vDisk's flush returns once the link confirms its writes
    durable at the standby. It refuses restore and resize (InUse) while installed."""

    def __init__(self, link: MirrorLink) -> None:
        self.link = link

    def write(self, vd: VDisk, offset: int, data: memoryview) -> None:
        self.link.write(vd, offset, data)

    def trim(self, vd: VDisk, offset: int, length: int) -> None:
        self.link.trim(vd, offset, length)

    def prepare_flush(self, vd: VDisk) -> None:
        self.link.start_flush()

    def flush(self, vd: VDisk) -> None:
        self.link.flush()

    def check_change(self, vd: VDisk, what: str) -> None:
        raise InUse(f"vDisk {vd.name!r} is mirrored synchronously to site "
                    f"{self.link.site.name}: {what} refused")
