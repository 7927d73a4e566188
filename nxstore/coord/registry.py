"""The site's workers: each registers under its name with its own lease (the key goes when
the lease does), and anyone may list them with the seconds their leases have left."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from ..errors import AlreadyExists
from .etcd import Etcd, Guard, Put
from .keys import SiteKeys, encode
from .lease import WorkerLease


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    host: str
    pid: int
    listen: str
    started_at: float
    lease: int
    lease_ttl: int  # seconds left, as etcd says (-1: expired)


def register(etcd: Etcd, keys: SiteKeys, name: str, lease: WorkerLease, listen: str) -> None:
    """Register worker `name` under `lease`. Raises AlreadyExists (a live worker of that name
    holds the key: two processes must not share a name), CoordinationUnavailable."""
    key = keys.worker(name)
    value = encode({"worker": name, "host": socket.gethostname(), "pid": os.getpid(),
                    "listen": listen, "started_at": time.time()})
    if not etcd.txn([Guard(key, 0)], [Put(key, value, lease.id)]):
        raise AlreadyExists(f"worker {name!r} is already registered (another live process "
                            "uses that name); pick another --worker name")


def workers(etcd: Etcd, keys: SiteKeys) -> list[WorkerInfo]:
    """The registered workers, by name, each with its lease's remaining seconds."""
    out = []
    for entry in etcd.get_prefix(keys.workers):
        v = entry.json()
        ttl = etcd.time_to_live(entry.lease) if entry.lease else -1
        out.append(WorkerInfo(str(v.get("worker", "")), str(v.get("host", "")),
                              int(v.get("pid", 0)), str(v.get("listen", "")),
                              float(v.get("started_at", 0)), entry.lease, ttl))
    return out
