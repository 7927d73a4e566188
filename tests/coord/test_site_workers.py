"""Several `nxstore serve --etcd` workers serving one site, against a real etcd on 127.0.0.1
(tests/coord/etcd_server.py): election and takeover within the lease TTL, the leader
SIGKILLed during a replication (another worker finishes it; the replica is byte-identical;
nothing applied twice; nothing that arrived is sent again), etcd unreachable (no worker
coordinates; `nxstore site status` says so and exits 1), and fencing of a deposed leader."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import timedelta

import numpy as np
import pytest
from etcd_server import free_port
from site_workers import LEASE_TTL, NXSTORE, Daemon, Worker

import nxstore
from nxstore.coord.election import Leadership
from nxstore.coord.etcd import Etcd, Put
from nxstore.coord.keys import SiteKeys
from nxstore.coord.lease import WorkerLease

MiB = 1 << 20
BS = 4096
SECRET = "a shared secret of 32 characters"
TTL = LEASE_TTL
SLACK_S = 3.0  # a busy 2-core machine: process start-up, HTTP round trips


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NXSTORE, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def status(url: str) -> dict:
    proc = cli("site", "status", "--etcd", url, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def sites(tmp_path):
    """(secret file, make(name) -> path of a new closed cluster, daemons to clean up)."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    started: list[Daemon] = []

    def make(name: str) -> str:
        path = str(tmp_path / name)
        nxstore.Cluster.create(path, block_size=BS, site_name=name, background=False).close()
        return path

    yield str(secret), make, started
    for d in started:
        d.cleanup()


def test_one_leader_and_takeover_within_the_lease_ttl(etcd, sites):
    """Takeover: the dead leader's etcd lease runs out (at most TTL - 1 s after its last
    renewal), etcd deletes the leader key, the standby's watch sees it, its campaign wins
    and it opens the cluster (the time is measured in benchmarks/bench_workers.py)."""
    secret, make, started = sites
    paris = make("paris")
    listen = f"127.0.0.1:{free_port()}"  # one address: only the leader binds it
    workers = [Worker.join(paris, secret, etcd.url, f"w{i}", listen=listen) for i in (1, 2)]
    started += workers
    first = _leader(workers)
    other = next(w for w in workers if w is not first)
    st = status(etcd.url)
    assert st["leader"]["worker"] == first.name
    assert sorted(w["name"] for w in st["workers"]) == ["w1", "w2"]
    assert all(0 < w["lease_ttl"] <= TTL for w in st["workers"])
    assert not any("serving site" in line for line in other.lines)  # a standby never opens PATH
    spare = Worker.join(paris, secret, etcd.url, "w3", listen=listen)
    started.append(spare)
    stopping = time.monotonic()
    spare.stop()  # SIGTERM ends its wait on the leader key's watch at once: a clean exit
    assert time.monotonic() - stopping < SLACK_S
    first.kill()
    # Seen in its log (polled locally): a `site status` process per look is too slow a clock.
    assert other.wait_for(f"worker {other.name} leads the site", TTL + SLACK_S) < TTL + SLACK_S
    assert status(etcd.url)["leader"]["worker"] == other.name
    other.wait_for("serving site paris (cluster", SLACK_S)  # it owns the cluster now
    assert any(line.endswith(f" on {listen}") for line in other.lines)  # peers reach it there
    other.stop()
    st = status(etcd.url)
    assert st["leader"] is None and st["workers"] == []  # a clean stop revokes the lease


def _leader(workers: list[Worker], timeout: float = 30.0) -> Worker:
    start = time.monotonic()
    while True:
        leading = [w for w in workers if any("serving site" in line for line in w.lines)]
        if leading:
            assert len(leading) == 1
            return leading[0]
        assert time.monotonic() - start < timeout, [w.stderr for w in workers]
        time.sleep(0.05)


