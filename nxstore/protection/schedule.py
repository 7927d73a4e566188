"""Schedules and retention: PD snapshots taken from the cluster clock.

A schedule fires on slots `start + k * every`. A schedule added without a `start` is
anchored by the first scheduler pass that sees it, on the clock that pass runs on: its
first slot is that moment. So a schedule made offline (real clock) and then run by
`nxstore serve --clock-file` (simulated clock) fires on the simulated clock, and a
schedule shipped to a peer before its first run is anchored where it first runs.
`run_schedules()` runs every
enabled schedule of every active PD whose next slot has come: ONE PD snapshot
however many slots were missed (downtime: one catch-up snapshot, not a burst;
the skipped slots are counted in the run record), then the next slot is the
first one after now. The snapshot and the advanced slot commit in one
transaction, so a crash never runs a slot twice or loses one silently.

After the snapshot, for each site in `keep_remote`: replicate it; only if that
succeeded, apply the schedule's remote retention there (never before: a failed
transfer leaves the remote copies as they were). Then local retention keeps the
newest `keep_local` snapshots OF THAT SCHEDULE and deletes the older ones, except
the newest snapshot replicated to each of the schedule's sites while that site's
replication is failing (the base of the next incremental transfer), which is kept
until a newer one gets through.

Remote retention is per schedule and site, like local retention. When a schedule
gets a snapshot to a site, every PD snapshot of that schedule kept here that the site
holds (asked, so a NearSync seed, snapshots composed there and those a migration
carried over from there count too) is recorded here (`pd_remote_copies`: schedule,
site, name, time, member vDisks). A record outlives local retention deleting the
snapshot here: the copy there lives on. The copies beyond the newest
`keep_remote[site]` are deleted there by name
(`replication.source.delete_remote_snapshots`), then forgotten here. So two
schedules replicating to one site each keep their own count, and ad-hoc snapshots
and other schedules' copies there are never touched. The site refuses to delete its
newest replica snapshot of a vDisk (the base of the next incremental transfer). A
copy whose deletion failed stays recorded and is deleted by a later run; a schedule
removed (`remove_schedule`) forgets its copies, which then stay at their sites until
deleted by hand (`Cluster.prune_remote`). NearSync schedules share this code
(nxstore.nearsync.driver).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..errors import InvalidArgument, NotFound, NxError
from ..replication.source import delete_remote_snapshots, remote_snapshot_names
from ..store.catalog import Catalog, register_table
from .domain import ACTIVE, ProtectionDomain, _check_sites, list_protection_domains
from .hooks import HookFailure
from .pdsnapshot import PDSnapshot, delete_pd_snapshots, replicate_pd_snapshot, take_pd_snapshot
from .rows import PDReplicationRow, PDScheduleRow, PDSnapshotRow

if TYPE_CHECKING:
    from .manager import ProtectionManager

log = logging.getLogger(__name__)

MIN_INTERVAL = 60.0  # seconds: intervals are whole minutes (minutes, hours, days)
UNANCHORED = 0.0     # next_due of a schedule no scheduler pass has seen yet (no `start`)


@dataclass
class PDRemoteCopyRow:
    """PD snapshot `name` of schedule `schedule_id` (taken at `created_at`, cluster clock)
    reached remote `site` and counts against the schedule's keep_remote[site] there;
    `vdisks` JSON list of its member vDisks (whose replicas hold it there)."""

    id: int
    schedule_id: int
    site: str
    name: str
    created_at: float
    vdisks: str


register_table(PDRemoteCopyRow, "pd_remote_copies", """
CREATE TABLE IF NOT EXISTS pd_remote_copies (id INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule_id INTEGER, site TEXT, name TEXT, created_at REAL, vdisks TEXT,
    ck INTEGER NOT NULL, UNIQUE (schedule_id, site, name))""")


@dataclass(frozen=True)
class Schedule:
    """A PD schedule as stored (a snapshot of the row; re-read via pd.schedules())."""

    id: int
    pd: str
    every: timedelta
    keep_local: int
    keep_remote: dict[str, int]
    app_consistent: bool
    enabled: bool
    next_due: float | None  # cluster-clock seconds of the next slot; None = the first pass
    last_run: float | None  # cluster-clock seconds of the last run, None = never


@dataclass(frozen=True)
class ScheduleRun:
    """What one due schedule did in `run_schedules()`."""

    pd: str
    schedule_id: int
    due_at: float                  # the slot that was due (the oldest missed one)
    ran_at: float
    missed_slots: int              # slots skipped by the catch-up (0 = on time)
    snapshot: str | None           # PD snapshot name; None if it could not be taken
    consistency: str | None        # "application" | "crash"
    hook_failures: tuple[HookFailure, ...] = ()
    replicated: tuple[str, ...] = ()                      # sites the snapshot reached
    replication_errors: dict[str, str] = field(default_factory=dict)
    pruned_local: tuple[str, ...] = ()                    # PD snapshots deleted here
    pruned_remote: dict[str, tuple[str, ...]] = field(default_factory=dict)  # site -> vDisk@snap
    error: str | None = None                              # why nothing was taken
    lws: str | None = None         # NearSync: the LWS this run took (shipped to `replicated`)

    @property
    def ok(self) -> bool:
        """What was due was taken, app-consistent if asked, and reached every site."""
        return self.error is None and not self.hook_failures and not self.replication_errors

    @property
    def routine(self) -> bool:
        """A NearSync round that only took and shipped an LWS, every site reached and
        nothing pruned: it recurs every interval, so a log shows it at DEBUG level."""
        return (self.ok and self.lws is not None and self.snapshot is None
                and not self.missed_slots and not self.pruned_local
                and not any(self.pruned_remote.values()))

    def summary(self) -> str:
        """One line for logs and reports: what was taken, where it went, what was pruned."""
        head = f"PD {self.pd} schedule {self.schedule_id}: "
        if self.error is not None:
            return f"{head}nothing taken: {self.error}"
        taken = [f"LWS {self.lws}"] if self.lws else []
        if self.snapshot:
            taken.append(f"snapshot {self.snapshot} ({self.consistency}-consistent)")
        parts = [head + (" with ".join(taken) or "nothing taken"),
                 f"{'shipped' if self.lws else 'replicated'} to {', '.join(self.replicated) or '-'}"]
        if self.missed_slots:
            parts.append(f"catch-up for {self.missed_slots} missed slot(s)")
        if self.pruned_local:
            parts.append(f"pruned here {', '.join(self.pruned_local)}")
        for site, names in self.pruned_remote.items():
            if names:
                parts.append(f"pruned at {site} {', '.join(names)}")
        for site, err in self.replication_errors.items():
            parts.append(f"FAILED {site}: {err}")
        parts += [f"hook {f.phase} of {f.vm}: {f.reason}" for f in self.hook_failures]
        return "; ".join(parts)


def interval_text(seconds: float) -> str:
    """An interval as days, hours, minutes and seconds: 10 -> '10s', 5400 -> '1h30m'."""
    whole, frac = divmod(float(seconds), 1.0)
    parts, rest = [], int(whole)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    if rest or frac or not parts:
        parts.append(f"{rest + frac:g}s")
    return "".join(parts)


def _to_schedule(pd_name: str, row: PDScheduleRow) -> Schedule:
    return Schedule(row.id, pd_name, timedelta(seconds=row.every), row.keep_local,
                    json.loads(row.keep_remote), row.app_consistent, row.enabled,
                    None if row.next_due == UNANCHORED else row.next_due, row.last_run or None)


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{what} must be a positive int (at least 1), not {value!r}")
    return value


def add_schedule(pd: ProtectionDomain, every: timedelta, keep_local: int,
                 keep_remote: dict[str, int] | None = None, app_consistent: bool = False,
                 start: float | datetime | None = None) -> Schedule:
    """Add a schedule to `pd`: a PD snapshot every `every` (a timedelta of whole
    minutes: minutes, hours, days), the newest `keep_local` of them kept here and
    `keep_remote[site]` at each site (each snapshot is replicated there).
    `app_consistent` runs the VMs' hooks around each snapshot. The first slot is
    `start` (cluster-clock seconds after the epoch or an aware datetime; default: the
    first scheduler pass, on its clock: see the module docstring).

    Raises InvalidArgument (interval not a positive whole number of minutes, a
    keep count below 1, bad types), NotFound (unknown site). Several schedules per
    PD are fine. Durable on return."""
    if not isinstance(every, timedelta):
        raise InvalidArgument(f"every must be a timedelta (minutes, hours, days), not {every!r}")
    seconds = every.total_seconds()
    if (seconds < MIN_INTERVAL or seconds % MIN_INTERVAL) and not (
            keep_remote and any(m.accepts_interval(pd, seconds) for m in pd._mgr.modes)):
        raise InvalidArgument(f"every must be a positive whole number of minutes (whole seconds "
                              f"for a NearSync schedule, which has remote sites), not "
                              f"{interval_text(seconds)}")
    _check_count(keep_local, "keep_local")
    keep_remote = dict(keep_remote or {})
    if not all(isinstance(k, str) for k in keep_remote):
        raise InvalidArgument("keep_remote maps remote site names to counts")
    for site, n in keep_remote.items():
        _check_count(n, f"keep_remote[{site!r}]")
    _check_sites(pd._mgr, list(keep_remote))
    if not isinstance(app_consistent, bool):
        raise InvalidArgument(f"app_consistent must be a bool, not {app_consistent!r}")
    mgr = pd._mgr
    now = mgr.now()
    if start is None:
        first = UNANCHORED
    elif isinstance(start, datetime):
        if start.tzinfo is None:
            raise InvalidArgument("start must be timezone-aware")
        first = start.timestamp()
    elif isinstance(start, (int, float)) and not isinstance(start, bool):
        first = float(start)
    else:
        raise InvalidArgument(f"start must be clock seconds or a datetime, not {start!r}")
    if start is not None and not 0 < first < math.inf:
        raise InvalidArgument(f"start must lie after the epoch, not {start!r}")
    with mgr.lock, mgr.catalog.transaction():
        pd_id = pd.id
        others = mgr.catalog.rows(PDScheduleRow, "pd_id = ?", (pd_id,))
        # The creation time identifies the schedule at the PD's other sites
        # (ownership._store_schedules): unique within the PD, by the smallest step.
        created = now
        taken = {o.created_at for o in others}
        while created in taken:
            created = math.nextafter(created, math.inf)
        row = mgr.catalog.insert(PDScheduleRow(
            0, pd_id, float(seconds), keep_local, json.dumps(keep_remote, sort_keys=True),
            app_consistent, True, float(first), 0.0, created))
    return _to_schedule(pd.name, row)


def list_schedules(pd: ProtectionDomain) -> list[Schedule]:
    return [_to_schedule(pd.name, r)
            for r in pd._mgr.catalog.rows(PDScheduleRow, "pd_id = ?", (pd.id,))]


def _schedule_row(pd: ProtectionDomain, schedule: Schedule | int) -> PDScheduleRow:
    sid = schedule.id if isinstance(schedule, Schedule) else schedule
    rows = pd._mgr.catalog.rows(PDScheduleRow, "id = ? AND pd_id = ?", (sid, pd.id))
    if not rows:
        raise NotFound(f"protection domain {pd.name!r} has no schedule {sid!r}")
    return rows[0]


def remove_schedule(pd: ProtectionDomain, schedule: Schedule | int) -> None:
    """Remove the schedule; its PD snapshots stay (ad hoc from then on, for retention),
    and its remote copies stay at their sites, no longer counted (module docstring)."""
    cat = pd._mgr.catalog
    with pd._mgr.lock, cat.transaction():
        row = _schedule_row(pd, schedule)
        for copy in cat.rows(PDRemoteCopyRow, "schedule_id = ?", (row.id,)):
            cat.delete(PDRemoteCopyRow, copy.id)
        cat.delete(PDScheduleRow, row.id)


def set_enabled(pd: ProtectionDomain, enabled: bool) -> None:
    """Enable/disable all of the PD's schedules. Re-enabling does not replay the
    slots missed meanwhile: the next run takes one catch-up snapshot."""
    with pd._mgr.lock, pd._mgr.catalog.transaction():
        for row in pd._mgr.catalog.rows(PDScheduleRow, "pd_id = ?", (pd.id,)):
            if row.enabled != bool(enabled):
                row.enabled = bool(enabled)
                pd._mgr.catalog.update(row)


# -- the scheduler ---------------------------------------------------------------------------

def run_schedules(mgr: ProtectionManager) -> list[ScheduleRun]:
    """Run every due schedule once (see module docstring); return what ran, in
    order. Never raises for one schedule's failure: it is in its ScheduleRun.

    The protection lock is held while a snapshot is taken and while local retention
    runs, never across a network call: `nxstore serve` answers PD requests of its
    peers while its scheduler runs, and two daemons replicating to each other at the
    same moment would otherwise each wait for the other's lock."""
    with mgr.lock:
        now = mgr.now()
        due = [(pd, row.id) for pd in list_protection_domains(mgr) if pd.state == ACTIVE
               for row in mgr.catalog.rows(PDScheduleRow, "pd_id = ?", (pd.id,))
               if row.enabled and row.next_due <= now]
    runs = [_run_one(pd, sid, now) for pd, sid in due]
    return [r for r in runs if r is not None]


