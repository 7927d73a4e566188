"""Ownership of a protection domain under failures: a hypothesis state machine over three
sites (clusters open in the test process, each served by its own replication server
thread, so the PD requests between sites cross real TCP connections).

Rules: writes at an owner, PD snapshots replicated to a peer, migrate (or failback), a
site going down and coming back, activate at a survivor, a full reconnect where every
owner syncs with every site. Invariants: epochs only grow at every site; every owner
reads exactly what was written to it (migrate and activate bring the data a model
predicts: the owner's head at a migrate, the activated snapshot at an activate); after
a full reconnect exactly one site owns the PD.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import threading

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import nxstore
from nxstore.errors import InUse, NotFound
from nxstore.replication.auth import SiteIdentity
from nxstore.replication.target import ReplicationTarget
from nxstore.replication.transport import serve

BS = 4096
BLOCKS = 8
SITES = ("a", "b", "c")
VDISKS = ("d0", "d1")
SECRET = "ownership model secret"


class Server:
    """`cluster`'s replication endpoint on its own event-loop thread (127.0.0.1:port)."""

    def __init__(self, cluster: nxstore.Cluster, port: int = 0) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            serve("127.0.0.1", port, ReplicationTarget(cluster).handle,
                  identity=SiteIdentity(cluster.id, cluster.site_name), secret=SECRET),
            self.loop).result(10)
        self.port = self.server.port

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class OwnershipMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="nxstore-ownership-")
        self.clock = Clock()
        self.c = {s: nxstore.Cluster.create(f"{self.tmp}/{s}", block_size=BS, site_name=s,
                                            background=False, clock=self.clock) for s in SITES}
        self.servers = {s: Server(self.c[s]) for s in SITES}
        self.ports = {s: self.servers[s].port for s in SITES}
        for s in SITES:
            for other in SITES:
                if other != s:
                    self.c[s].add_remote_site(other, f"127.0.0.1:{self.ports[other]}", SECRET)
        a = self.c["a"]
        vm = a.create_vm("vm", vdisks=[a.create_vdisk(n, BLOCKS * BS) for n in VDISKS])
        a.create_protection_domain("pd", entities=[vm])
        self.up = set(SITES)
        #: site -> {vDisk: bytes} for every site that owns the PD: what it must read
        self.heads = {"a": {n: bytes(BLOCKS * BS) for n in VDISKS}}
        #: PD snapshot name -> {vDisk: bytes}: what the snapshot was taken of
        self.snaps: dict[str, dict[str, bytes]] = {}
        self.epochs = {s: 0 for s in SITES}

    def teardown(self) -> None:
        for srv in self.servers.values():
            with contextlib.suppress(Exception):
                srv.close()
        for c in self.c.values():
            with contextlib.suppress(Exception):
                c.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------------
    def pd(self, site: str):
        return self.c[site].protection_domain("pd")

    def state(self, site: str) -> str:
        try:
            return self.pd(site).state
        except NotFound:  # no PD metadata replicated there yet
            return "none"

    def owners(self) -> list[str]:
        return [s for s in SITES if self.state(s) == "active"]

    def read(self, site: str) -> dict[str, bytes]:
        return {n: self.c[site].vdisk(n).read(0, BLOCKS * BS) for n in VDISKS}

    def tick(self) -> None:
        self.clock.now += 60  # distinct snapshot times

    def record_snapshots(self, site: str, content: dict[str, bytes]) -> None:
        """PD snapshots at `site` not seen before were taken of `content` (no write
        happens during an operation)."""
        for snap in self.pd(site).snapshots():
            self.snaps.setdefault(snap.name, dict(content))

    def settle(self) -> None:
        """Owners that learnt during an operation that a peer outranks them demoted."""
        for site in list(self.heads):
            if self.state(site) != "active":
                del self.heads[site]

    def sole_owner(self) -> str | None:
        owners = self.owners()
        return owners[0] if len(owners) == 1 and owners[0] in self.up else None

    # -- rules --------------------------------------------------------------------------------
    @precondition(lambda self: self.heads)
    @rule(data=st.data(), vd=st.sampled_from(VDISKS), block=st.integers(0, BLOCKS - 1),
          value=st.integers(1, 255))
    def write(self, data, vd, block, value):
        site = data.draw(st.sampled_from(sorted(self.heads)))
        v = self.c[site].vdisk(vd)
        v.write(block * BS, bytes([value]) * BS)
        v.flush()  # acknowledged
        img = bytearray(self.heads[site][vd])
        img[block * BS:(block + 1) * BS] = bytes([value]) * BS
        self.heads[site] = {**self.heads[site], vd: bytes(img)}  # recorded contents stay

    @precondition(lambda self: any(s in self.up for s in self.heads) and len(self.up) > 1)
    @rule(data=st.data())
    def snapshot_and_replicate(self, data):
        src = data.draw(st.sampled_from(sorted(s for s in self.heads if s in self.up)))
        dst = data.draw(st.sampled_from(sorted(s for s in self.up if s != src)))
        self.tick()
        content = dict(self.heads[src])
        try:
            self.pd(src).snapshot(replicate_to=[dst])
        except InUse:  # dst owns it at a higher rank: src demoted itself
            assert self.state(src) == "inactive"
        if self.state(src) == "active":
            self.record_snapshots(src, content)
        self.settle()

    @precondition(lambda self: self.sole_owner() is not None and len(self.up) > 1)
    @rule(data=st.data(), failback=st.booleans())
    def migrate(self, data, failback):
        """The sole owner migrates the PD to an up site (failback: reprotect first)."""
        src = self.sole_owner()
        dst = data.draw(st.sampled_from(sorted(s for s in self.up if s != src)))
        self.tick()
        content = self.heads.pop(src)
        pd = self.pd(src)
        res = pd.failback(dst).migrate if failback else pd.migrate(dst)
        assert res.epoch == self.pd(dst).epoch and self.owners() == [dst]
        assert self.read(dst) == content  # no acknowledged write lost
        self.heads[dst] = content
        self.record_snapshots(dst, content)

    @precondition(lambda self: len(self.up) > 1)
    @rule(data=st.data())
    def go_down(self, data):
        site = data.draw(st.sampled_from(sorted(self.up)))
        self.servers.pop(site).close()
        self.up.discard(site)

    @precondition(lambda self: len(self.up) < len(SITES))
    @rule(data=st.data())
    def come_up(self, data):
        site = data.draw(st.sampled_from(sorted(set(SITES) - self.up)))
        self.servers[site] = Server(self.c[site], self.ports[site])
        self.up.add(site)

    @precondition(lambda self: any(s in self.up and s not in self.heads for s in SITES))
    @rule(data=st.data())
    def activate(self, data):
        site = data.draw(st.sampled_from(sorted(s for s in self.up if s not in self.heads)))
        reachable_owner = any(s in self.up for s in self.owners())
        self.tick()
        try:
            res = self.c[site].activate("pd")
        except (InUse, NotFound):
            return  # an owner answers, or nothing complete was replicated here
        assert not reachable_owner, "activated while an owner was reachable"
        self.heads[site] = dict(self.snaps[res.snapshot])
        assert self.read(site) == self.heads[site]  # the activated snapshot, exactly

    @rule()
    def reconnect_and_sync(self):
        for site in sorted(set(SITES) - self.up):
            self.servers[site] = Server(self.c[site], self.ports[site])
        self.up = set(SITES)
        for site in SITES:
            if self.state(site) == "active":
                self.pd(site).sync_ownership()
        self.settle()
        owners = self.owners()
        assert len(owners) == 1, f"owners after everyone synced: {owners}"

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def epochs_only_grow(self):
        for site in SITES:
            if self.state(site) != "none":
                epoch = self.pd(site).epoch
                assert epoch >= self.epochs[site], (site, epoch, self.epochs[site])
                self.epochs[site] = epoch

    @invariant()
    def owners_read_what_was_written(self):
        assert set(self.heads) == set(self.owners())
        for site, content in self.heads.items():
            assert self.read(site) == content


OwnershipMachine.TestCase.settings = settings(max_examples=15, stateful_step_count=15,
                                              deadline=None)
TestOwnership = OwnershipMachine.TestCase
