"""The Metro witness: per Metro pair, which site is active in which epoch, changed only by
an authenticated compare-and-set, durable before any answer.

A witness runs in a third failure domain (`nxstore witness`). Per pair (`pair_id`, a name)
it keeps a `WitnessRecord`: the epoch, the active site, who made the last change and when.
`WitnessCas` applies iff the stored epoch equals `expect_epoch` (0: no record yet) and
`new_epoch > expect_epoch`; whatever the outcome the reply carries the stored record, so a
loser learns who won. Requests are serialized: of concurrent compare-and-sets on one epoch
exactly one applies.

Durability: every change rewrites DATA/witness.state (`fileutil.write_checksummed`:
temporary file, fsync, rename, directory fsync) before the reply is sent, so a change once
answered survives any crash. A damaged or truncated state file makes `WitnessStore.open`
raise Corruption: starting empty would forget epochs and could let two sites be active.
A state file that cannot be written stops the witness (fail-stop: the file then holds the
state before or after that change, and no site was told that it applied). One process per
data directory (an exclusive flock on the directory).

Peers authenticate with the replication handshake (`nxstore.replication.auth`) and the
witness's own secret; the witness's identity is (its witness id, WITNESS_SITE). Layout of
the file and the messages: docs/format.md "Metro witness".
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ..constants import (
    WITNESS_IDLE_TIMEOUT_S,
    WITNESS_MAX_EPOCH,
    WITNESS_MAX_PAIRS,
    WITNESS_SITE,
    WITNESS_STATE_FILE,
    WITNESS_STATE_MAGIC,
    WITNESS_STATE_VERSION,
)
from ..errors import (
    ConnectionClosed,
    Corruption,
    InvalidArgument,
    Locked,
    NotFound,
    NxError,
    ProtocolError,
)
from ..names import check_name
from ..replication.auth import SiteIdentity
from ..replication.messages import Error, Message, Ping, Pong, WitnessCas, WitnessGet, WitnessState
from ..replication.transport import Server, StreamTransport, serve
from ..store.fileutil import make_private_dirs, read_checksummed, write_checksummed

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WitnessRecord:
    """What the witness holds for one Metro pair: `active_site` is active in `epoch`
    (1 and up; 0 only in a `WitnessClient.cas` answer for a pair without a record, with
    empty names); `changed_by` is the site that made that change, `changed_at` the
    witness's clock then (epoch seconds)."""

    pair: str
    epoch: int
    active_site: str
    changed_by: str
    changed_at: float


def check_epoch(what: str, value: object, *, lowest: int = 0) -> int:
    """`value` if it is an int in lowest..WITNESS_MAX_EPOCH, else InvalidArgument."""
    if type(value) is not int or not lowest <= value <= WITNESS_MAX_EPOCH:
        raise InvalidArgument(f"{what} must be an int in {lowest}..{WITNESS_MAX_EPOCH}, "
                              f"not {value!r}")
    return value


def check_cas(pair: object, expect_epoch: object, new_epoch: object, active_site: object) -> None:
    """InvalidArgument unless the arguments make a compare-and-set that can ever apply."""
    check_name("Metro pair", pair)
    check_epoch("expect_epoch", expect_epoch)
    check_epoch("new_epoch", new_epoch, lowest=1)
    check_name("site", active_site)
    if new_epoch <= expect_epoch:  # type: ignore[operator]
        raise InvalidArgument(f"new_epoch {new_epoch} must be greater than expect_epoch "
                              f"{expect_epoch}")


# --- the state file -------------------------------------------------------------------


def state_path(directory: str) -> str:
    return os.path.join(directory, WITNESS_STATE_FILE)


def _encode_state(witness_id: str, records: dict[str, WitnessRecord]) -> bytes:
    pairs = [[r.pair, r.epoch, r.active_site, r.changed_by, r.changed_at]
             for r in sorted(records.values(), key=lambda r: r.pair)]
    return json.dumps({"witness_id": witness_id, "pairs": pairs}, separators=(",", ":"),
                      allow_nan=False).encode()