def _still_due(pd: ProtectionDomain, schedule_id: int, now: float) -> PDScheduleRow | None:
    """The schedule row if it is still due and its PD active (a peer's request may
    have demoted the PD since the scheduler looked); else None. Under mgr.lock."""
    rows = pd._mgr.catalog.rows(PDScheduleRow, "id = ?", (schedule_id,))
    try:
        active = pd.state == ACTIVE
    except NotFound:  # the PD was deleted meanwhile
        return None
    return rows[0] if active and rows and rows[0].enabled and rows[0].next_due <= now else None


def _advance(row: PDScheduleRow, now: float) -> int:
    """Move `row.next_due` to the first slot after `now`; return the slots skipped."""
    slots = math.floor((now - row.next_due) / row.every) + 1
    row.next_due += slots * row.every
    if row.next_due <= now:  # float rounding
        row.next_due += row.every
        slots += 1
    row.last_run = now
    return slots - 1


def _run_one(pd: ProtectionDomain, schedule_id: int, now: float) -> ScheduleRun | None:
    mgr = pd._mgr
    with mgr.lock:
        row = _still_due(pd, schedule_id, now)
        if row is None:
            return None
        if row.next_due == UNANCHORED:
            row.next_due = now  # the first pass anchors it on its clock (module docstring)
        due = row.next_due
        missed = _advance(row, now)
        # a replication mode (NearSync: LWS shipped instead) may run it: protection.modes
        mode = next((m for m in mgr.modes if m.takes_schedule(pd, row)), None)
        try:
            snap = None if mode else take_pd_snapshot(
                pd, name=None, schedule_id=row.id, app_consistent=row.app_consistent,
                on_commit=lambda cat: cat.update(row))
        except NxError as exc:
            log.error("PD %s schedule %d: snapshot failed: %s", pd.name, row.id, exc)
            with mgr.catalog.transaction():
                mgr.catalog.update(row)  # do not retry the slot in a tight loop
            return ScheduleRun(pd.name, row.id, due, now, missed, None, None, error=str(exc))
        if snap is None:
            with mgr.catalog.transaction():
                mgr.catalog.update(row)  # the slot is taken
    if mode is not None:
        return mode.run_schedule(pd, row, now, due, missed)
    replicated, errors, pruned_remote = [], {}, {}
    for site, keep in json.loads(row.keep_remote).items():
        try:
            replicate_pd_snapshot(mgr, snap, site)
        except NxError as exc:
            log.error("PD %s: replication of %s to %s failed: %s", pd.name, snap.name, site, exc)
            errors[site] = str(exc)
            continue
        replicated.append(site)
        try:
            pruned_remote[site] = prune_remote_copies(mgr, snap, site, keep)
        except NxError as exc:
            errors[site] = f"replicated, but remote retention failed: {exc}"
    with mgr.lock:
        pruned_local = retain_local(pd, row, list(errors)) if pd.state == ACTIVE else ()
    return ScheduleRun(pd.name, row.id, due, now, missed, snap.name, snap.consistency,
                       tuple(snap.hook_failures), tuple(replicated), errors, pruned_local,
                       pruned_remote)


