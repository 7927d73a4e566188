"""Replication modes: how a protection domain replicates besides scheduled PD snapshots.

Protection replicates a PD by taking PD snapshots on a schedule and shipping them. A mode
above it (NearSync now, `nxstore.nearsync.mode`; Metro next) replaces that for the schedules
it takes, reports per-site state, offers restore points of its own at a remote, and forgets a
PD that stops being owned here. Protection owns this protocol and the neutral types both
sides use, and never imports a mode: the facade (`nxstore.Cluster`) hands the modes to the
`ProtectionManager` when it makes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

from ..errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from .domain import ProtectionDomain
    from .manager import ProtectionManager
    from .rows import PDScheduleRow
    from .schedule import ScheduleRun


@dataclass(frozen=True)
class RestorePoint:
    """A point a protection domain can be restored to at this (remote) cluster: a vDisk
    snapshot present on every member, or an LWS whose episodes every member holds."""

    kind: str                  # "snapshot" | "lws"
    name: str
    created_at: float          # source cluster clock
    seq: int                   # the LWS marker's OpLog seq at the source (0 for a snapshot)
    vdisks: tuple[str, ...]    # the replica vDisks it covers


def find_point(points: list[RestorePoint], key: RestorePoint | str | int,
               pd_name: str) -> RestorePoint:
    """The point of `points` that `key` names: itself, its name, or an LWS's seq (an int or
    digits). NotFound if none, InvalidArgument if a name matches several (give the seq)."""
    if isinstance(key, RestorePoint):
        found = [p for p in points if p == key]
    elif isinstance(key, int) and not isinstance(key, bool):
        found = [p for p in points if p.kind == "lws" and p.seq == key]
    elif isinstance(key, str) and key:
        found = [p for p in points if key in (p.name, p.kind == "lws" and str(p.seq))]
    else:
        raise InvalidArgument(f"not a restore point, name or LWS seq: {key!r}")
    if not found:
        raise NotFound(f"no restore point {getattr(key, 'name', key)!r} of protection domain "
                       f"{pd_name!r} here")
    if len(found) > 1:
        raise InvalidArgument(f"{key!r} names {len(found)} restore points of protection domain "
                              f"{pd_name!r}: give the LWS by its SEQ")
    return found[0]


@dataclass(frozen=True)
class Transition:
    at: float       # cluster clock
    old: str
    new: str
    reason: str


@dataclass(frozen=True)
class ReplicationState:
    """What `ProtectionDomain.replication_state()` reports for one remote site."""

    site: str
    state: str                 # "seeding" | "nearsync" | "fallback"
    since: float               # cluster clock of the last transition
    shipped_seq: int           # newest LWS marker the site holds (0: no live chain)
    shipped_at: float          # its time (0: none yet)
    base_snapshot: str         # the vDisk snapshot the site's episode chain starts on
    history: tuple[Transition, ...]


@dataclass(frozen=True)
class WitnessView:
    """What a Metro witness said of a pair just now (reachable False: `error` says why)."""

    reachable: bool
    epoch: int
    active_site: str
    error: str = ""


@dataclass(frozen=True)
class MetroState:
    """`ProtectionDomain.metro_state()`: this site's view of the PD's Metro pair."""

    pd: str
    role: str                       # "active" | "standby"
    state: str                      # synchronous, stalled, broken, resyncing, suspended, ...
    epoch: int
    peer: str
    witness: str
    witness_view: WitnessView
    since_sync_flush: float | None  # seconds since the last flush both sites acknowledged
    dirty_blocks: int               # blocks changed here since the checkpoint
    resync_done: int
    resync_total: int
    break_mode: str
    break_timeout: float
    checkpoint: str                 # the newest snapshot both sites hold
    note: str                       # the last event an operator must know of

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class SynchronousReplication(Protocol):
    """Metro, registered on the ProtectionManager by the facade (`ProtectionDomain`'s
    metro methods forward to it). Every method raises NxError subclasses."""

    def enable(self, pd: ProtectionDomain, site: str, *, witness: str, witness_secret: str,
               peer_witness: str | None, break_mode: str, break_timeout: float,
               rtt_limit: float) -> MetroState: ...

    def disable(self, pd: ProtectionDomain) -> None: ...

    def state(self, pd: ProtectionDomain) -> MetroState: ...

    def break_link(self, pd: ProtectionDomain) -> MetroState: ...

    def resume(self, pd: ProtectionDomain) -> MetroState: ...

    def promote(self, pd: ProtectionDomain, force: bool, power_on: bool = True
                ) -> MetroState: ...


class ReplicationMode(Protocol):
    """A replication mode, registered on the ProtectionManager (see module docstring)."""

    def accepts_interval(self, pd: ProtectionDomain, seconds: float) -> bool:
        """May a schedule of `pd` with remote sites run every `seconds`, shorter or finer
        than the whole minutes PD-snapshot schedules need?"""
        ...

    def takes_schedule(self, pd: ProtectionDomain, row: PDScheduleRow) -> bool:
        """Does this mode run the schedule `row` instead of a PD snapshot?"""
        ...

    def run_schedule(self, pd: ProtectionDomain, row: PDScheduleRow, now: float, due: float,
                     missed: int) -> ScheduleRun:
        """Run one due schedule this mode takes; never raises for one site's failure."""
        ...

    def states(self, pd_id: int) -> dict[str, ReplicationState]:
        """{remote site: its state in this mode} for PD `pd_id` (empty: never in it)."""
        ...

    def shipped_at(self, pd_id: int) -> dict[str, float]:
        """{remote site: source time of the newest restore point this mode shipped there}."""
        ...

    def forget(self, pd_id: int) -> None:
        """PD `pd_id` stopped being owned here: drop this mode's state of it. Durable."""
        ...

    def choose_point(self, mgr: ProtectionManager, pd_name: str,
                     point: RestorePoint | str | int | None) -> RestorePoint | None:
        """Where to activate `pd_name` here: `point` resolved among this mode's restore
        points and the PD snapshots, or (point None) the newest point of this mode that is
        newer than the newest complete PD snapshot; None: that PD snapshot. Raises NotFound,
        InvalidArgument."""
        ...

    def materialize(self, mgr: ProtectionManager, pd_name: str, point: RestorePoint) -> str:
        """Make restore point `point` (one of this mode's) a PD snapshot here; its name."""
        ...
