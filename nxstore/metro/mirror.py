"""The Metro mirror stream, active side: the synchronous link to the standby.

A `MirrorLink` is one authenticated replication connection to the standby
(`replication.source.open_transport`), opened with METRO_OPEN (pair, epoch, the vDisks and
their replicas) and accepted by the standby, on a private event loop. Then the connection
leaves asyncio (`transport.detach`: the same frames, keys and counters on a blocking socket;
a TLS connection stays on the loop behind a `LoopStream`) and the link runs on plain
threads, because on this path every thread hop costs more than the wire: the thread that
flushes seals and sends its barrier itself, a receiver thread reads the standby's replies,
wakes the flushers directly and sends the barrier that a confirmation (or returned credit)
makes due, and a sender thread sends batches that fill up between flushes, so that writers
go on meanwhile. (The receiver may send: the standby's replies are a few small frames per
request in flight, so it never blocks on them and always reads what the link sends.)

`LinkMirror(link)` is the `WriteMirror` (nxstore.store.mirror) installed on the mirrored
vDisks: every write and trim is copied, under the vDisk's lock, into the link's open batch,
sent as METRO_WRITES once it is full or a flush wants it, while writers go on (pipelined:
no write waits for a round trip). At most `window` requests are unacknowledged (ACK
credit), batches carry at most `batch_bytes`, and at most two more wait to be sent: a
writer that finds no room blocks (back-pressure), up to the link's timeout, which also
bounds one blocked send.

Flushes are group-committed: one barrier covers every write given to the link before it,
at most two barriers are in flight, and the flushers that arrive meanwhile share the next
one. A barrier travels in the frame of the last batch before it when the standby speaks
protocol version 5 (one frame each way per flush), else as its own METRO_FLUSH. A vDisk's
flush starts its barrier before its local sync (`prepare_flush`), so the two overlap. A
flush that is not confirmed within its timeout, or any error on the connection, kills the
link: every later call raises `LinkDown`, and `unacked_blocks()` names the blocks of every
write not covered by a confirmed barrier (sent or not), the dirty set a break starts from.

The standby side is nxstore.metro.applier (its `register` is re-exported here).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ..constants import WIRE_ACK_EVERY, WIRE_MAX_BATCH, WIRE_METRO_BARRIER_VERSION
from ..errors import ConnectionClosed, InUse, InvalidArgument, LinkDown, NxError, ProtocolError
from ..replication.messages import (
    Ack,
    Error,
    MetroAccept,
    MetroFlush,
    MetroFlushed,
    MetroOpen,
    MetroWrites,
    Ping,
    Pong,
)
from ..replication.source import open_transport
from ..replication.transport import FrameStream, LoopStream, SocketStream, detach
from .applier import register as register  # the standby side of the stream

if TYPE_CHECKING:
    from ..replication.sites import RemoteSite
    from ..replication.transport import StreamTransport
    from ..store.engine import Engine
    from ..store.vdisk import VDisk

log = logging.getLogger(__name__)

MIRROR_BATCH_BYTES = 1024 * 1024  # data bytes per METRO_WRITES at most (larger writes are split)
MIRROR_WINDOW = 16  # METRO_WRITES (and requests) unacknowledged at once
MIRROR_HOLD_BYTES = 64 * 1024  # an open batch smaller than this waits for the next barrier
MIRROR_UNSENT_BATCHES = 2  # batches filled ahead of the sender before writers block
MIRROR_BARRIERS_IN_FLIGHT = 2  # a barrier may go while the previous one is unconfirmed
MIRROR_BARRIER_BATCHES = 256  # batches sent unconfirmed before the link sends a barrier itself
MIRROR_TIMEOUT_S = 15.0  # default: a flush unconfirmed, or a writer without room, this long
_OPEN_REQ = 1  # METRO_OPEN's request id; the stream's requests follow it
_LAST_WORD_S = 2.0  # how long a failed send waits for the standby's ERROR (why it failed)


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
    module docstring. Thread-safe; it runs a receiver and a sender thread of its own.
    `timeout` (seconds) bounds a flush, a writer's wait for room and a blocked send unless a
    call says otherwise."""

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
        mirrored = [engine.vdisk(name) for name in vdisks]
        self._names = [vd.name for vd in mirrored]
        self._index = {vd.id: i for i, vd in enumerate(mirrored)}
        opened = tuple((vd.name, vdisks[vd.name], vd.size) for vd in mirrored)
        self._open_msg = MetroOpen(pair_id, epoch, opened, req_id=_OPEN_REQ)
        self._lock = threading.Lock()  # guards the state below
        self._room = threading.Condition(self._lock)  # writers wait for room
        self._done = threading.Condition(self._lock)  # flushers wait for a confirmed barrier
        self._work = threading.Condition(self._lock)  # the sender thread waits for work
        # Held by the one thread that takes work and sends it, so frames leave in the order
        # the work was taken. Taken after _lock, never while holding it.
        self._send_lock = threading.Lock()
        self._kicked = False  # work may be due: whoever holds _send_lock looks again
        self._given = 0  # ops (writes, trims) given to the link
        self._wanted = 0  # ops a flusher waits to see confirmed
        self._asked = 0  # ops covered by the newest barrier sent
        self._confirmed = 0  # ops covered by a confirmed barrier
        self._barriers_out = 0  # barriers sent, not confirmed yet
        self._barriers = 0
        self._window = window  # requests unacknowledged at most (ACK credit)
        self._next_id = _OPEN_REQ + 1
        self._outstanding: set[int] = set()  # requests sent, not acknowledged
        self._barrier_reqs: dict[int, tuple[int, int]] = {}  # req_id -> (barrier, ops covered)
        self._pings: dict[int, threading.Event] = {}
        self._unsent: collections.deque[_Batch] = collections.deque()
        self._unconfirmed: collections.deque[_Batch] = collections.deque()
        self._lost: list[tuple[int, int, int]] = []  # given after the link died
        self._dead: LinkDown | None = LinkDown(f"mirror link to site {site.name} is not open")
        self._opened = False
        self._inline = False  # a barrier may ride in a batch (the standby speaks version 5)
        self._stream: FrameStream | None = None
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the handshake's, and a LoopStream's
        self._loop_thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def open(self, timeout: float | None = None) -> None:
        """Connect, authenticate and have the standby accept the session. Raises what the
        standby raised to refuse it (its ERROR: wrong epoch, unknown replica, ...),
        AuthenticationError, LinkDown (unreachable, no answer within `timeout`), or
        InvalidArgument (opened before)."""
        if self._opened:
            raise InvalidArgument(f"mirror link to site {self.site.name} was opened before")
        self._opened = True
        timeout = self.timeout if timeout is None else timeout
        loop = self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=loop.run_forever, daemon=True,
                                             name=f"nxstore-metro-{self.site.name}-io")
        self._loop_thread.start()
        try:
            stream = asyncio.run_coroutine_threadsafe(self._connect(timeout), loop).result()
        except BaseException:
            self.close()
            raise
        if isinstance(stream, SocketStream):
            self._stop_loop()  # only a LoopStream needs it
        self._stream = stream
        self._inline = stream.version >= WIRE_METRO_BARRIER_VERSION
        with self._lock:
            self._dead = None
        for run, role in ((self._receive_loop, "recv"), (self._send_loop, "send")):
            thread = threading.Thread(target=run, daemon=True,
                                      name=f"nxstore-metro-{self.site.name}-{role}")
            self._threads.append(thread)
            thread.start()
        log.info("mirror link to site %s open: pair %s, epoch %d, %d vDisk(s)%s",
                 self.site.name, self.pair_id, self.epoch, len(self._names),
                 "" if isinstance(stream, SocketStream) else " (through its event loop)")

    async def _connect(self, timeout: float) -> FrameStream:
        try:
            t = await asyncio.wait_for(self._handshake(), timeout)
        except asyncio.TimeoutError:
            raise LinkDown(f"site {self.site.name} did not accept the mirror session within "
                           f"{timeout:g} s") from None
        except OSError as exc:
            raise LinkDown(f"cannot reach site {self.site.name} at {self.site.address}: "
                           f"{exc}") from exc
        try:
            stream = await detach(t, send_timeout=self.timeout)
        except BaseException:
            t.abort()
            raise
        return stream or LoopStream(t, asyncio.get_running_loop())

    async def _handshake(self) -> StreamTransport:
        t = await open_transport(self._engine, self.site)
        try:
            try:
                await t.send(self._open_msg)
            except ConnectionClosed as exc:  # the standby's ERROR may be in already
                reply = await asyncio.wait_for(t.recv(), _LAST_WORD_S)
                if not isinstance(reply, Error):
                    raise exc from None
            else:
                reply = await t.recv()
            if isinstance(reply, Error):
                raise reply.to_exception()
            if not isinstance(reply, MetroAccept) or reply.req_id != _OPEN_REQ:
                raise ProtocolError(f"expected METRO_ACCEPT, got {reply!r}")
        except BaseException:
            t.abort()
            raise
        return t

    def close(self) -> None:
        """Close the connection and stop the link's threads; every later call, and every
        one still waiting, raises LinkDown. Idempotent."""
        with self._lock:
            self._kill_locked(LinkDown(f"mirror link to site {self.site.name} was closed"),
                              expected=True)
        me = threading.current_thread()
        for thread in self._threads:
            if thread is not me:
                thread.join(10)
        if self._stream is not None and not any(t.is_alive() for t in self._threads):
            self._stream.close()
        self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._loop_thread
        if loop is None or thread is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()

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
        """Send a barrier covering every write and trim given so far as soon as possible
        (from this thread when nothing else is being sent), without waiting for its
        confirmation (a later `flush` waits; it overlaps the local sync)."""
        with self._lock:
            if self._dead is not None or self._given <= self._wanted:
                return
            self._wanted = self._given
            self._kicked = True
        self._pump()

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
            self._kicked = True
        # Sends the barrier unless it must wait for an earlier one's confirmation: then the
        # receiver sends it as soon as that arrives.
        self._pump()
        with self._lock:
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
        # A full batch goes at once, from the sender thread (the writer goes on); a partial
        # one with the next barrier, sent by the flusher.
        if len(self._unsent) > 1 or not self._fits(batch, 1):
            self._kick_locked()

    def _goes(self, batch: _Batch) -> bool:
        """The open batch may go without a barrier: full, or large enough."""
        assert batch.data is not None
        return not self._fits(batch, 1) or len(batch.data) >= MIRROR_HOLD_BYTES

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
        """Barriers sent so far (group commit: fewer than the flushes)."""
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
            rid = self._next_id
            self._next_id += 1
            answered = self._pings[rid] = threading.Event()
        assert self._stream is not None
        started = time.perf_counter()
        try:
            self._stream.send(Ping(time.monotonic_ns(), req_id=rid))
        except NxError as exc:
            raise self._die(exc) from exc
        if not answered.wait(timeout):
            raise self._die(LinkDown(f"site {self.site.name} did not answer a ping within "
                                     f"{timeout:g} s"))
        with self._lock:
            self._check_alive()
        return time.perf_counter() - started

    # -- sending ---------------------------------------------------------------------------
    def _kick_locked(self) -> None:
        """Work is due: wake the sender thread (caller holds the lock)."""
        self._kicked = True
        self._work.notify()

    def _send_loop(self) -> None:
        """The sender thread: sends the batches that fill up between flushes (writers kick
        it), until the link dies."""
        while True:
            with self._lock:
                while not self._kicked and self._dead is None:
                    self._work.wait()
                if self._dead is not None:
                    return
            self._pump(wait=True)

    def _pump(self, wait: bool = False) -> None:
        """Take and send what is due, unless another thread is at it (`wait`: wait for
        it to finish, then look); that one looks again if `_kicked` was set meanwhile.
        Callers set `_kicked` first. Never raises: a failure kills the link."""
        if wait:
            self._send_lock.acquire()
        elif not self._send_lock.acquire(blocking=False):
            return
        while True:
            try:
                while (work := self._take_work()) is not None:
                    self._send_work(*work)
            except BaseException as exc:  # noqa: BLE001 - the link dies of it
                self._send_failed(exc)
                self._send_lock.release()
                return
            self._send_lock.release()
            with self._lock:
                if not self._kicked or self._dead is not None:
                    return
            if not self._send_lock.acquire(blocking=False):
                return  # the thread that holds it looks again

    def _barrier_due_locked(self) -> bool:
        """A barrier should be sent now (caller holds the lock): a flusher wants one, or,
        without flushes, a barrier now and then bounds what the link remembers and what the
        standby holds unsynced."""
        return self._barriers_out < MIRROR_BARRIERS_IN_FLIGHT and (
            self._wanted > self._asked or (not self._barriers_out
                                           and len(self._unconfirmed) >= MIRROR_BARRIER_BATCHES))

    def _take_work(self) -> tuple[_Batch | None, int, int] | None:
        """What to send next: (the oldest unsent batch or None, the barrier to send with it
        or alone or 0, its request id), or None for nothing (or no credit). A barrier goes
        out only after every batch before it: in the same frame as the last of them when
        the standby speaks WIRE_METRO_BARRIER_VERSION, else as METRO_FLUSH after it. The
        open batch (the last, not full) goes only with a barrier unless it holds
        MIRROR_HOLD_BYTES: while barriers wait for confirmations, the small writes of the
        flushes that will share the next one gather in it (one frame, not one per
        flusher), and large ones travel meanwhile."""
        with self._lock:
            self._kicked = False
            if self._dead is not None or len(self._outstanding) >= self._window:
                return None
            due = self._barrier_due_locked()
            batch = None
            if self._unsent and (due or len(self._unsent) > 1 or self._goes(self._unsent[0])):
                batch = self._unsent.popleft()
                self._unconfirmed.append(batch)
                self._room.notify_all()
            barrier = 0
            if due and (batch is None or (self._inline and not self._unsent)):
                self._barriers_out += 1
                self._barriers += 1
                self._asked = self._given
                barrier = self._barriers
            if batch is None and not barrier:
                return None
            rid = self._next_id
            self._next_id += 1
            self._outstanding.add(rid)
            if barrier:
                self._barrier_reqs[rid] = (barrier, self._asked)
            return batch, barrier, rid

    def _send_work(self, batch: _Batch | None, barrier: int, rid: int) -> None:
        assert self._stream is not None
        if batch is None:
            self._stream.send(MetroFlush(barrier, req_id=rid))
            return
        self._stream.send(batch.message(rid, barrier))
        with self._lock:
            batch.sent()

    def _send_failed(self, exc: BaseException) -> None:
        """Sending failed: the standby may have said why (an ERROR, then it closed); give the
        receiver a moment to read it, so the link dies of that rather than of a reset."""
        if isinstance(exc, (ConnectionClosed, OSError)):
            receiver = self._threads[0] if self._threads else None
            if receiver is not None and receiver is not threading.current_thread():
                receiver.join(_LAST_WORD_S)
        self._die(exc)

    # -- receiving -----------------------------------------------------------------------------
    def _receive_loop(self) -> None:
        """The receiver thread: the standby's replies, until the link dies."""
        assert self._stream is not None
        try:
            while True:
                msg = self._stream.recv()
                if isinstance(msg, Ack):
                    if self._acked(msg):
                        self._pump()
                elif isinstance(msg, MetroFlushed):
                    if self._flushed(msg):
                        self._pump()
                elif isinstance(msg, Pong):
                    with self._lock:
                        answered = self._pings.pop(msg.req_id, None)
                    if answered is None:
                        raise ProtocolError(f"unexpected PONG (req {msg.req_id})")
                    answered.set()
                elif isinstance(msg, Error):
                    raise msg.to_exception()
                else:
                    raise ProtocolError(f"unexpected {type(msg).__name__} (req {msg.req_id}) "
                                        "on a mirror link")
        except BaseException as exc:  # noqa: BLE001 - the link dies of it
            self._die(exc)

    def _acked(self, msg: Ack) -> bool:
        """Credit came back; True if work waited for it (the caller sends it)."""
        with self._lock:
            self._outstanding = {r for r in self._outstanding if r > msg.upto}
            if msg.window:
                self._window = msg.window
            due = self._barrier_due_locked() or len(self._unsent) > 1 or bool(
                self._unsent and self._goes(self._unsent[0]))
            self._kicked = self._kicked or due
            return due

    def _flushed(self, msg: MetroFlushed) -> bool:
        """A barrier is durable at the standby (the standby confirms them in order): wake
        its flushers. True if the next barrier is due now (the caller sends it)."""
        with self._lock:
            expected = self._barrier_reqs.pop(msg.req_id, None)
            if expected is None or expected[0] != msg.barrier:
                raise ProtocolError(f"METRO_FLUSHED {msg.barrier} (req {msg.req_id}) does not "
                                    f"answer a barrier in flight")
            if self._dead is not None:
                return False
            self._outstanding.discard(msg.req_id)
            self._confirmed = expected[1]
            self._barriers_out -= 1
            while self._unconfirmed and self._unconfirmed[0].end <= self._confirmed:
                self._unconfirmed.popleft()
            self._done.notify_all()
            due = self._barrier_due_locked()
            self._kicked = self._kicked or due
            return due

    # -- death ---------------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self._dead is not None:
            raise LinkDown(str(self._dead)) from self._dead

    def _die(self, exc: BaseException) -> LinkDown:
        with self._lock:
            return self._kill_locked(exc)

    def _kill_locked(self, exc: BaseException, expected: bool = False) -> LinkDown:
        """Mark the link dead of `exc` unless it is dead already (caller holds the lock):
        wake every waiter and break the connection, so that nothing later is confirmed.
        Returns the LinkDown the link died of (logged unless `expected`)."""
        if self._dead is None:
            dead = exc if isinstance(exc, LinkDown) else LinkDown(
                f"mirror link to site {self.site.name} is down: {exc}")
            if dead is not exc:
                dead.__cause__ = exc
            self._dead = dead
            log.log(logging.INFO if expected else logging.WARNING, "%s", dead)
            self._room.notify_all()
            self._done.notify_all()
            self._work.notify_all()
            for answered in self._pings.values():
                answered.set()
            if self._stream is not None:
                self._stream.abort()
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
