"""How a standby worker notices that the leader is gone, against a real etcd: it waits on
etcd's watch of the leader key and campaigns on the deletion event, not at a timer's tick;
and the lease etcd holds is shorter than the configured TTL by the takeover margin, so a
dead leader's key is gone (etcd's expiry sweep included) within that TTL."""

from __future__ import annotations

import threading
import time

import pytest

from nxstore.coord.election import Leadership
from nxstore.coord.etcd import Etcd
from nxstore.coord.keys import SiteKeys
from nxstore.coord.lease import TAKEOVER_MARGIN_S, WorkerLease
from nxstore.errors import InvalidArgument

TTL = 5
NEVER_S = 60.0  # a wait bound no test reaches: an answer before it came from an event


@pytest.fixture
def site(etcd):
    client = Etcd(etcd.url)
    yield client, SiteKeys("watch/")
    client.close()


def _leader_and_standby(client: Etcd, keys: SiteKeys) -> tuple[Leadership, Leadership]:
    a = Leadership(client, keys, "a", WorkerLease.grant(client, TTL))
    b = Leadership(client, keys, "b", WorkerLease.grant(client, TTL))
    assert a.campaign() and not b.campaign()
    return a, b


def _wait_in_thread(watch) -> tuple[threading.Thread, list]:  # noqa: ANN001
    out: list = []

    def run() -> None:
        start = time.monotonic()
        out.append((watch.wait(NEVER_S), time.monotonic() - start))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_the_standby_wakes_on_the_leader_keys_deletion(site):
    client, keys = site
    a, b = _leader_and_standby(client, keys)
    watch = b.vacancy_watch()
    assert watch is not None
    t, out = _wait_in_thread(watch)
    t.join(0.3)
    assert t.is_alive()  # the leader is alive: nothing wakes the standby
    client.revoke(a.lease.id)  # what etcd does when a dead leader's lease runs out
    t.join(NEVER_S)
    ((deleted, seconds),) = out
    assert deleted and seconds < NEVER_S / 2
    assert b.campaign()


def test_a_deletion_before_the_watch_starts_is_not_missed(site):
    client, keys = site
    a, b = _leader_and_standby(client, keys)
    watch = b.vacancy_watch()
    a.resign()  # between the lost campaign and the wait
    assert watch.wait(NEVER_S)  # etcd replays the deletion: no wait at all
    assert b.vacancy_watch() is None  # and a vacancy seen directly needs no watch
    assert b.campaign()


def test_a_cancelled_wait_returns_at_once(site):
    client, keys = site
    _a, b = _leader_and_standby(client, keys)
    watch = b.vacancy_watch()
    t, out = _wait_in_thread(watch)
    t.join(0.3)
    watch.cancel()  # a stopping worker
    t.join(NEVER_S)
    ((deleted, seconds),) = out
    assert not deleted and seconds < NEVER_S / 2


def test_etcds_lease_leaves_the_takeover_margin(site):
    client, _ = site
    lease = WorkerLease.grant(client, TTL)
    assert lease.ttl == TTL - TAKEOVER_MARGIN_S
    assert 0 < client.time_to_live(lease.id) <= TTL - TAKEOVER_MARGIN_S
    with pytest.raises(InvalidArgument, match="whole seconds >= 3"):
        WorkerLease.grant(client, 2)
