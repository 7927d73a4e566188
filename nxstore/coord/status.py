"""What `nxstore site status` shows: the leader, the workers and their leases, the transfers."""

from __future__ import annotations

from dataclasses import dataclass

from .election import LeaderInfo, leader
from .etcd import Etcd
from .keys import SiteKeys
from .registry import WorkerInfo, workers
from .transfers import Transfer, transfers


@dataclass(frozen=True)
class SiteStatus:
    etcd: str
    leader: LeaderInfo | None
    workers: list[WorkerInfo]
    transfers: list[Transfer]


def site_status(etcd: Etcd, keys: SiteKeys) -> SiteStatus:
    """The site's coordination state as etcd holds it now. Raises CoordinationUnavailable
    (etcd unreachable: then no worker can prove a lease, so none coordinates)."""
    return SiteStatus(etcd.url, leader(etcd, keys), workers(etcd, keys), transfers(etcd, keys))