def prune_remote_copies(mgr: ProtectionManager, snap: PDSnapshot, site: str,
                        keep: int) -> tuple[str, ...]:
    """`snap`, a PD snapshot of a schedule, has reached `site`: record it, and every other
    PD snapshot of that schedule kept here that `site` holds (a NearSync seed, snapshots
    composed there, those a migration carried over from there), as the schedule's copies
    at `site`; then delete there those beyond the newest `keep` (module docstring).
    Returns the `vdisk@snapshot` names deleted. Durable on return. Raises NxError (site
    unreachable, InUse, VersionMismatch: an older build there); the copies then stay
    recorded for the next run."""
    cat = mgr.catalog
    with mgr.lock:
        rows = cat.rows(PDSnapshotRow, "schedule_id = ? AND complete = 1", (snap.schedule_id,))
        members = {r.name: _member_vdisks(r) for r in rows}
        existing = {vd.name for vd in mgr.cluster.vdisks()}
    held = remote_snapshot_names(mgr.cluster, site, sorted(
        {v for names in members.values() for v in names} & existing))
    with mgr.lock, cat.transaction():
        known = {r.name for r in cat.rows(PDRemoteCopyRow, "schedule_id = ? AND site = ?",
                                          (snap.schedule_id, site))}
        for r in rows:
            there = r.name == snap.name or any(r.name in held.get(v, ()) for v in members[r.name])
            if there and r.name not in known:
                cat.insert(PDRemoteCopyRow(0, snap.schedule_id, site, r.name, r.created_at,
                                           json.dumps(members[r.name])))
        mine = sorted(cat.rows(PDRemoteCopyRow, "schedule_id = ? AND site = ?",
                               (snap.schedule_id, site)), key=lambda r: (r.created_at, r.id))
    doomed = mine[:-keep] if len(mine) > keep else []
    if not doomed:
        return ()
    names: dict[str, list[str]] = {}
    for copy in doomed:
        for vdisk in json.loads(copy.vdisks):
            names.setdefault(vdisk, []).append(copy.name)
    deleted = delete_remote_snapshots(mgr.cluster, site, names)
    with mgr.lock, cat.transaction():
        for copy in doomed:
            cat.delete(PDRemoteCopyRow, copy.id)
    return tuple(f"{vdisk}@{name}" for vdisk, done in deleted.items() for name in done)