def _paris_with_a_snapshot(sites, vdisk: str, size: int, seed: int):
    """Sites paris (with vDisk `vdisk` of `size` random bytes, snapshot s1) and tokyo (served,
    paris's remote site "tokyo"). Returns (tokyo's path, tokyo's daemon, paris's path, the
    snapshot's bytes)."""
    secret, make, started = sites
    tokyo_path, paris = make("tokyo"), make("paris")
    tokyo = Daemon.start(tokyo_path, secret)
    started.append(tokyo)
    with nxstore.Cluster.open(paris, background=False) as c:
        c.add_remote_site("tokyo", tokyo.address, SECRET)
        vd = c.create_vdisk(vdisk, size)
        vd.write(0, np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
        return tokyo_path, tokyo, paris, vd.snapshot("s1").read(0, size)


def _until_first_attempt_sent(url: str, worker: Worker) -> None:
    """Wait (60 s at most) until the first transfer's latest attempt has sent something."""
    deadline = time.monotonic() + 60
    while not (status(url)["transfers"][0]["attempts"] or [{}])[-1].get("done"):
        assert time.monotonic() < deadline, worker.stderr
        time.sleep(0.05)


def _until_transfer_done(url: str, worker: Worker, timeout: float = 90,
                         meanwhile: tuple[str, ...] = ()) -> dict:
    """The first transfer's record once its state is "done" (within `timeout` s); while it
    waits its state must be one of `meanwhile` (any, if empty)."""
    deadline = time.monotonic() + timeout
    while (t := status(url)["transfers"][0])["state"] != "done":
        assert not meanwhile or t["state"] in meanwhile, t
        assert time.monotonic() < deadline, (t, worker.stderr)
        time.sleep(0.1)
    return t


def _replica_reads_as(tokyo_path: str, size: int, image: bytes) -> None:
    """Tokyo's replica of paris's db holds one snapshot, reading as `image`."""
    with nxstore.Cluster.open(tokyo_path, background=False) as c:
        (snap,) = c.vdisk("paris:db").snapshots()
        assert snap.read(0, size) == image


def test_leader_killed_during_replication_another_worker_finishes_it(etcd, sites):
    secret, _, started = sites
    size = 24 * MiB
    tokyo_path, tokyo, paris, source_image = _paris_with_a_snapshot(sites, "big", size, 18)
    blocks = size // BS
    w1 = Worker.join(paris, secret, etcd.url, "w1")
    started.append(w1)
    w1.wait_for("serving site", 30)
    proc = cli("site", "transfer", "--etcd", etcd.url, "big@s1", "tokyo",
               "--bandwidth-limit", "3M")
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 60
    while True:  # kill the leader a third of the way through the blocks
        (t,) = status(etcd.url)["transfers"]
        a = t["attempts"][-1]
        if a["phase"] == "blocks" and a["done"] >= a["total"] // 3:
            break
        assert time.monotonic() < deadline, (t, w1.stderr)
        time.sleep(0.05)
    w1.kill()
    Worker.wait_for(tokyo, "abandoned", 30)  # the target has stored every block that arrived
    info = cli("info", tokyo_path, "--json")  # forwarded to the running target daemon
    assert info.returncode == 0, info.stderr
    arrived = json.loads(info.stdout)["unique_bytes"] // BS
    assert 0 < arrived < blocks
    w2 = Worker.join(paris, secret, etcd.url, "w2")
    started.append(w2)
    t = _until_transfer_done(etcd.url, w2, 120, meanwhile=("queued", "running"))
    first, second = t["attempts"]
    assert first["worker"] == "w1" and first["outcome"] == "running"  # cut off by the kill
    assert second["worker"] == "w2" and second["outcome"] == "done"
    assert second["term"] > first["term"]
    # Nothing that arrived crossed the wire again: the resumed transfer sent exactly the rest.
    assert second["blocks_deduped"] == arrived
    assert second["blocks_sent"] == blocks - arrived
    w2.stop()
    tokyo.stop()
    with nxstore.Cluster.open(tokyo_path, background=False) as t:
        (snap,) = t.vdisk("paris:big").snapshots()  # applied once
        assert snap.name == "s1" and snap.read(0, size) == source_image
        assert t.scrub() == []


def test_etcd_unreachable_no_worker_coordinates(tmp_path, etcd, sites):
    secret, make, started = sites
    paris = make("paris")
    nowhere = f"http://127.0.0.1:{free_port()}"
    proc = cli("site", "status", "--etcd", nowhere)
    assert proc.returncode == 1
    assert "unreachable" in proc.stderr and "no worker coordinates" in proc.stderr
    lonely = Worker.join(paris, secret, nowhere, "w0")
    started.append(lonely)
    lonely.wait_for("not coordinating", 30)
    nxstore.Cluster.open(paris, background=False).close()  # it never opened the cluster
    lonely.stop()
    # A leader that loses etcd stops coordinating within its lease and lets the cluster go.
    w1 = Worker.join(paris, secret, etcd.url, "w1")
    started.append(w1)
    w1.wait_for("serving site", 30)
    etcd.kill()
    lost = time.monotonic()
    w1.wait_for("stopped coordinating", TTL + SLACK_S)
    while True:
        try:
            nxstore.Cluster.open(paris, background=False).close()
            break
        except nxstore.errors.Locked:
            assert time.monotonic() - lost < TTL + SLACK_S
            time.sleep(0.05)
    proc = cli("site", "status", "--etcd", etcd.url)
    assert proc.returncode == 1 and "no worker coordinates" in proc.stderr
    w1.stop()


def test_a_deposed_leader_can_change_nothing(etcd):
    client, keys = Etcd(etcd.url), SiteKeys("fence/")
    a = Leadership(client, keys, "a", WorkerLease.grant(client, TTL))
    assert a.campaign() and a.holds()
    guard = a.guard()
    b = Leadership(client, keys, "b", WorkerLease.grant(client, TTL))
    assert not b.campaign()
    client.revoke(a.lease.id)  # as if a's lease expired while a still believed it led
    assert b.campaign()
    # a's writes, guarded by its term, are refused; b's go through.
    assert client.txn([guard], [Put("fence/x", b"a")]) == 0
    assert client.txn([b.guard()], [Put("fence/x", b"b")]) > 0
    assert client.get("fence/x").value == b"b"
    client.close()


def test_a_leader_that_loses_etcd_stops_its_transfer_and_resumes_when_it_is_back(etcd, sites):
    secret, _, started = sites
    size = 16 * MiB
    tokyo_path, tokyo, paris, source_image = _paris_with_a_snapshot(sites, "db", size, 7)
    w1 = Worker.join(paris, secret, etcd.url, "w1")
    started.append(w1)
    w1.wait_for("serving site", 30)
    assert cli("site", "transfer", "--etcd", etcd.url, "db@s1", "tokyo",
               "--bandwidth-limit", "2M").returncode == 0
    _until_first_attempt_sent(etcd.url, w1)
    etcd.kill()
    # The lease runs out within TTL; the transfer stops at its next frame (4 MiB at 2 MiB/s).
    bound = TTL + 2 + SLACK_S
    assert w1.wait_for("stopped: leadership lost", bound) < bound
    w1.wait_for("cluster " + paris + " closed", SLACK_S)
    nxstore.Cluster.open(paris, background=False).close()  # released: nobody coordinates
    etcd.restart()  # its state is back: the same worker joins again, leads, resumes
    t = _until_transfer_done(etcd.url, w1)
    assert [x["worker"] for x in t["attempts"]] == ["w1", "w1"]
    assert t["attempts"][1]["term"] > t["attempts"][0]["term"]
    assert t["attempts"][1]["blocks_deduped"] > 0  # what arrived before was not sent again
    w1.stop()
    tokyo.stop()
    _replica_reads_as(tokyo_path, size, source_image)


def test_a_stopped_leader_hands_its_transfer_over_at_once(etcd, sites):
    """SIGTERM: the leader stops its transfer at the next frame, closes the cluster and
    resigns, so the standby leads without waiting for the lease to run out."""
    secret, _, started = sites
    size = 16 * MiB
    tokyo_path, tokyo, paris, source_image = _paris_with_a_snapshot(sites, "db", size, 9)
    workers = [Worker.join(paris, secret, etcd.url, f"w{i}") for i in (1, 2)]
    started += workers
    first = _leader(workers)
    other = next(w for w in workers if w is not first)
    assert cli("site", "transfer", "--etcd", etcd.url, "db@s1", "tokyo",
               "--bandwidth-limit", "2M").returncode == 0
    _until_first_attempt_sent(etcd.url, first)
    assert "is stopping: it gives up the leadership" in first.stop()
    # It resigned and revoked its lease on the way out: no wait for the lease to run out.
    assert other.wait_for("serving site", SLACK_S) < SLACK_S
    t = _until_transfer_done(etcd.url, other)
    assert [a["worker"] for a in t["attempts"]] == [first.name, other.name]
    assert t["attempts"][1]["blocks_deduped"] > 0
    other.stop()
    tokyo.stop()
    _replica_reads_as(tokyo_path, size, source_image)


def test_two_live_workers_cannot_share_a_name(etcd, sites):
    secret, make, started = sites
    paris = make("paris")
    w1 = Worker.join(paris, secret, etcd.url, "w1")
    started.append(w1)
    twin = cli("serve", paris, "--listen", "127.0.0.1:0", "--secret-file", secret,
               "--etcd", etcd.url, "--worker", "w1", "--lease-ttl", str(TTL))
    assert twin.returncode == 1
    assert "worker 'w1' is already registered" in twin.stderr
    assert [w["name"] for w in status(etcd.url)["workers"]] == ["w1"]
    w1.stop()


def test_a_schedule_replication_cut_by_the_leaders_death_is_resumed(tmp_path, etcd, sites):
    """The leader's schedule takes a PD snapshot and replicates it to tokyo, recorded in
    etcd first; tokyo is frozen (SIGSTOP) so the replication cannot end, and the leader is
    SIGKILLed. The standby takes over, finds the record, replicates that snapshot (once),
    and deletes the record."""
    secret, _, started = sites
    size = 4 * MiB
    tokyo_path, tokyo, paris, _ = _paris_with_a_snapshot(sites, "db", size, 11)
    t0 = 1_000_000.0
    clock = tmp_path / "clock"
    clock.write_text(str(t0))
    with nxstore.Cluster.open(paris, background=False) as c:
        vd = c.vdisk("db")
        vd.write(0, np.random.default_rng(12).integers(0, 256, size, dtype=np.uint8).tobytes())
        image = vd.read(0, size)
        pd = c.create_protection_domain("pdb", [vd])
        pd.add_schedule(timedelta(hours=1), keep_local=3, keep_remote={"tokyo": 2},
                        start=t0 + 60)
    argv = ("--clock-file", str(clock), "--schedule-interval", "0.1")
    workers = [Worker.join(paris, secret, etcd.url, f"w{i}", *argv) for i in (1, 2)]
    started += workers
    first = _leader(workers)
    other = next(w for w in workers if w is not first)
    tokyo.proc.send_signal(signal.SIGSTOP)
    try:
        _set_clock(clock, t0 + 61)  # the slot is due: the leader records it, snapshots, sends
        deadline = time.monotonic() + 30
        while not (records := [t for t in status(etcd.url)["transfers"]
                               if t["kind"] == "schedule"]):
            assert time.monotonic() < deadline, first.stderr
            time.sleep(0.05)
        (record,) = records
        assert record["state"] == "running" and record["pd"] == "pdb"
        while not _pd(paris, "pdb")["snapshot_list"]:  # asked through the leader's socket
            assert time.monotonic() < deadline, first.stderr
            time.sleep(0.05)
        first.kill()  # tokyo never answered: nothing of this snapshot arrived
    finally:
        tokyo.proc.send_signal(signal.SIGCONT)
    other.wait_for("resuming schedule replication " + record["id"], TTL + SLACK_S)
    other.wait_for(f"schedule replication {record['id']} done", 60)
    deadline = time.monotonic() + 30
    while status(etcd.url)["transfers"]:  # the record is deleted once dealt with
        assert time.monotonic() < deadline, other.stderr
        time.sleep(0.05)
    (snap,) = _pd(paris, "pdb")["snapshot_list"]
    assert snap["replicated_to"] == ["tokyo"]
    # The next slot, with tokyo answering: recorded, replicated by the pass, record deleted.
    _set_clock(clock, t0 + 60 + 3600 + 1)
    deadline = time.monotonic() + 60
    while len(snaps := _pd(paris, "pdb")["snapshot_list"]) < 2 or \
            snaps[-1]["replicated_to"] != ["tokyo"] or status(etcd.url)["transfers"]:
        assert time.monotonic() < deadline, other.stderr
        time.sleep(0.05)
    assert "schedule pass skipped" not in other.stderr
    other.stop()
    tokyo.stop()
    with nxstore.Cluster.open(tokyo_path, background=False) as t:
        (replica,) = [s for s in t.vdisk("paris:db").snapshots() if s.name == snap["name"]]
        assert replica.read(0, size) == image  # applied once (one of that name), identical
        assert t.scrub() == []


def _set_clock(path, value: float) -> None:  # noqa: ANN001
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(value))
    tmp.replace(path)


def _pd(path: str, name: str) -> dict:
    proc = cli("pd", "show", path, name, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
