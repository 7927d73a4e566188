"""The election and its fence against a model, on a real etcd (hypothesis stateful): any
interleaving of candidates campaigning, leases ending behind a candidate's back (revoked,
as an expiry is seen by etcd) and guarded writes. Invariants: at most one leader; a
campaign wins exactly when nobody leads; a write guarded by a term lands exactly when that
term still leads (a deposed leader that has not noticed changes nothing); terms grow."""

from __future__ import annotations

import itertools

import pytest
from etcd_server import EtcdServer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from nxstore.coord.election import Leadership, leader
from nxstore.coord.etcd import Etcd, Put
from nxstore.coord.keys import SiteKeys
from nxstore.coord.lease import WorkerLease
from nxstore.errors import CoordinationUnavailable

CANDIDATES = 3
LONG_TTL = 600  # no lease ends by time during a run: the machine ends them by revoking
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory):
    with EtcdServer.start(tmp_path_factory.mktemp("etcd")) as server:
        yield server.url


def test_election_and_fence_follow_the_model(etcd_url):
    client = Etcd(etcd_url)

    class Election(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.keys = SiteKeys(f"model{next(_prefixes)}/")
            self.cands: list[Leadership | None] = [None] * CANDIDATES
            self.revoked: set[int] = set()   # lease ids etcd no longer has
            self.leading: int | None = None  # the model: the lease holding the leader key
            self.leader_name = ""
            self.last_term = 0
            self.writes = 0

        @rule(i=st.integers(0, CANDIDATES - 1))
        def join(self, i: int) -> None:
            lease = WorkerLease.grant(client, LONG_TTL)
            self.cands[i] = Leadership(client, self.keys, f"c{i}", lease)

        @rule(i=st.integers(0, CANDIDATES - 1))
        def campaign(self, i: int) -> None:
            c = self.cands[i]
            if c is None or c.term:
                return
            if c.lease.id in self.revoked:
                if self.leading is None:
                    with pytest.raises(CoordinationUnavailable):  # etcd: no such lease
                        c.campaign()
                else:  # the condition fails first: the put and its lease are not looked at
                    assert not c.campaign()
                return
            won = c.campaign()
            assert won == (self.leading is None)
            if won:
                assert c.term > self.last_term
                self.last_term, self.leading, self.leader_name = c.term, c.lease.id, c.worker

        @rule(i=st.integers(0, CANDIDATES - 1))
        def lease_ends(self, i: int) -> None:
            c = self.cands[i]
            if c is None or c.lease.id in self.revoked:
                return
            client.revoke(c.lease.id)  # c is not told: it still believes what it believed
            self.revoked.add(c.lease.id)
            if self.leading == c.lease.id:
                self.leading = None

        @rule(i=st.integers(0, CANDIDATES - 1))
        def guarded_write(self, i: int) -> None:
            c = self.cands[i]
            if c is None or not c.term:
                return
            self.writes += 1
            value = f"{i}:{c.term}:{self.writes}".encode()
            landed = client.txn([c.guard()], [Put(self.keys.prefix + "state", value)])
            assert bool(landed) == (self.leading == c.lease.id and self.last_term == c.term)
            if landed:
                assert client.get(self.keys.prefix + "state").value == value

        @invariant()
        def one_leader_as_etcd_says(self) -> None:
            info = leader(client, self.keys)
            if self.leading is None:
                assert info is None
            else:
                assert info is not None and info.worker == self.leader_name
                assert (info.term, info.lease) == (self.last_term, self.leading)

    try:
        run_state_machine_as_test(Election, settings=settings(
            max_examples=40, stateful_step_count=30, deadline=None,
            suppress_health_check=list(HealthCheck)))
    finally:
        client.close()
