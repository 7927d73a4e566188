"""`nxstore serve PATH --etcd URL --worker NAME`: one of several workers serving one site.

Every worker joins the site in etcd with its own lease (nxstore.coord.registry) and
campaigns for the leader key (nxstore.coord.election). The leader alone opens the cluster
(the engine admits one process at a time: its directory's LOCK is flock()ed), serves
replication and the admin socket on `--listen`, runs the schedules (their replications
recorded in etcd: nxstore.coord.schedules) and runs the transfers queued in etcd
(nxstore.coord.transfers); the other workers wait on etcd's watch of the
leader key and campaign the moment it is deleted. The leader stops coordinating the moment
its lease is no longer proven: no schedule pass starts, the transfer in progress stops at
its next progress report, the cluster is closed (its lock released) and the worker joins
again with a new lease. A worker that cannot reach etcd never opens the cluster. A worker
that dies (even SIGKILL) leaves the leader key to its lease: another worker leads within
the lease TTL of the death (nxstore.coord.lease: etcd's lease is a second shorter, for
etcd's expiry sweep and the campaign) and resumes the transfers it left.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

from ..errors import AlreadyExists, CoordinationUnavailable, InvalidArgument, Locked
from .serve import (
    check_serve_settings,
    close_served,
    run_due_schedules,
    serve_open_cluster,
    stop_on_signals,
)

if TYPE_CHECKING:
    import asyncio
    import ssl

    from ..cluster import Cluster
    from ..coord.election import Leadership
    from ..coord.etcd import Etcd
    from ..coord.keys import SiteKeys
    from ..coord.lease import WorkerLease
    from .serve import FileClock

log = logging.getLogger(__name__)

# The engine (about 0.4 s to import), the jobs and the replication server of a leader.
_LEADER_MODULES = ("nxstore.cluster", "nxstore.coord.schedules", "nxstore.coord.transfers",
                   "nxstore.replication.target", "nxstore.replication.transport")
CAMPAIGN_RETRY_S = 0.2  # a worker whose campaign could not reach etcd tries again this often
JOIN_RETRY_S = 1.0      # a worker that cannot reach etcd tries again this often
FENCE_CHECK_S = 0.05    # the leader looks at its lease's deadline this often


def serve_site_worker(path: str, listen: str, secret: str, *, etcd_url: str, worker: str,
                      prefix: str, lease_ttl: int, tls: ssl.SSLContext | None = None,
                      schedule_interval: float, clock_file: str | None = None) -> None:
    """Serve the site at `path` as worker `worker` of the site coordinated in etcd at
    `etcd_url` under `prefix` (module docstring) until SIGTERM or SIGINT. Raises
    InvalidArgument (bad settings), AlreadyExists (a live worker still holds that name
    after a lease TTL)."""
    import asyncio

    from ..coord.etcd import Etcd
    from ..coord.keys import SiteKeys, check_name
    from ..coord.lease import MIN_TTL_S

    check_name("worker", worker)
    keys = SiteKeys(prefix)
    settings = check_serve_settings(listen, secret, schedule_interval, clock_file)
    if not isinstance(lease_ttl, int) or lease_ttl < MIN_TTL_S:
        raise InvalidArgument(f"lease TTL must be whole seconds >= {MIN_TTL_S}, not {lease_ttl!r}")
    etcd = Etcd(etcd_url)
    site = _Worker(path, listen, secret, tls, schedule_interval, settings, etcd, keys, worker,
                   lease_ttl)
    try:
        asyncio.run(site.run())
    finally:
        etcd.close()


class _Worker:
    def __init__(self, path: str, listen: str, secret: str, tls: ssl.SSLContext | None,
                 schedule_interval: float, settings: tuple[str, int, FileClock | None],
                 etcd: Etcd, keys: SiteKeys, name: str, ttl: int) -> None:
        self.path = path
        self.listen = listen
        self.secret = secret
        self.tls = tls
        self.schedule_interval = schedule_interval
        self.host, self.port, self.clock = settings
        self.etcd = etcd
        self.keys = keys
        self.name = name
        self.ttl = ttl

    async def run(self) -> None:
        import asyncio

        stop = stop_on_signals()
        # What leading needs, imported while standing by: a takeover does not wait for it.
        await asyncio.to_thread(lambda: [importlib.import_module(m) for m in _LEADER_MODULES])
        lost: WorkerLease | None = None
        while not stop.is_set():
            lease = await self._join(stop, lost)
            if lease is None:
                return
            try:
                await self._campaign(lease, stop)
            finally:
                await asyncio.to_thread(lease.close)
            lost = lease

    async def _join(self, stop: asyncio.Event, lost: WorkerLease | None) -> WorkerLease | None:
        """Register with a new lease; retries while etcd is unreachable (and, after the
        `lost` lease, while its key lingers). None on stop. The lost lease is revoked first:
        this worker stopped coordinating when it lost it, and its keys (the leader key
        among them) would otherwise stay until etcd itself sees it expire."""
        import asyncio

        from ..coord.lease import WorkerLease
        from ..coord.registry import register

        said = ""
        # A process of the same name that just died leaves its key for up to a TTL.
        patience = time.monotonic() + self.ttl + 1
        while not stop.is_set():
            lease = None
            try:
                if lost is not None:
                    with contextlib.suppress(CoordinationUnavailable):  # expired already
                        await asyncio.to_thread(self.etcd.revoke, lost.id)
                lease = await asyncio.to_thread(WorkerLease.grant, self.etcd, self.ttl)
                await asyncio.to_thread(register, self.etcd, self.keys, self.name, lease,
                                        self.listen)
            except (CoordinationUnavailable, AlreadyExists) as exc:
                if lease is not None:
                    with contextlib.suppress(CoordinationUnavailable):
                        await asyncio.to_thread(self.etcd.revoke, lease.id)
                if isinstance(exc, AlreadyExists) and lost is None and \
                        time.monotonic() > patience:
                    raise
                if str(exc) != said:
                    said = str(exc)
                    log.warning("worker %s not coordinating (retrying): %s", self.name, exc)
                await _wait(stop, JOIN_RETRY_S)
                continue
            lease.start()
            log.info("worker %s joined the site at %s (lease %x, TTL %d s)", self.name,
                     self.etcd.url, lease.id, lease.ttl)
            return lease
        return None

    async def _campaign(self, lease: WorkerLease, stop: asyncio.Event) -> None:
        """Campaign until elected, lead, and return when the lease is lost or on stop. A
        lost campaign waits on etcd's watch of the leader key and campaigns again when it is
        deleted; the watch is bounded by the lease TTL so the lease's validity is looked at
        again meanwhile."""
        import asyncio

        from ..coord.election import Leadership

        lead = Leadership(self.etcd, self.keys, self.name, lease)
        while not stop.is_set() and lease.valid():
            try:
                if not await asyncio.to_thread(lead.campaign):
                    watch = await asyncio.to_thread(lead.vacancy_watch)
                    if watch is not None:
                        await _until(stop, asyncio.to_thread(watch.wait, lease.ttl),
                                     watch.cancel)
                    continue
            except CoordinationUnavailable as exc:
                log.debug("campaign: %s", exc)
                await _wait(stop, CAMPAIGN_RETRY_S)
                continue
            try:
                await self._lead(lead, stop)
            finally:
                await asyncio.to_thread(lead.resign)

    async def _lead(self, lead: Leadership, stop: asyncio.Event) -> None:
        """Open the cluster and serve it while the leadership holds and until stop."""
        import asyncio

        from ..cluster import Cluster
        from ..coord.schedules import ScheduleRecords
        from ..coord.transfers import TransferRunner

        ended = asyncio.Event()
        watchdog = asyncio.create_task(_watch(lead.holds, stop, ended))
        try:
            cluster = await self._open(Cluster, ended)
            if cluster is None:
                return
            try:
                runner = TransferRunner(cluster, self.etcd, self.keys, lead)
                records = ScheduleRecords(cluster, self.etcd, self.keys, lead,
                                          self.clock or time.time)
                await serve_open_cluster(
                    cluster, self.host, self.port, self.secret, self.tls,
                    self.schedule_interval, ended, fence=lead.holds, jobs=[runner.run],
                    schedule_pass=lambda c: records.run_pass(partial(run_due_schedules, c)))
            finally:
                await asyncio.to_thread(close_served, cluster)
            if not stop.is_set():
                log.warning("worker %s stopped coordinating: its lease is no longer proven",
                            self.name)
        finally:
            ended.set()
            await watchdog

    async def _open(self, cluster_class: type[Cluster], ended: asyncio.Event) -> Cluster | None:
        """The cluster, once the previous leader's process has let it go (its lock is
        released when it closes the cluster or dies); None if the leadership ends first."""
        import asyncio

        said = False
        while not ended.is_set():
            try:
                return await asyncio.to_thread(cluster_class.open, self.path, clock=self.clock)
            except Locked as exc:
                if not said:
                    said = True
                    log.info("waiting for the cluster: %s", exc)
            await _wait(ended, FENCE_CHECK_S)
        return None


async def _watch(holds: Callable[[], bool], stop: asyncio.Event, ended: asyncio.Event) -> None:
    """Set `ended` as soon as `holds()` is False or `stop` is set."""
    while not ended.is_set():
        if stop.is_set() or not holds():
            ended.set()
            return
        await _wait(ended, FENCE_CHECK_S)


async def _until(stop: asyncio.Event, work: Awaitable[object],
                 cancel: Callable[[], None]) -> None:
    """Wait for `work`; if `stop` is set first, `cancel()` it and wait for it to end."""
    import asyncio

    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        cancel()
    await task


async def _wait(event: asyncio.Event, seconds: float) -> None:
    import asyncio

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)

