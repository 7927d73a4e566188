"""Availability zones for the Leap tests, in the test process.

Each zone is a real cluster opened here and served on 127.0.0.1 by a replication target
running on its own event-loop thread (what `nxstore serve` runs, minus the admin socket
and the scheduler), so zones reach each other over real authenticated connections while
the test drives every zone's library API on one fake clock:

    z = Zones(tmp_path, clock)
    fr, ca = z.add("france"), z.add("canada")
    fr.connect_zone("canada", z.address("canada"), SECRET)
    z.kill("france")       # stop serving and drop the cluster without closing it cleanly
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import nxstore
from nxstore.replication.auth import SiteIdentity
from nxstore.replication.target import ReplicationTarget
from nxstore.replication.transport import serve

BS = 4096
SECRET = "leap zones test secret"


class ServedZone:
    def __init__(self, path: str, clock, create: bool, port: int = 0,
                 background: bool = False) -> None:
        if create:
            nxstore.Cluster.create(path, block_size=BS, background=False,
                                   site_name=Path(path).name).close()
        self.cluster = nxstore.Cluster.open(path, background=background, clock=clock)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(port), self.loop).result(30)
        self.address = f"127.0.0.1:{self.server.port}"
        self.cluster.set_endpoint(self.address, SECRET)

    async def _start(self, port: int):
        c = self.cluster
        return await serve("127.0.0.1", port, ReplicationTarget(c).handle,
                           identity=SiteIdentity(c.id, c.site_name), secret=SECRET)

    def stop_serving(self) -> None:
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)

    def close(self) -> None:
        self.stop_serving()
        self.cluster.close()


class Zones:
    def __init__(self, tmp_path, clock) -> None:
        self.tmp = Path(tmp_path)
        self.clock = clock
        self.served: dict[str, ServedZone] = {}
        self.ports: dict[str, int] = {}  # a zone that comes back keeps its address

    def path(self, name: str) -> str:
        return str(self.tmp / name)

    def add(self, name: str, background: bool = False) -> nxstore.Cluster:
        """Create zone `name` (or reopen it) and serve it (at its old address if it had one);
        `background`: with the drain and the Metro threads running."""
        z = ServedZone(self.path(name), self.clock, create=not Path(self.path(name)).exists(),
                       port=self.ports.get(name, 0), background=background)
        self.served[name] = z
        self.ports[name] = z.server.port
        return z.cluster

    def address(self, name: str) -> str:
        return self.served[name].address

    def pair_all(self) -> None:
        """Pair every two zones (from the first of each pair)."""
        names = sorted(self.served)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                self.served[a].cluster.connect_zone(b, self.address(b), SECRET)

    def down(self, name: str) -> None:
        """Close zone `name` (it stops answering; its data stays for `add` to reopen)."""
        self.served.pop(name).close()

    def close(self) -> None:
        for z in list(self.served.values()):
            with contextlib.suppress(Exception):
                z.close()
        self.served.clear()
