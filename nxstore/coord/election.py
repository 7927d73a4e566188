"""The site's leader: the worker whose lease holds the leader key.

A worker campaigns by creating the key bound to its lease in a transaction that succeeds
only if the key does not exist; it leads until the lease ends (the key goes with it). The
key's create revision is the leadership's term: every write the leader makes to the
coordination state carries `guard()` (the leader key still has that create revision), so a
worker that lost its lease can change nothing even if it has not noticed yet, and `holds()`
(the lease proven alive, nobody else leads) is checked before every act of coordination.

A worker that lost its campaign waits on etcd's watch of the leader key
(`vacancy_watch`) and campaigns again the moment the key is deleted (its holder's lease
ended or it resigned), not at the next tick of a timer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..errors import CoordinationUnavailable, LeadershipLost
from .etcd import DeletionWatch, Etcd, Guard, Put
from .keys import SiteKeys, encode
from .lease import WorkerLease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaderInfo:
    worker: str
    since: float
    term: int      # the leader key's create revision
    lease: int
    lease_ttl: int  # seconds left, as etcd says (-1: expired)


class Leadership:
    """Worker `worker`'s campaign under `lease`."""

    def __init__(self, etcd: Etcd, keys: SiteKeys, worker: str, lease: WorkerLease) -> None:
        self.etcd = etcd
        self.keys = keys
        self.worker = worker
        self.lease = lease
        self.term = 0  # 0: not leading

    def campaign(self) -> bool:
        """Try once to become the leader; True if this worker leads now. Raises
        CoordinationUnavailable."""
        if not self.lease.valid():
            return False
        value = encode({"worker": self.worker, "since": time.time()})
        term = self.etcd.txn([Guard(self.keys.leader, 0)],
                             [Put(self.keys.leader, value, self.lease.id)])
        if term and self.lease.valid():
            self.term = term
            log.info("worker %s leads the site (term %d)", self.worker, term)
        return bool(self.term)

    def vacancy_watch(self) -> DeletionWatch | None:
        """After a lost campaign: a watch that ends when the leader key now held by another
        worker is deleted (from its last change on, so a deletion before the watch starts
        counts); None if the key is already gone (campaign again now). Raises
        CoordinationUnavailable."""
        rival = self.etcd.get(self.keys.leader)
        if rival is None:
            return None
        return self.etcd.watch_deletion(self.keys.leader, rival.mod_revision + 1)

    def holds(self) -> bool:
        """Is this worker's leadership proven now (campaign won, lease alive)?"""
        return bool(self.term) and self.lease.valid()

    def guard(self) -> Guard:
        """The condition every coordinating write carries. Raises LeadershipLost."""
        if not self.holds():
            raise LeadershipLost(f"worker {self.worker} does not lead the site")
        return Guard(self.keys.leader, self.term)

    def resign(self) -> None:
        """Give the leadership up now (delete the key if it is still this term's)."""
        if self.term:
            try:
                self.etcd.txn([Guard(self.keys.leader, self.term)], deletes=[self.keys.leader])
            except CoordinationUnavailable as exc:
                log.warning("resigning: %s (the lease ends it)", exc)
            self.term = 0


def leader(etcd: Etcd, keys: SiteKeys) -> LeaderInfo | None:
    """The current leader, or None when no worker leads. Raises CoordinationUnavailable."""
    entry = etcd.get(keys.leader)
    if entry is None:
        return None
    v = entry.json()
    ttl = etcd.time_to_live(entry.lease) if entry.lease else -1
    return LeaderInfo(str(v.get("worker", "")), float(v.get("since", 0)),
                      entry.create_revision, entry.lease, ttl)
