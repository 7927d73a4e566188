"""Schedule-started replications, recorded in etcd as transfer records (kind "schedule",
nxstore.coord.transfers) so that the next leader resumes those a dead one left.

The leader alone runs the site's schedules: a scheduler pass (`Cluster.run_schedules`)
takes the PD snapshot of every due schedule and replicates it to the schedule's sites in
the same call. `ScheduleRecords.run_pass` wraps each pass:

1. Records an earlier pass left (its leader died or lost its lease during it) are resumed
   first, oldest first, so a site never gets an older snapshot after a newer one: the PD
   snapshot is the first the schedule took at or after the record's `after`. Not taken
   (the leader died before it committed): the slot is still due and this pass takes it.
   Taken and not yet at the site: `ProtectionDomain.replicate` sends it now (the target
   holds the blocks that arrived, so only the rest crosses the wire, and the source finds
   a snapshot the target already applied held: nothing is applied twice). Then the record
   is deleted. The pass does not start until every left record is dealt with.
2. For every due schedule with remote sites, one record per site is written before the
   pass, running, with this leader's attempt; `after` is the cluster clock then.
   NearSync schedules (interval up to `nearsync_config().max_interval`) are not recorded:
   they ship light-weight snapshots every few seconds and resume from their own state.
3. The pass runs. It then deletes its records, whatever the outcome: what a pass did is
   in its schedule-run log lines and in the engine (a failed replication is retried by the
   schedule's next snapshot, as without coordination), and a schedule every minute must
   not grow etcd by a record a minute.

Every write is guarded by the leader's term; a leader that cannot write its records runs
no pass. The replication inside a pass, and a resumed one, is not cut at a frame when the
lease is lost (the engine's scheduler reports no progress); the next leader cannot open
the cluster until the pass has ended and the old process let it go.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import CoordinationUnavailable, LeadershipLost, NotFound, NxError
from .election import Leadership
from .etcd import Etcd
from .keys import SiteKeys
from .transfers import QUEUED, RUNNING, SCHEDULE, Attempt, Transfer, transfers, write

if TYPE_CHECKING:
    from ..cluster import Cluster
    from ..protection.pdsnapshot import PDSnapshot

log = logging.getLogger(__name__)


def schedule_record_id(pd: str, schedule_id: int, after: float, site: str) -> str:
    """Deterministic, like vDisk transfer ids, and never equal to one (another text)."""
    return hashlib.sha256(f"pd:{pd}#{schedule_id}@{after!r}>{site}".encode()).hexdigest()[:20]


def due_replications(cluster: Cluster, now: float) -> list[tuple[str, int, str]]:
    """(PD, schedule id, site) of each site a schedule due at cluster-clock `now` replicates
    to, NearSync schedules excepted (module docstring)."""
    nearsync = cluster.nearsync_config().max_interval
    out = []
    for pd in cluster.protection_domains():
        if pd.state != "active":
            continue
        for s in pd.schedules():
            if not s.enabled or not s.keep_remote or s.every.total_seconds() <= nearsync:
                continue
            if s.next_due is None or s.next_due <= now:
                out += [(pd.name, s.id, site) for site in sorted(s.keep_remote)]
    return out


class ScheduleRecords:
    """The leader's schedule records on `cluster` (module docstring); `clock` is the
    cluster's clock."""

    def __init__(self, cluster: Cluster, etcd: Etcd, keys: SiteKeys, lead: Leadership,
                 clock: Callable[[], float]) -> None:
        self.cluster = cluster
        self.etcd = etcd
        self.keys = keys
        self.lead = lead
        self.clock = clock
        self._said = ""

    def run_pass(self, scheduler_pass: Callable[[], object]) -> None:
        """Resume the records left, record the due replications, run `scheduler_pass`,
        delete its records. Never raises: without its records no pass runs (logged once
        per error)."""
        try:
            self.resume()
            mine = self._record()
        except (LeadershipLost, CoordinationUnavailable) as exc:
            if str(exc) != self._said:
                self._said = str(exc)
                log.warning("schedule pass skipped: %s", exc)
            return
        self._said = ""
        scheduler_pass()
        for t in mine:
            try:
                write(self.etcd, self.keys, self.lead, t, delete=True)
            except (LeadershipLost, CoordinationUnavailable) as exc:
                log.warning("schedule record %s kept for the next leader: %s", t.id, exc)
                return

    def _record(self) -> list[Transfer]:
        now = self.clock()
        due = due_replications(self.cluster, now)
        out = []
        for pd, schedule_id, site in due:
            t = Transfer(schedule_record_id(pd, schedule_id, now, site), "", "", site,
                         state=RUNNING, queued_at=time.time(),
                         attempts=(Attempt(self.lead.worker, self.lead.term),),
                         kind=SCHEDULE, pd=pd, schedule_id=schedule_id, after=now)
            out.append(write(self.etcd, self.keys, self.lead, t, expect=0))
        return out

    def resume(self) -> None:
        """Deal with every schedule record an earlier pass left (module docstring, 1).
        Raises LeadershipLost, CoordinationUnavailable."""
        left = [t for t in transfers(self.etcd, self.keys)
                if t.kind == SCHEDULE and t.state in (QUEUED, RUNNING)]
        for t in sorted(left, key=lambda t: (t.after, t.id)):
            who = t.attempts[-1].worker if t.attempts else "?"
            t = write(self.etcd, self.keys, self.lead,
                      replace(t, attempts=(*t.attempts, Attempt(self.lead.worker,
                                                                self.lead.term))),
                      expect=t.revision)
            snap = self._snapshot(t)
            if snap is None:
                log.info("schedule record %s (%s to %s, left by %s): no snapshot was taken; "
                         "the slot is still due", t.id, t.source, t.site, who)
            elif t.site in snap.replicated_to():
                log.info("schedule record %s (%s snapshot %s to %s, left by %s): already "
                         "there", t.id, t.source, snap.name, t.site, who)
            else:
                self._replicate(t, snap, who)
            write(self.etcd, self.keys, self.lead, t, delete=True)

    def _snapshot(self, t: Transfer) -> PDSnapshot | None:
        """The PD snapshot record `t` is about; None if the schedule never took it (or its
        PD is gone or no longer owned here)."""
        try:
            pd = self.cluster.protection_domain(t.pd)
        except NotFound:
            return None
        if pd.state != "active":
            return None
        taken = [s for s in pd.snapshots()
                 if s.schedule_id == t.schedule_id and s.created_at >= t.after]
        return min(taken, key=lambda s: (s.created_at, s.id)) if taken else None

    def _replicate(self, t: Transfer, snap: PDSnapshot, who: str) -> None:
        if not self.lead.holds():
            raise LeadershipLost(f"worker {self.lead.worker} no longer leads the site")
        log.info("resuming schedule replication %s: PD %s snapshot %s to %s (left by %s)",
                 t.id, t.pd, snap.name, t.site, who)
        try:
            result = self.cluster.protection_domain(t.pd).replicate(snap, t.site)
        except NxError as exc:  # as a failed replication in a pass: the next snapshot retries
            log.warning("schedule replication %s failed: %s", t.id, exc)
            return
        log.info("schedule replication %s done: %d blocks sent, %d already at %s", t.id,
                 result.blocks_sent, result.blocks_deduped, t.site)
