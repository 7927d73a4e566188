"""Two (or more) sites for the failover tests: each site's cluster is either open in the
test process (the operator's console: it runs the workflows, on the fake clock) or
served by a real `nxstore serve` process (tests/replication/sites_helper.Daemon), never
both (a cluster is opened by one process at a time).

    sites = Sites(tmp_path, clock, ["france", "canada"])
    fr = sites.open("france")          # stops france's daemon if it runs
    sites.serve("canada")              # closes canada if open, starts its daemon and
                                       # points every open site's "canada" entry at it
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import nxstore
from nxstore.errors import NotFound

sys.path.insert(0, str(Path(__file__).parent.parent / "replication"))
from sites_helper import Daemon  # noqa: E402

BS = 4096
SECRET = "failover test secret"
NETWORKS = {"VLAN50": "VLAN60"}  # france -> canada network mapping


class Sites:
    def __init__(self, tmp_path, clock, names: list[str]) -> None:
        self.tmp = Path(tmp_path)
        self.clock = clock
        self.names = names
        self.secret_file = str(self.tmp / "secret")
        Path(self.secret_file).write_text(SECRET)
        self.open_clusters: dict[str, nxstore.Cluster] = {}
        self.daemons: dict[str, Daemon] = {}
        self.ports: dict[str, str] = {}
        for name in names:
            nxstore.Cluster.create(self.path(name), block_size=BS, background=False,
                                   site_name=name).close()

    def path(self, name: str) -> str:
        return str(self.tmp / name)

    def mapping(self, frm: str, to: str) -> dict[str, str]:
        if (frm, to) == ("france", "canada"):
            return dict(NETWORKS)
        if (frm, to) == ("canada", "france"):
            return {v: k for k, v in NETWORKS.items()}
        return {}

    def _point(self, c: nxstore.Cluster) -> None:
        """(Re)configure every other site in `c` at its current daemon address (a dead
        port when it is not served: connections are refused)."""
        for other in self.names:
            if other == c.site_name:
                continue
            addr = self.ports.get(other, "127.0.0.1:1")
            if other in self.daemons and self.daemons[other].running:
                addr = self.daemons[other].address
            with contextlib.suppress(NotFound):
                c.remove_remote_site(other)
            c.add_remote_site(other, addr, SECRET,
                              network_mapping=self.mapping(c.site_name, other))

    def open(self, name: str) -> nxstore.Cluster:
        if name in self.open_clusters:
            return self.open_clusters[name]
        d = self.daemons.pop(name, None)
        if d is not None and d.running:
            d.stop()
        c = nxstore.Cluster.open(self.path(name), background=False, clock=self.clock)
        self._point(c)
        self.open_clusters[name] = c
        return c

    def close(self, name: str) -> None:
        c = self.open_clusters.pop(name, None)
        if c is not None:
            c.close()

    def serve(self, name: str, point: bool = True) -> Daemon:
        """Close `name` if open, configure its peers in it (unless not `point`), start
        its daemon, and point the open clusters at it."""
        self.close(name)
        if point:
            c = nxstore.Cluster.open(self.path(name), background=False, clock=self.clock)
            self._point(c)
            c.close()
        d = Daemon.start(self.path(name), self.secret_file)
        self.daemons[name] = d
        self.ports[name] = d.address
        for c in self.open_clusters.values():
            self._point(c)
        return d

    def stop(self, name: str) -> None:
        d = self.daemons.pop(name, None)
        if d is not None:
            d.stop()

    def kill(self, name: str) -> None:
        d = self.daemons.pop(name, None)
        if d is not None:
            d.kill()

    def cleanup(self) -> None:
        for name in list(self.open_clusters):
            with contextlib.suppress(Exception):
                self.close(name)
        for d in self.daemons.values():
            d.cleanup()


def image(vd_or_snap) -> bytes:
    return vd_or_snap.read(0, vd_or_snap.size)


def images(c: nxstore.Cluster, names: list[str]) -> dict[str, bytes]:
    return {n: image(c.vdisk(n)) for n in names}


def fill(vd, seed: int, blocks: list[int]) -> None:
    """Write block i of `vd` with bytes derived from (seed, i)."""
    for i in blocks:
        vd.write(i * BS, (seed * 1_000_003 + i).to_bytes(8, "little") * (BS // 8))

