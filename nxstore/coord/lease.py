"""A worker's etcd lease, kept alive by a thread, and the deadline up to which it is proven.

The deadline is the send time of the last keep-alive etcd answered plus the TTL it granted:
etcd starts that TTL when it receives the request, later than it was sent, so the lease is
alive at least until then whatever the network delays. `valid()` is the proof every act of
coordination checks first; once the deadline passes without a renewal the lease counts as
lost for good (a lease is never trusted again, even if etcd later answers: the worker joins
anew with a new lease).

The TTL a site is configured with (`--lease-ttl`, default 5 s) is the longest the other
workers wait for a dead worker's keys to go: measured from its death, whenever its last
renewal was. etcd deletes an expired lease's keys in a sweep every 0.5 s, so the lease
etcd is asked for is TAKEOVER_MARGIN_S shorter: the last renewal just before a SIGKILL,
the sweep's delay and a standby's campaign (it watches the leader key) then still fit in
the configured TTL.
"""

from __future__ import annotations

import logging
import threading
import time

from ..errors import CoordinationUnavailable, InvalidArgument
from .etcd import Etcd

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 5
# etcd's expiry sweep (every 0.5 s) and the revoke's raft commit, then the watch event, the
# campaign and opening the cluster (0.1 s at most together, measured on a loaded 2-core
# machine: docs/performance.md, issue 18).
TAKEOVER_MARGIN_S = 1
MIN_TTL_S = 3  # an etcd lease of 2 s: etcd grants no less, and a renewal may fail once
# Renewals per TTL: with 3, two renewals in a row may fail before the lease is lost.
RENEWALS_PER_TTL = 3
# A renewal that failed is tried again this soon, not a period later: a request that timed
# out (REQUEST_TIMEOUT_S) has used up most of the period already.
RETRY_S = 0.25


class WorkerLease:
    """One lease: `grant` it, `start` the keep-alive thread, `valid()` while proven,
    `close` revokes it."""

    def __init__(self, etcd: Etcd, lease_id: int, ttl: int, deadline: float) -> None:
        self.etcd = etcd
        self.id = lease_id
        self.ttl = ttl
        self._deadline = deadline
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def grant(cls, etcd: Etcd, ttl: int = DEFAULT_TTL_S) -> WorkerLease:
        """A new lease for a site configured with lease TTL `ttl` seconds (module
        docstring): etcd's lease, and `self.ttl`, are `ttl - TAKEOVER_MARGIN_S` seconds.
        Raises InvalidArgument (ttl < MIN_TTL_S), CoordinationUnavailable."""
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < MIN_TTL_S:
            raise InvalidArgument(f"lease TTL must be whole seconds >= {MIN_TTL_S}, not {ttl!r}")
        sent = time.monotonic()
        lease_id, granted = etcd.grant(ttl - TAKEOVER_MARGIN_S)
        return cls(etcd, lease_id, granted, sent + granted)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._keep_alive, name=f"lease-{self.id:x}",
                                        daemon=True)
        self._thread.start()

    def valid(self) -> bool:
        """Is the lease proven alive now? False for good once it was lost."""
        if self._lost.is_set():
            return False
        if time.monotonic() >= self._deadline:
            self._lose("its deadline passed without a renewal")
            return False
        return True

    def _lose(self, why: str) -> None:
        if self._lost.is_set():
            return
        self._lost.set()
        log.warning("lease %x lost: %s", self.id, why)

    def _keep_alive(self) -> None:
        period = wait = self.ttl / RENEWALS_PER_TTL
        while not self._stop.wait(wait) and self.valid():
            sent = time.monotonic()
            try:
                ttl = self.etcd.keepalive(self.id)
            except CoordinationUnavailable as exc:
                log.warning("lease %x not renewed: %s", self.id, exc)
                wait = min(period, RETRY_S)
                continue  # valid() decides when it is lost
            wait = period
            if ttl <= 0:
                self._lose("etcd says it has expired")
                return
            self._deadline = max(self._deadline, sent + ttl)

    def close(self) -> None:
        """Stop renewing and revoke the lease (its keys go with it); best effort."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if not self._lost.is_set():
            self._lost.set()
            try:
                self.etcd.revoke(self.id)
            except CoordinationUnavailable as exc:
                log.warning("lease %x not revoked (it expires by itself): %s", self.id, exc)