def _decode_state(path: str, payload: bytes) -> tuple[str, dict[str, WitnessRecord]]:
    """Parse a payload whose checksum matched; Corruption if it does not hold a state."""
    try:
        doc = json.loads(payload)
        witness_id = doc["witness_id"]
        records: dict[str, WitnessRecord] = {}
        for pair, epoch, active, by, at in doc["pairs"]:
            check_name("Metro pair", pair)
            check_epoch("epoch", epoch, lowest=1)
            check_name("site", active)
            check_name("site", by)
            if type(at) is not float or pair in records:
                raise ValueError(f"pair {pair!r}: bad time or listed twice")
            records[pair] = WitnessRecord(pair, epoch, active, by, at)
        if not isinstance(witness_id, str) or not witness_id:
            raise ValueError("no witness id")
    except (ValueError, TypeError, KeyError) as exc:  # InvalidArgument is a ValueError
        raise Corruption(f"{path}: checksums match but the payload is not a witness "
                         f"state: {exc}") from None
    return witness_id, records


def _damaged(path: str, exc: Exception) -> Corruption:
    return Corruption(
        f"witness state {path} is damaged ({exc}): the witness does not start with it, "
        "since starting empty could make two sites active in one epoch. Restore the file "
        "from a copy; only if no Metro pair uses this witness any more, move it away")


def _load(directory: str) -> tuple[str, dict[str, WitnessRecord]]:
    path = state_path(directory)
    try:
        _, payload = read_checksummed(path, WITNESS_STATE_MAGIC, WITNESS_STATE_VERSION)
    except FileNotFoundError:
        raise NotFound(f"no witness state in {directory} ({WITNESS_STATE_FILE} is missing)"
                       ) from None
    except Corruption as exc:
        raise _damaged(path, exc) from None
    return _decode_state(path, payload)


def read_state(directory: str) -> tuple[str, list[WitnessRecord]]:
    """(witness id, records sorted by pair) of the state file in `directory`, read-only
    (safe while the witness runs: the file is replaced atomically). Raises NotFound (no
    state file), Corruption (damaged or truncated), FormatError (a newer format)."""
    witness_id, records = _load(directory)
    return witness_id, sorted(records.values(), key=lambda r: r.pair)


