"""Two (or more) sites for the failover tests: each site's cluster is either open in the
test process (the operator's console: it runs the workflows, on the fake clock) or
served by a real `nxstore serve` process (tests/replication/sites_helper.Daemon), never
both (a cluster is opened by one process at a time).

    sites = Sites(tmp_path, clock, ["france", "canada"])
    fr = sites.open("france")          # stops france's daemon if it runs
    sites.serve("canada")              # closes canada if open, starts its daemon and
                                       # points every open site's "canada" entry at it
    sites.serve("uk", schedules=0.05)  # a daemon that runs its schedules every 0.05 s
    sites.advance(3600)                # the fake clock, and the daemons' clock file

Daemons read the fake clock from a clock file (`nxstore serve --clock-file`); their
scheduler is off unless `schedules` is given.
"""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import timedelta
from pathlib import Path

import nxstore
from nxstore.errors import NotFound

sys.path.insert(0, str(Path(__file__).parent.parent / "replication"))
from sites_helper import Daemon  # noqa: E402

BS = 4096
SIZE = 64 * BS
VDISKS = ["web-os", "app-os", "db-os", "db-data"]
SECRET = "failover test secret"
NETWORKS = {"VLAN50": "VLAN60"}  # france -> canada network mapping


class Sites:
    def __init__(self, tmp_path, clock, names: list[str]) -> None:
        self.tmp = Path(tmp_path)
        self.clock = clock
        self.names = names
        self.secret_file = str(self.tmp / "secret")
        Path(self.secret_file).write_text(SECRET)
        Path(self.secret_file).chmod(0o600)  # nxstore refuses a secret file others can read
        self.clock_file = str(self.tmp / "clock")
        self._write_clock()
        self.open_clusters: dict[str, nxstore.Cluster] = {}
        self.daemons: dict[str, Daemon] = {}
        self.ports: dict[str, str] = {}
        #: (from site, to site) -> vstore mapping of that remote site entry (default none)
        self.vstore: dict[tuple[str, str], dict[str, str]] = {}
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
                              network_mapping=self.mapping(c.site_name, other),
                              vstore_mapping=self.vstore.get((c.site_name, other), {}))

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

    def _write_clock(self) -> None:
        tmp = self.clock_file + ".tmp"
        Path(tmp).write_text(repr(self.clock()))
        os.replace(tmp, self.clock_file)  # a daemon never reads half a number

    def advance(self, seconds: float) -> None:
        """Move the fake clock and the daemons' clock file."""
        self.clock.advance(seconds)
        self._write_clock()

    def serve(self, name: str, point: bool = True, schedules: float = 0.0,
              port: int = 0) -> Daemon:
        """Close `name` if open, configure its peers in it (unless not `point`), start
        its daemon (on `port`, 0: any; running its schedules every `schedules` seconds,
        0: never), and point the open clusters at it."""
        self.close(name)
        if point:
            c = nxstore.Cluster.open(self.path(name), background=False, clock=self.clock)
            self._point(c)
            c.close()
        self._write_clock()
        d = Daemon.start(self.path(name), self.secret_file, "--clock-file", self.clock_file,
                         "--schedule-interval", str(schedules),
                         "--listen", f"127.0.0.1:{port}")  # the last --listen wins
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



def setup_pd(fr: nxstore.Cluster, schedule: bool = True):
    """Three VMs (db has two vDisks; app+db a CG) in pd-web, hourly keep 2 + 2 at canada."""
    vds = {n: fr.create_vdisk(n, SIZE) for n in VDISKS}
    for i, n in enumerate(VDISKS):
        fill(vds[n], i + 1, range(0, 64, 3))
    web = fr.create_vm("web", vdisks=[vds["web-os"]], nics=[{"network": "VLAN50"}],
                       categories={"tier": "web"})
    app = fr.create_vm("app", vdisks=[vds["app-os"]], nics=[{"network": "VLAN50"}])
    db = fr.create_vm("db", vdisks=[vds["db-os"], vds["db-data"]], nics=[{"network": "VLAN7"}],
                      power="off")
    pd = fr.create_protection_domain("pd-web", entities=[web, app, db])
    pd.add_consistency_group("app+db", [app, db])
    if schedule:
        pd.add_schedule(every=timedelta(hours=1), keep_local=2, keep_remote={"canada": 2})
    return pd
