"""What a replication target serves beyond snapshot replication: registered from above.

The target (nxstore.replication.target) serves snapshot replication itself: BEGIN_TRANSFER,
BLOCKS, STORED_BLOCKS, MAP_ENTRIES, COMMIT, ABORT, GET_SNAPSHOTS, HAVE_FINGERPRINTS, PRUNE, PING,
VERIFY_REQUEST. The layers
above add their requests to the one `TargetProtocols` the engine keeps (`target_protocols`):
a query (one request, one reply: GET_LWS, PD_REQUEST), a transfer (a BEGIN..COMMIT shape
like snapshot replication's, with its own staged messages: NearSync's LWS episodes), a
session (a message that, first on its connection, hands the whole connection to its handler:
Metro's mirror stream), and actions a target runs when it is built. A target reads the registry when built, so the
layers register when the cluster is opened. A message nobody registered is answered with
ERROR (ProtocolError) and ends the connection, like any other unexpected message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import InvalidArgument, ProtocolError
from .messages import (
    Abort,
    BeginTransfer,
    Blocks,
    Commit,
    GetSnapshots,
    HaveFingerprints,
    MapEntries,
    Message,
    Ping,
    Prune,
    StoredBlocks,
    VerifyRequest,
)

if TYPE_CHECKING:
    from ..store.engine import Engine
    from .auth import SiteIdentity
    from .transport import StreamTransport

# Served by the target itself; registering one of them is an error.
BUILT_IN: tuple[type[Message], ...] = (
    BeginTransfer, Blocks, StoredBlocks, MapEntries, Commit, Abort, GetSnapshots,
    HaveFingerprints, Prune, Ping, VerifyRequest)


class TransferBegin(Protocol):
    """What the target reads of the message that begins any transfer."""

    transfer_id: bytes
    source_site: str
    vdisk: str
    container: str
    block_size: int
    req_id: int


@dataclass
class Transfer:
    """One transfer open on a connection: what arrived of it, staged in RAM until its commit.
    `kind` is None for snapshot replication (BEGIN_TRANSFER)."""

    begin: TransferBegin
    kind: TransferKind | None = None
    indices: list[np.ndarray] = field(default_factory=list)
    fingerprints: list[np.ndarray] = field(default_factory=list)
    unsynced: int = 0  # bytes stored since the last extent-store sync
    unflushed: int = 0  # bytes stored since the last writeback kick
    ranges: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # LWS
    # (fingerprints, extent ids) stored unindexed: a snapshot into a container with dedup off
    private: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def entries(self) -> int:
        return sum(a.size for a in self.indices)


@dataclass(frozen=True)
class TransferKind:
    """A transfer other than snapshot replication. The target handles BLOCKS and MAP_ENTRIES
    of it as of a snapshot transfer (blocks verified and stored, map entries staged) and calls:

    - `check_begin(source_cluster, begin)` before opening the transfer (raises to refuse it);
    - `stage[type(msg)](msg, transfer)` for its own staged messages (acknowledged in windows
      like BLOCKS; `transfer` is None outside a transfer: raise ProtocolError);
    - `on_commit(source_cluster, commit, transfer)`: make it durable, return the reply
      (`transfer` is the open one, maybe None or of another kind: raise ProtocolError);
    - `after_commit(source_cluster, begin)`: follow-up work before the reply is sent, in the
      connection's store thread (`begin` is None if no transfer was open).

    `honours_dedup_policy`: False if its blocks must be found by fingerprint even in a
    container with dedup off (LWS episodes name their blocks by fingerprint)."""

    begin: type[Message]
    commit: type[Message]
    stage: Mapping[type[Message], Callable[[Message, Transfer | None], None]]
    check_begin: Callable[[str, Message], None]
    on_commit: Callable[[str, Message, Transfer | None], Message]
    after_commit: Callable[[str, Message | None], None]
    honours_dedup_policy: bool = True


# handler(source_cluster_id, source_site, request) -> reply; raises NxError (sent as ERROR)
QueryHandler = Callable[[str, str, Message], Message]
# handler(peer, transport, first message): serves the connection until it ends; an NxError
# it raises is sent as ERROR (answering the first message) and ends the connection
SessionHandler = Callable[["SiteIdentity", "StreamTransport", Message], Awaitable[None]]


class TargetProtocols:
    """The requests registered for a cluster's replication targets (see module docstring).
    Every message type has at most one handler: registering one twice, or one the target
    serves itself, raises InvalidArgument."""

    def __init__(self) -> None:
        self._taken: set[type[Message]] = set(BUILT_IN)
        self._queries: dict[type[Message], QueryHandler] = {}
        self._blocking: set[type[Message]] = set()
        self._begins: dict[type[Message], TransferKind] = {}
        self._commits: dict[type[Message], TransferKind] = {}
        self._stages: dict[type[Message], Callable[[Message, Transfer | None], None]] = {}
        self._sessions: dict[type[Message], SessionHandler] = {}
        self._on_start: list[Callable[[], object]] = []

    def _take(self, kinds: list[type[Message]]) -> None:
        taken = set(self._taken)
        for kind in kinds:
            if kind in taken:
                raise InvalidArgument(f"replication target: {kind.__name__} already has a handler")
            taken.add(kind)
        self._taken = taken

    def add_query(self, kind: type[Message], handler: QueryHandler, *,
                  blocking: bool = False) -> None:
        """Answer requests of type `kind` with `handler`'s reply. `blocking`: the handler
        may take long or talk to other sites itself (Leap's planned failover), so the
        target runs it in a thread and keeps serving its other connections meanwhile."""
        self._take([kind])
        self._queries[kind] = handler
        if blocking:
            self._blocking.add(kind)

    def add_transfer(self, kind: TransferKind) -> None:
        """Serve the transfer `kind.begin` .. `kind.commit`."""
        self._take([kind.begin, kind.commit, *kind.stage])
        self._begins[kind.begin] = kind
        self._commits[kind.commit] = kind
        self._stages.update(kind.stage)

    def add_session(self, kind: type[Message], handler: SessionHandler) -> None:
        """A message of type `kind` that comes first on its connection hands the connection
        to `await handler(peer, transport, msg)`, which then owns it (the target serves
        nothing else on it). Anywhere else the message is a ProtocolError."""
        self._take([kind])
        self._sessions[kind] = handler

    def on_start(self, action: Callable[[], object]) -> None:
        """Run `action` whenever a target is built (before it serves a connection)."""
        self._on_start.append(action)

    # -- what the target reads ----------------------------------------------------------
    def query(self, kind: type[Message]) -> QueryHandler | None:
        return self._queries.get(kind)

    def blocking(self, kind: type[Message]) -> bool:
        """Whether the query handler of `kind` runs in a thread (see add_query)."""
        return kind in self._blocking

    def begun_by(self, kind: type[Message]) -> TransferKind | None:
        """The transfer that a message of type `kind` begins, if any."""
        return self._begins.get(kind)

    def committed_by(self, kind: type[Message]) -> TransferKind | None:
        """The transfer that a message of type `kind` commits, if any."""
        return self._commits.get(kind)

    def stage(self, kind: type[Message]) -> Callable[[Message, Transfer | None], None] | None:
        return self._stages.get(kind)

    def session(self, kind: type[Message]) -> SessionHandler | None:
        """The handler a connection opened by a message of type `kind` is handed to, if any."""
        return self._sessions.get(kind)

    def start(self) -> None:
        """Run the `on_start` actions, in registration order."""
        for action in self._on_start:
            action()


def target_protocols(engine: Engine) -> TargetProtocols:
    """The TargetProtocols kept on `engine`, attached (empty) on first use."""
    found = engine.part(TargetProtocols)
    if found is None:
        found = TargetProtocols()
        engine.attach(found)
    return found


def check_site(peer_site: str, claimed: str) -> None:
    """ProtocolError unless a request names the site its sender authenticated as."""
    if peer_site != claimed:
        raise ProtocolError(f"peer authenticated as site {peer_site!r} but names {claimed!r}")