class WitnessStore:
    """The records of one witness, durable in DIRECTORY/witness.state; held by one process
    at a time. `get` and `records` read memory; `cas` is the only change, durable when it
    returns. Not thread-safe for concurrent `cas` calls (WitnessServer serializes them);
    reads may run alongside one `cas`."""

    def __init__(self, directory: str, lock_fd: int, witness_id: str,
                 records: dict[str, WitnessRecord], clock: Callable[[], float]) -> None:
        self.directory = directory
        self.path = state_path(directory)
        self.witness_id = witness_id
        self._lock_fd = lock_fd
        self._records = records
        self._clock = clock
        self._broken: str | None = None

    @classmethod
    def open(cls, directory: str, *, clock: Callable[[], float] = time.time) -> WitnessStore:
        """Open (and lock) the witness data directory, creating it and an empty state file
        with a fresh witness id when it has none. Raises Locked (another witness uses it),
        Corruption (damaged or truncated state file), FormatError, OSError."""
        directory = os.path.abspath(directory)
        make_private_dirs(directory)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Locked(f"witness data directory {directory} is in use by another "
                             "witness process") from None
            for tmp in glob.glob(glob.escape(state_path(directory)) + ".tmp.*"):
                os.unlink(tmp)  # left by a crash mid-write; the state file is intact
            try:
                witness_id, records = _load(directory)
            except NotFound:
                witness_id, records = uuid.uuid4().hex, {}
                write_checksummed(state_path(directory), WITNESS_STATE_MAGIC,
                                  WITNESS_STATE_VERSION, [_encode_state(witness_id, records)])
                log.info("new witness state %s (witness id %s)", state_path(directory),
                         witness_id)
        except BaseException:
            os.close(fd)
            raise
        return cls(directory, fd, witness_id, records, clock)

    def get(self, pair: str) -> WitnessRecord | None:
        return self._records.get(pair)

    def records(self) -> list[WitnessRecord]:
        return sorted(self._records.values(), key=lambda r: r.pair)

    def cas(self, pair: str, expect_epoch: int, new_epoch: int, active_site: str,
            changed_by: str) -> tuple[bool, WitnessRecord | None]:
        """Compare-and-set (module docstring): (applied, the record after it). Durable on
        return. Raises InvalidArgument (bad arguments, WITNESS_MAX_PAIRS reached: nothing
        changed), NxError when the state cannot be written: the store then refuses every
        later change (fail-stop, module docstring)."""
        check_cas(pair, expect_epoch, new_epoch, active_site)
        check_name("site", changed_by)
        if self._broken is not None:
            raise NxError(self._broken)
        current = self._records.get(pair)
        if (current.epoch if current else 0) != expect_epoch:
            return False, current
        if current is None and len(self._records) >= WITNESS_MAX_PAIRS:
            raise InvalidArgument(f"the witness holds the most Metro pairs it takes "
                                  f"({WITNESS_MAX_PAIRS}); use another witness")
        record = WitnessRecord(pair, new_epoch, active_site, changed_by, float(self._clock()))
        records = {**self._records, pair: record}
        try:
            write_checksummed(self.path, WITNESS_STATE_MAGIC, WITNESS_STATE_VERSION,
                              [_encode_state(self.witness_id, records)])
        except OSError as exc:
            self._broken = (f"cannot write witness state {self.path}: {exc.strerror or exc}; "
                            "the witness stops (restart it once that is fixed)")
            raise NxError(self._broken) from exc
        self._records = records
        return True, record

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = -1

    def __enter__(self) -> WitnessStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the server -----------------------------------------------------------------------


def _state_reply(pair: str, ok: bool, record: WitnessRecord | None, req_id: int) -> WitnessState:
    if record is None:
        return WitnessState(pair, ok, 0, "", "", 0.0, req_id=req_id)
    return WitnessState(pair, ok, record.epoch, record.active_site, record.changed_by,
                        record.changed_at, req_id=req_id)