def _member_vdisks(row: PDSnapshotRow) -> list[str]:
    return [m["vdisk"] for e in json.loads(row.manifest) for m in e["members"]]


def retain_local(pd: ProtectionDomain, row: PDScheduleRow, failing_sites: list[str]
                 ) -> tuple[str, ...]:
    """Delete this schedule's PD snapshots beyond the newest keep_local (keeping the
    last one replicated to each failing site); return the names deleted."""
    mgr = pd._mgr
    mine = [s for s in pd.snapshots() if s.schedule_id == row.id]
    doomed = mine[:-row.keep_local] if len(mine) > row.keep_local else []
    if failing_sites and doomed:
        keep_ids = {_last_replicated(mgr.catalog, pd, site) for site in failing_sites}
        doomed = [s for s in doomed if s.id not in keep_ids]
    if doomed:
        delete_pd_snapshots(mgr, doomed)
    return tuple(s.name for s in doomed)


def _last_replicated(cat: Catalog, pd: ProtectionDomain, site: str) -> int | None:
    ids = {r.id for r in cat.rows(PDSnapshotRow, "pd_id = ? AND complete = 1", (pd.id,))}
    done = [r for r in cat.rows(PDReplicationRow, "site = ?", (site,)) if r.pd_snapshot_id in ids]
    return max(done, key=lambda r: (r.replicated_at, r.pd_snapshot_id)).pd_snapshot_id if done else None
