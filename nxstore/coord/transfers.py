"""Replication transfers the site's leader hands out, recorded durably in etcd.

Anyone may queue a transfer (`queue`: snapshot VDISK@SNAP to remote SITE); the leader
claims each queued one, and each one a former leader left running, and runs it on the
engine it owns (`TransferRunner`). Every change the leader makes to a record is a
transaction guarded by its term (nxstore.coord.election), and the record's progress is
written as the transfer goes: a leader that can no longer prove its lease stops the
transfer at the next progress report (the target drops what was staged; the blocks it
stored stay). The next leader runs the transfer again from the start of its protocol: the
target reports the blocks it already holds as not missing, so nothing that arrived is sent
again, and a snapshot the target already applied is not applied twice (the source finds it
held and sends nothing; nxstore.replication.source).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..errors import CoordinationUnavailable, InvalidArgument, LeadershipLost, NxError
from .election import Leadership
from .etcd import Entry, Etcd, Guard, Put
from .keys import KEY_FORMAT_VERSION, SCHEDULE_RECORD_VERSION, SiteKeys, encode

if TYPE_CHECKING:
    from ..cluster import Cluster

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
VDISK, SCHEDULE = "vdisk", "schedule"  # what a record transfers (Transfer.kind)
MAX_ATTEMPTS = 5          # attempts that end in an error (not a lost leadership) before FAILED
PROGRESS_PERIOD_S = 0.25  # at most one progress write per this many seconds
RETRY_AFTER_S = 2.0       # a failed attempt is retried no sooner
POLL_S = 0.25             # the leader looks for transfers to run this often


@dataclass(frozen=True)
class Attempt:
    """One run of a transfer by one leader (term)."""

    worker: str
    term: int
    outcome: str = RUNNING      # running (or cut off), done, error: ...
    blocks_sent: int = 0
    blocks_deduped: int = 0
    bytes_on_wire: int = 0
    phase: str = ""             # the last progress report: phase, done of total
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class Transfer:
    """A transfer's record (the JSON value of its key). Kind VDISK: snapshot `vdisk`@
    `snapshot` to `site`, queued by anyone, run by TransferRunner. Kind SCHEDULE: the
    replication to `site` of the first PD snapshot that schedule `schedule_id` of PD `pd`
    takes at or after `after` (cluster clock), recorded and resumed by
    nxstore.coord.schedules."""

    id: str
    vdisk: str
    snapshot: str
    site: str
    state: str = QUEUED
    bandwidth_limit: float | None = None
    queued_at: float = 0.0
    not_before: float = 0.0     # epoch seconds: a failed attempt waits until then
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)
    revision: int = 0           # the key's mod revision when read (not stored)
    kind: str = VDISK
    pd: str = ""
    schedule_id: int = 0
    after: float = 0.0

    @property
    def source(self) -> str:
        """What is transferred, for people: VDISK@SNAP, or the PD schedule's snapshot."""
        if self.kind == SCHEDULE:
            return f"PD {self.pd} schedule {self.schedule_id}" + (
                f" snapshot {self.snapshot}" if self.snapshot else "")
        return f"{self.vdisk}@{self.snapshot}"

    def encode(self) -> bytes:
        fields = asdict(self)
        del fields["revision"]
        if self.kind == VDISK:  # exactly the version 1 record
            for name in ("kind", "pd", "schedule_id", "after"):
                del fields[name]
            return encode(fields)
        return encode(fields, SCHEDULE_RECORD_VERSION)

    @classmethod
    def decode(cls, entry: Entry) -> Transfer:
        v: dict[str, Any] = entry.json((KEY_FORMAT_VERSION, SCHEDULE_RECORD_VERSION))
        try:
            kind = VDISK if v["version"] == KEY_FORMAT_VERSION else str(v["kind"])
            if kind not in (VDISK, SCHEDULE):
                raise ValueError(f"kind {kind!r}")
            return cls(str(v["id"]), str(v["vdisk"]), str(v["snapshot"]), str(v["site"]),
                       str(v["state"]), v.get("bandwidth_limit"), float(v["queued_at"]),
                       float(v.get("not_before", 0)),
                       tuple(Attempt(**a) for a in v.get("attempts", ())), entry.mod_revision,
                       kind, str(v.get("pd", "")), int(v.get("schedule_id", 0)),
                       float(v.get("after", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise CoordinationUnavailable(f"etcd key {entry.key} is not a transfer record "
                                          f"({exc})") from None


def transfer_id(vdisk: str, snapshot: str, site: str) -> str:
    """Deterministic: queueing the same snapshot for the same site twice is one transfer."""
    return hashlib.sha256(f"{vdisk}@{snapshot}>{site}".encode()).hexdigest()[:20]


def queue(etcd: Etcd, keys: SiteKeys, vdisk: str, snapshot: str, site: str,
          bandwidth_limit: float | None = None) -> Transfer:
    """Queue the transfer of `vdisk`@`snapshot` to `site` for the leader; returns its record
    (the existing one if it was queued before: nothing is queued twice). Raises
    InvalidArgument, CoordinationUnavailable."""
    for what, name in (("vDisk", vdisk), ("snapshot", snapshot), ("site", site)):
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"bad {what} name {name!r}")
    if bandwidth_limit is not None and not bandwidth_limit > 0:
        raise InvalidArgument(f"bandwidth limit must be > 0 bytes/s, not {bandwidth_limit!r}")
    t = Transfer(transfer_id(vdisk, snapshot, site), vdisk, snapshot, site,
                 bandwidth_limit=bandwidth_limit, queued_at=time.time())
    key = keys.transfer(t.id)
    if etcd.txn([Guard(key, 0)], [Put(key, t.encode())]):
        log.info("queued transfer %s: %s@%s to %s", t.id, vdisk, snapshot, site)
        return t
    existing = etcd.get(key)
    assert existing is not None
    return Transfer.decode(existing)


def transfers(etcd: Etcd, keys: SiteKeys) -> list[Transfer]:
    """Every transfer record, oldest first. Raises CoordinationUnavailable."""
    out = [Transfer.decode(e) for e in etcd.get_prefix(keys.transfers)]
    return sorted(out, key=lambda t: (t.queued_at, t.id))


def write(etcd: Etcd, keys: SiteKeys, lead: Leadership, t: Transfer, *,
          expect: int | None = None, delete: bool = False) -> Transfer:
    """Store (or with `delete`, delete) record `t` guarded by `lead`'s term and, with
    `expect`, by the record's mod revision (0: it must not exist). Returns `t` with its new
    revision. Raises LeadershipLost (the term's guard failed), CoordinationUnavailable
    (etcd unreachable, or the record changed meanwhile while the leadership holds)."""
    key = keys.transfer(t.id)
    guards = [lead.guard()]
    if expect is not None:
        guards.append(Guard(key, expect, "MOD"))
    revision = etcd.txn(guards, deletes=[key]) if delete else \
        etcd.txn(guards, [Put(key, t.encode())])
    if not revision:
        if expect is not None and lead.holds():
            raise CoordinationUnavailable(f"transfer {t.id} changed while being claimed")
        raise LeadershipLost(f"worker {lead.worker} no longer leads the site")
    return replace(t, revision=revision)


class TransferRunner:
    """The leader's loop: claim and run the pending vDisk transfers, one at a time, on
    `cluster` (schedule records are nxstore.coord.schedules' own)."""

    def __init__(self, cluster: Cluster, etcd: Etcd, keys: SiteKeys, lead: Leadership,
                 poll: float = POLL_S) -> None:
        self.cluster = cluster
        self.etcd = etcd
        self.keys = keys
        self.lead = lead
        self.poll = poll
        self.stopping = False  # set on stop: the transfer in progress stops at its next frame

    async def run(self, until: asyncio.Event) -> None:
        """Until `until` is set or the leadership is lost. Never raises (logs)."""
        watcher = asyncio.get_running_loop().create_task(until.wait())
        watcher.add_done_callback(lambda _: setattr(self, "stopping", True))
        try:
            await self._loop(until)
        finally:
            watcher.cancel()

    async def _loop(self, until: asyncio.Event) -> None:
        said = ""
        while not until.is_set() and self.lead.holds():
            try:
                pending = [t for t in await asyncio.to_thread(transfers, self.etcd, self.keys)
                           if t.kind == VDISK and t.state in (QUEUED, RUNNING)
                           and t.not_before <= time.time()]
                for t in pending:
                    if until.is_set() or not self.lead.holds():
                        return
                    await asyncio.to_thread(self.run_one, t)
                said = ""
            except (LeadershipLost, CoordinationUnavailable) as exc:
                if str(exc) != said:  # once per error, not at every poll
                    said = str(exc)
                    log.warning("transfers paused: %s", exc)
            except Exception:  # a bug must not end the daemon
                log.exception("transfer runner failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(until.wait(), self.poll)

    def _write(self, t: Transfer, *, expect: int | None = None) -> Transfer:
        return write(self.etcd, self.keys, self.lead, t, expect=expect)

    def run_one(self, t: Transfer) -> Transfer:
        """Claim `t` and run it to its end (DONE, or QUEUED again after an error, FAILED
        after MAX_ATTEMPTS of them); returns the final record. Raises LeadershipLost (the
        record stays RUNNING for the next leader), CoordinationUnavailable."""
        if t.state == RUNNING:
            log.info("resuming transfer %s (%s@%s to %s) left by %s", t.id, t.vdisk,
                     t.snapshot, t.site, t.attempts[-1].worker if t.attempts else "?")
        attempt = Attempt(self.lead.worker, self.lead.term)
        t = self._write(replace(t, state=RUNNING, attempts=(*t.attempts, attempt)),
                        expect=t.revision)
        report = _ProgressReport(self, t)
        try:
            snap = self.cluster.snapshot(t.vdisk, t.snapshot)
            result = self.cluster.replicate(snap, t.site, progress=report,
                                            bandwidth_limit=t.bandwidth_limit)
        except LeadershipLost:
            log.warning("transfer %s stopped: leadership lost", t.id)
            raise
        except NxError as exc:
            failures = sum(a.outcome.startswith("error") for a in t.attempts) + 1
            state = FAILED if failures >= MAX_ATTEMPTS else QUEUED
            log.warning("transfer %s attempt failed (%s): %s", t.id, state, exc)
            last = replace(report.attempt, outcome=f"error: {exc}")
            return self._write(replace(report.record, state=state,
                                       not_before=time.time() + RETRY_AFTER_S,
                                       attempts=(*t.attempts[:-1], last)))
        last = replace(report.attempt, outcome=DONE, blocks_sent=result.blocks_sent,
                       blocks_deduped=result.blocks_deduped, bytes_on_wire=result.bytes_on_wire)
        done = self._write(replace(report.record, state=DONE, attempts=(*t.attempts[:-1], last)))
        log.info("transfer %s done: %d blocks sent, %d already at %s, %d bytes on wire", t.id,
                 result.blocks_sent, result.blocks_deduped, t.site, result.bytes_on_wire)
        return done


class _ProgressReport:
    """The replication progress callback (called per frame of blocks sent): writes the
    attempt's progress to the record (at most every PROGRESS_PERIOD_S; a write etcd does
    not take is skipped) and raises LeadershipLost, which stops the transfer, as soon as the
    leadership is no longer proven."""

    def __init__(self, runner: TransferRunner, record: Transfer) -> None:
        self.runner = runner
        self.record = record
        self.attempt = record.attempts[-1]
        self._last = 0.0

    def __call__(self, phase: str, done: int, total: int, wire: int) -> None:
        if self.runner.stopping:
            raise LeadershipLost(f"worker {self.runner.lead.worker} is stopping: it gives "
                                 "up the leadership")
        if not self.runner.lead.holds():
            raise LeadershipLost(f"worker {self.runner.lead.worker} no longer leads the site")
        self.attempt = replace(self.attempt, phase=phase, done=done, total=total,
                               bytes_on_wire=wire)
        now = time.monotonic()
        if now - self._last < PROGRESS_PERIOD_S and phase == "blocks" and done < total:
            return
        self._last = now
        try:
            self.record = self.runner._write(replace(
                self.record, attempts=(*self.record.attempts[:-1], self.attempt)))
        except CoordinationUnavailable as exc:  # the lease, checked above, decides
            log.debug("progress of transfer %s not recorded: %s", self.record.id, exc)