class WitnessServer:
    """A witness serving `store` on the replication transport (`start`). `port` is the
    bound port. `failed` is set when a change could not be stored (`failure` says why):
    the server then answers nothing more; its owner closes it and reports the failure."""

    def __init__(self, store: WitnessStore) -> None:
        self.store = store
        self.failure: NxError | None = None
        self.failed = asyncio.Event()
        self._changing = asyncio.Lock()
        self._changes: set[asyncio.Future[WitnessState]] = set()
        self._server: Server | None = None

    @classmethod
    async def start(cls, store: WitnessStore, host: str, port: int, secret: str,
                    **serve_options: object) -> WitnessServer:
        """Listen on host:port (0: any free port) and serve peers that know `secret`.
        `serve_options` go to `replication.transport.serve` (limits, handshake timeout).
        Raises OSError (cannot listen), InvalidArgument."""
        self = cls(store)
        self._server = await serve(host, port, self._handle,
                                   identity=SiteIdentity(store.witness_id, WITNESS_SITE),
                                   secret=secret, **serve_options)  # type: ignore[arg-type]
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    async def close(self) -> None:
        """Stop listening and close every connection (a change being stored finishes)."""
        if self._server is not None:
            await self._server.close()
        if self._changes:
            await asyncio.wait(set(self._changes))

    async def _handle(self, t: StreamTransport) -> None:
        peer = t.peer
        assert peer is not None  # serve() hands over authenticated transports only
        while not self.failed.is_set():
            try:
                msg = await asyncio.wait_for(t.recv(), WITNESS_IDLE_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.info("closing the connection from %s: no request in %g s", peer.site,
                         WITNESS_IDLE_TIMEOUT_S)
                return
            except ConnectionClosed:
                return
            except ProtocolError as exc:
                log.warning("connection from %s dropped: %s", peer.site, exc)
                await self._send(t, Error.from_exception(exc))
                return
            try:
                reply = await self._answer(peer, msg)
            except InvalidArgument as exc:
                log.warning("refused a request from %s: %s", peer.site, exc)
                reply = Error.from_exception(exc, req_id=msg.req_id)
            except ProtocolError as exc:
                log.warning("connection from %s dropped: %s", peer.site, exc)
                await self._send(t, Error.from_exception(exc, req_id=msg.req_id))
                return
            except NxError as exc:  # the state could not be stored
                await self._send(t, Error.from_exception(exc, req_id=msg.req_id))
                return
            if not await self._send(t, reply):
                return

    @staticmethod
    async def _send(t: StreamTransport, msg: Message) -> bool:
        """Send `msg`; False if the peer is gone (it learns nothing it relies on)."""
        try:
            await t.send(msg)
        except ProtocolError:
            return False
        return True

    async def _answer(self, peer: SiteIdentity, msg: Message) -> Message:
        self._check_running()
        if isinstance(msg, WitnessGet):
            check_name("Metro pair", msg.pair)
            return _state_reply(msg.pair, False, self.store.get(msg.pair), msg.req_id)
        if isinstance(msg, WitnessCas):
            return await self._cas(peer, msg)
        if isinstance(msg, Ping):
            return Pong(msg.sent_ns, req_id=msg.req_id)
        raise ProtocolError(f"unexpected {type(msg).__name__} from {peer.site} (a witness "
                            "answers WITNESS_GET, WITNESS_CAS and PING)")

    async def _cas(self, peer: SiteIdentity, msg: WitnessCas) -> WitnessState:
        # The change runs as a task of its own that a closing connection does not cancel:
        # a state write, once begun, ends (and is logged) even if its answer is never sent.
        change = asyncio.ensure_future(self._change(peer, msg))
        self._changes.add(change)
        change.add_done_callback(self._forget)
        return await asyncio.shield(change)

    def _forget(self, change: asyncio.Future[WitnessState]) -> None:
        self._changes.discard(change)
        if not change.cancelled():
            change.exception()  # retrieved: its connection may be gone (the ERROR too)

    async def _change(self, peer: SiteIdentity, msg: WitnessCas) -> WitnessState:
        async with self._changing:  # one change at a time: exactly one CAS per epoch wins
            self._check_running()
            try:
                ok, record = await asyncio.to_thread(
                    self.store.cas, msg.pair, msg.expect_epoch, msg.new_epoch,
                    msg.active_site, peer.site)
            except InvalidArgument:
                raise
            except NxError as exc:
                log.error("%s", exc)
                self.failure = exc
                self.failed.set()
                raise
        if ok:
            log.info("pair %s: epoch %d -> %d, active site %s (asked by %s)", msg.pair,
                     msg.expect_epoch, msg.new_epoch, msg.active_site, peer.site)
        else:
            log.info("pair %s: %s's compare-and-set from epoch %d refused: the epoch is %d "
                     "(active site %s)", msg.pair, peer.site, msg.expect_epoch,
                     record.epoch if record else 0, record.active_site if record else "none")
        return _state_reply(msg.pair, ok, record, msg.req_id)

    def _check_running(self) -> None:
        if self.failed.is_set():
            raise NxError(f"the witness stopped: {self.failure}")


async def serve_until(server: WitnessServer, stop: asyncio.Event) -> None:
    """Serve until `stop` is set or the server fails, then close it. Raises the failure
    (NxError) if there was one."""
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(server.failed.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waits, return_exceptions=True)
        await server.close()
    if server.failure is not None:
        raise server.failure
