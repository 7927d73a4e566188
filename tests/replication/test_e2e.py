"""End-to-end replication between real clusters.

Targets are real `nxstore serve` processes (sites_helper.Daemon) unless a test says
otherwise; sources are clusters opened in the test process. Every check of a target's
contents opens the target after its daemon stopped (or was killed), and compares
whole images with the source snapshot.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import threading
import time

import numpy as np
import pytest
import xxhash
from certs import self_signed
from sites_helper import Daemon
from tcp_proxy import FaultProxy, Faults, Rewrite

import nxstore
from nxstore.constants import WIRE_FRAME_HEADER_BYTES, WIRE_MAX_BATCH, WIRE_MIN_PROTOCOL_VERSION
from nxstore.errors import (
    AuthenticationError,
    InUse,
    InvalidArgument,
    NxError,
    ProtocolError,
    ReadOnly,
    VersionMismatch,
)
from nxstore.replication import auth
from nxstore.replication.auth import SiteIdentity
from nxstore.replication.messages import MessageType, Pruned, PruneSnapshots
from nxstore.replication.sites import get_site
from nxstore.replication.source import delete_remote_snapshots, open_session
from nxstore.replication.target import ReplicationTarget
from nxstore.replication.transport import serve, tcp

MiB = 1 << 20
BS = 4096
SECRET = "e2e shared secret"


# -- helpers --------------------------------------------------------------------------
@pytest.fixture
def site(tmp_path):
    """make(name) -> path of a new, closed 4 KiB-block cluster named `name`;
    start(path) -> a running Daemon (killed at teardown if the test did not stop it)."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)  # nxstore refuses a secret file others can read
    daemons: list[Daemon] = []

    class Sites:
        secret_file = str(secret)

        @staticmethod
        def make(name: str) -> str:
            path = str(tmp_path / name)
            nxstore.Cluster.create(path, block_size=BS, background=False).close()
            return path

        @staticmethod
        def start(path: str) -> Daemon:
            d = Daemon.start(path, str(secret))
            daemons.append(d)
            return d

    yield Sites
    for d in daemons:
        d.cleanup()


def source(tmp_path, name: str = "paris") -> nxstore.Cluster:
    return nxstore.Cluster.create(str(tmp_path / name), block_size=BS, background=False)


def rand(rng: np.random.Generator, n: int) -> bytes:
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def image(snap) -> bytes:
    return snap.read(0, snap.size)


def replica_images(path: str, source_site: str, vdisk: str) -> dict[str, bytes]:
    """{snapshot name: whole image} of the replica, read with the target closed after."""
    with nxstore.Cluster.open(path, background=False) as t:
        return {s.name: image(s) for s in t.vdisk(f"{source_site}:{vdisk}").snapshots()}


def assert_clean(path: str) -> None:
    with nxstore.Cluster.open(path, background=False) as t:
        assert t.scrub() == []


def overhead(n_blocks: int, batch: int = WIRE_MAX_BATCH) -> int:
    """Protocol bytes a transfer describing `n_blocks` map entries costs besides the
    block data, an upper bound: per block a map entry (8-byte index + 16-byte
    fingerprint = 24 B), the fingerprint asked in HAVE_FINGERPRINTS (16 B) and its
    MISSING bit (1 B, rounded up); per batch message (HAVE_FINGERPRINTS, MISSING,
    MAP_ENTRIES, BLOCKS, ACK: at most 6 per batch) a 32-byte frame header + 16 bytes of
    counts; plus 8 KiB for the handshake, GET_SNAPSHOTS/SNAPSHOTS, BEGIN/READY and
    COMMIT/COMMITTED."""
    batches = -(-n_blocks // batch) + 1
    per_block = 24 + 16 + 1
    return n_blocks * per_block + batches * 6 * (WIRE_FRAME_HEADER_BYTES + 16) + 8192


class ThreadedProxy:
    """tcp_proxy.FaultProxy on its own event loop thread (replicate() runs its own loop)."""

    def __init__(self, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy: FaultProxy = asyncio.run_coroutine_threadsafe(
            FaultProxy.start("127.0.0.1", port), self.loop).result(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# -- (a) seed and incrementals between real processes -----------------------------------
def test_seed_and_incrementals_are_byte_identical(tmp_path, site):
    tokyo_path = site.make("tokyo")
    tokyo = site.start(tokyo_path)
    rng = np.random.default_rng(1)
    with source(tmp_path) as c:
        c.add_remote_site("tokyo", tokyo.address, SECRET)
        vd = c.create_vdisk("db", 32 * MiB)
        vd.write(0, rand(rng, 12 * MiB))
        vd.write(20 * MiB, b"compressible text line\n" * 100_000)
        snaps = [vd.snapshot("s1")]
        r = c.replicate(snaps[0], "tokyo")
        text_blocks = -(-len(b"compressible text line\n" * 100_000) // BS)
        assert r.base_snapshot is None and r.blocks_total == 12 * MiB // BS + text_blocks
        # The repeated text dedups within the image: only its distinct blocks travel.
        assert r.blocks_sent + r.blocks_deduped == r.blocks_total and r.blocks_sent < 3100
        # Incremental 1: scattered unaligned rewrites.
        for off in rng.integers(0, 32 * MiB - 10_000, 50):
            vd.write(int(off), rand(rng, 5000))
        snaps.append(vd.snapshot("s2"))
        r = c.replicate(snaps[1], "tokyo")
        assert r.base_snapshot == "s1" and 0 < r.blocks_total <= 150
        # Incremental 2: a trimmed range and a duplicate of existing data (costs no data).
        vd.trim(4 * MiB, 2 * MiB)
        vd.write(28 * MiB, vd.read(0, MiB))
        snaps.append(vd.snapshot("s3"))
        r = c.replicate(snaps[2], "tokyo")
        assert r.base_snapshot == "s2" and r.blocks_sent == 0 and r.blocks_total >= 768
        # Replicating a snapshot the target holds already costs nothing.
        assert c.replicate(snaps[2], "tokyo").blocks_total == 0
        expected = {s.name: image(s) for s in snaps}
    tokyo.stop()
    assert replica_images(tokyo_path, "paris", "db") == expected
    with nxstore.Cluster.open(tokyo_path, background=False) as t:
        (rep,) = t.replicas()
        assert (rep.vdisk, rep.source_site, rep.source_vdisk) == ("paris:db", "paris", "db")
        assert [s.name for s in rep.snapshots] == ["s1", "s2", "s3"]
        with pytest.raises(ReadOnly):
            t.vdisk("paris:db").write(0, b"x" * BS)
        assert t.scrub() == []


# -- (b) global dedup over the wire ------------------------------------------------------
def test_clone_with_one_percent_changed_sends_one_percent(tmp_path, site):
    tokyo = site.start(site.make("tokyo"))
    rng = np.random.default_rng(2)
    size = 32 * MiB
    nblocks = size // BS
    with source(tmp_path) as c:
        c.add_remote_site("tokyo", tokyo.address, SECRET)
        a = c.create_vdisk("a", size)
        a.write(0, rand(rng, size))
        c.replicate(a.snapshot("base"), "tokyo")
        b = c.clone(c.snapshot("a", "base"), "b")
        changed = rng.choice(nblocks, nblocks // 100, replace=False)
        for i in changed:
            b.write(int(i) * BS, rand(rng, BS))
        r = c.replicate(b.snapshot("s1"), "tokyo")
        expected = image(c.snapshot("b", "s1"))
    # A different vDisk: a full seed of all its blocks, yet only the changed ones travel.
    assert r.base_snapshot is None and r.blocks_total == nblocks
    assert r.blocks_sent == changed.size and r.blocks_deduped == nblocks - changed.size
    limit = 0.02 * size + overhead(nblocks)
    assert r.bytes_on_wire <= limit, (r, limit)
    tokyo.stop()
    assert replica_images(tokyo.path, "paris", "b") == {"s1": expected}


# -- (c) resume after SIGKILL of the target ----------------------------------------------
def test_resume_after_target_killed_sends_only_what_is_missing(tmp_path, site):
    tokyo_path = site.make("tokyo")
    tokyo = site.start(tokyo_path)
    rng = np.random.default_rng(3)
    size = 256 * MiB
    with source(tmp_path) as c:
        c.add_remote_site("tokyo", tokyo.address, SECRET)
        vd = c.create_vdisk("big", size)
        vd.write(0, rand(rng, 4 * MiB))
        s1 = vd.snapshot("s1")
        c.replicate(s1, "tokyo")
        s1_image = image(s1)
        for off in range(4 * MiB, size, 16 * MiB):
            vd.write(off, rand(rng, min(16 * MiB, size - off)))
        s2 = vd.snapshot("s2")
        new_blocks = (size - 4 * MiB) // BS
        killed: list[int] = []

        def kill_halfway(phase: str, done: int, total: int, wire: int) -> None:
            if phase == "blocks" and done >= total // 2 and not killed:
                tokyo.kill()  # SIGKILL: no cleanup at all
                killed.append(done)

        with pytest.raises(NxError):
            c.replicate(s2, "tokyo", progress=kill_halfway)
        assert killed and not tokyo.running
        # The target after the crash: s1 intact, s2 not visible, some new blocks stored.
        with nxstore.Cluster.open(tokyo_path, background=False) as t:
            assert [s.name for s in t.vdisk("paris:big").snapshots()] == ["s1"]
            assert image(t.snapshot("paris:big", "s1")) == s1_image
            stored_new = int(t.stats()["unique_bytes"]) // BS - (4 * MiB) // BS
            assert t.scrub() == []
        assert 0 < stored_new < new_blocks
        tokyo = site.start(tokyo_path)
        c.add_remote_site("tokyo2", tokyo.address, SECRET)
        r = c.replicate(s2, "tokyo2")
        s2_image = image(s2)
    assert r.base_snapshot == "s1"
    assert r.blocks_sent <= new_blocks - stored_new, (r, stored_new)
    assert r.blocks_sent + r.blocks_deduped == new_blocks
    tokyo.stop()
    assert replica_images(tokyo_path, "paris", "big") == {"s1": s1_image, "s2": s2_image}


# -- (d) a byte-flipping proxy -------------------------------------------------------------
def replicated_s1_and_new_s2(c: nxstore.Cluster, rng: np.random.Generator):
    """vDisk "db" (8 MiB): s1 (2 MiB written) replicated to site "tokyo", then s2 (6 MiB
    more written, not replicated). Returns (s1, s2)."""
    vd = c.create_vdisk("db", 8 * MiB)
    vd.write(0, rand(rng, 2 * MiB))
    s1 = vd.snapshot("s1")
    c.replicate(s1, "tokyo")
    vd.write(2 * MiB, rand(rng, 6 * MiB))
    return s1, vd.snapshot("s2")


@pytest.mark.parametrize("flip_at", [300_000, 3 * MiB])
def test_flipped_byte_fails_cleanly_and_stores_nothing_corrupt(tmp_path, site, flip_at):
    tokyo_path = site.make("tokyo")
    tokyo = site.start(tokyo_path)
    rng = np.random.default_rng(4)
    proxy = ThreadedProxy(tokyo.port)
    try:
        with source(tmp_path) as c:
            c.add_remote_site("tokyo", tokyo.address, SECRET)
            c.add_remote_site("via-proxy", proxy.address, SECRET)
            s1, s2 = replicated_s1_and_new_s2(c, rng)
            proxy.proxy.faults["up"] = Faults(flip_at=flip_at)
            with pytest.raises(NxError) as err:
                c.replicate(s2, "via-proxy")
            assert proxy.proxy.flipped == 1
            # The target reports the damaged frame before it closes the connection.
            assert isinstance(err.value, nxstore.errors.Corruption), repr(err.value)
            assert "checksum" in str(err.value), err.value
            expected = {"s1": image(s1), "s2": image(s2)}
            tokyo.stop()
            assert "Traceback" not in tokyo.stderr
            assert replica_images(tokyo_path, "paris", "db") == {"s1": expected["s1"]}
            assert_clean(tokyo_path)
            tokyo = site.start(tokyo_path)
            c.remove_remote_site("tokyo")
            c.add_remote_site("tokyo", tokyo.address, SECRET)
            r = c.replicate(s2, "tokyo")
            assert r.base_snapshot == "s1"
    finally:
        proxy.close()
    tokyo.stop()
    assert replica_images(tokyo_path, "paris", "db") == expected
    assert_clean(tokyo_path)


# -- (d2) a forging relay -------------------------------------------------------------------
def _map_all_to_first(payload: bytes) -> bytes:
    """MAP_ENTRIES (u32 n, u32 0, u64[n], fp[n]): every block now maps to block 0's data."""
    n = int.from_bytes(payload[:4], "little")
    fps = 8 + 8 * n
    return payload[:fps] + payload[fps : fps + 16] * n


def _replace_first_block(payload: bytes) -> bytes:
    """STORED_BLOCKS (u32 n, u32 block size, fp[n], flags[n], u32 lengths[n], payloads) of
    raw blocks: block 0 replaced by other bytes, with their true fingerprint, so that the
    target's fingerprint check passes."""
    n, bs = int.from_bytes(payload[:4], "little"), int.from_bytes(payload[4:8], "little")
    assert payload[8 + 16 * n] == 0, "block 0 is stored raw"
    data = 8 + 21 * n
    evil = bytes(b ^ 0x5A for b in payload[data : data + bs])
    return payload[:8] + xxhash.xxh3_128_digest(evil) + payload[24:data] + evil + \
        payload[data + bs :]


RELAY_ATTACKS = {
    "forge-map": (MessageType.MAP_ENTRIES, "forge", _map_all_to_first),
    "forge-blocks": (MessageType.STORED_BLOCKS, "forge", _replace_first_block),
    "drop-blocks": (MessageType.STORED_BLOCKS, "drop", None),
    "replay-map": (MessageType.MAP_ENTRIES, "replay", None),
    "reorder-blocks": (MessageType.STORED_BLOCKS, "reorder", None),
}


@pytest.mark.parametrize("attack", sorted(RELAY_ATTACKS))
def test_relay_tampering_after_the_handshake_applies_nothing(tmp_path, site, attack):
    """A relay without the secret passes the genuine handshake through, then forges
    (checksum recomputed), drops, replays or reorders one frame: the target rejects it
    (frame MAC), applies nothing of the transfer (incremental: the old snapshot stays;
    seed: no replica), logs it; a clean replication afterwards works."""
    msg_type, action, edit = RELAY_ATTACKS[attack]
    tokyo = site.start(site.make("tokyo"))
    rng = np.random.default_rng(11)
    proxy = ThreadedProxy(tokyo.port)
    try:
        with source(tmp_path) as c:
            c.add_remote_site("tokyo", tokyo.address, SECRET)
            c.add_remote_site("relay", proxy.address, SECRET)
            s1, s2 = replicated_s1_and_new_s2(c, rng)
            fresh = c.create_vdisk("fresh", 4 * MiB)
            fresh.write(0, rand(rng, 4 * MiB))
            f1 = fresh.snapshot("f1")
            for snap in (s2, f1):  # an incremental, then a seed
                rw = Rewrite(msg_type, action, edit)
                proxy.proxy.rewrite["up"] = rw
                with pytest.raises(nxstore.errors.Corruption) as err:
                    c.replicate(snap, "relay")
                assert rw.done == 1
                # Caught by the MAC, not the checksum the relay recomputed.
                assert "frame authentication failed" in str(err.value), err.value
            proxy.proxy.rewrite["up"] = None
            expected = {"s1": image(s1), "s2": image(s2), "f1": image(f1)}
            out = tokyo.stop()
            assert "frame authentication failed" in out and "nothing of it applied" in out, out
            assert replica_images(tokyo.path, "paris", "db") == {"s1": expected["s1"]}
            with nxstore.Cluster.open(tokyo.path, background=False) as t:
                assert [r.vdisk for r in t.replicas()] == ["paris:db"]
            assert_clean(tokyo.path)
            tokyo = site.start(tokyo.path)
            proxy.close()
            proxy = ThreadedProxy(tokyo.port)
            c.remove_remote_site("relay")
            c.add_remote_site("relay", proxy.address, SECRET)
            assert c.replicate(s2, "relay").base_snapshot == "s1"
            assert c.replicate(f1, "relay").base_snapshot is None
    finally:
        proxy.close()
    tokyo.stop()
    assert replica_images(tokyo.path, "paris", "db") == {"s1": expected["s1"],
                                                         "s2": expected["s2"]}
    assert replica_images(tokyo.path, "paris", "fresh") == {"f1": expected["f1"]}
    assert_clean(tokyo.path)


def test_pd_request_through_a_forging_relay_is_rejected(tmp_path, site):
    """PD_REQUEST (and NearSync's LWS_* frames) use the same transport: a changed body
    fails the frame MAC the same way."""
    from nxstore.protection import remote

    tokyo = site.start(site.make("tokyo"))
    proxy = ThreadedProxy(tokyo.port)
    try:
        with source(tmp_path) as c:
            c.add_remote_site("relay", proxy.address, SECRET)
            assert remote.status(c, "relay", "web")["exists"] is False
            rw = Rewrite(MessageType.PD_REQUEST, "forge", lambda p: p.replace(b"web", b"wxb"))
            proxy.proxy.rewrite["up"] = rw
            with pytest.raises(nxstore.errors.Corruption, match="frame authentication failed"):
                remote.status(c, "relay", "web")
            assert rw.done == 1
    finally:
        proxy.close()
    assert "frame authentication failed" in tokyo.stop()


# -- (e) wrong secret, garbage peers ---------------------------------------------------------
def test_wrong_secret_changes_nothing(tmp_path, site):
    tokyo_path = site.make("tokyo")
    tokyo = site.start(tokyo_path)
    with source(tmp_path) as c:
        c.add_remote_site("tokyo", tokyo.address, "not the shared secret")
        vd = c.create_vdisk("db", 4 * MiB)
        vd.write(0, os.urandom(MiB))
        snap = vd.snapshot("s1")
        with pytest.raises(AuthenticationError):
            c.replicate(snap, "tokyo")
        with pytest.raises(AuthenticationError):
            c.prune_remote("tokyo", "db", 1)
        assert [s.name for s in vd.snapshots()] == ["s1"]
        assert [s.name for s in c.remote_sites()] == ["tokyo"]
    out = tokyo.stop()
    assert "authentication" in out.lower(), out
    with nxstore.Cluster.open(tokyo_path, background=False) as t:
        assert t.replicas() == [] and t.vdisks() == []
        assert t.stats()["unique_bytes"] == 0


def test_garbage_and_early_close_towards_the_daemon(tmp_path, site):
    tokyo = site.start(site.make("tokyo"))
    for payload in (os.urandom(8192), b"", b"NXRP\x01"):  # random bytes, close at once, cut frame
        with socket.create_connection(("127.0.0.1", tokyo.port), timeout=5) as s:
            if payload:
                s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            try:
                while s.recv(65536):  # the daemon ends the connection
                    pass
            except ConnectionResetError:
                pass
    # Still serving, and a real transfer works.
    with source(tmp_path) as c:
        c.add_remote_site("tokyo", tokyo.address, SECRET)
        vd = c.create_vdisk("db", 4 * MiB)
        vd.write(0, os.urandom(MiB))
        assert c.replicate(vd.snapshot("s1"), "tokyo").blocks_sent == 256
    out = tokyo.stop()
    assert "handshake" in out.lower() or "protocol" in out.lower(), out


def _fake_server(behaviour: str) -> tuple[socket.socket, threading.Thread]:
    """A listening socket whose single peer gets random bytes or an immediate close."""
    srv = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            if behaviour == "random":
                try:
                    conn.sendall(os.urandom(4096))
                    conn.recv(65536)
                except OSError:
                    pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv, t


@pytest.mark.parametrize("behaviour", ["random", "close"])
def test_source_against_a_garbage_peer_gets_a_clear_error(tmp_path, behaviour):
    srv, thread = _fake_server(behaviour)
    try:
        with source(tmp_path) as c:
            c.add_remote_site("bad", f"127.0.0.1:{srv.getsockname()[1]}", SECRET)
            vd = c.create_vdisk("db", MiB)
            vd.write(0, os.urandom(BS))
            started = time.monotonic()
            with pytest.raises(ProtocolError) as err:
                c.replicate(vd.snapshot("s1"), "bad")
            assert time.monotonic() - started < 15
            assert str(err.value)
    finally:
        thread.join(5)
        srv.close()


# -- (f) mesh ----------------------------------------------------------------------------------
class InProcessDaemon:
    """The same target `nxstore serve` runs, on a thread of this process, so a cluster
    can serve as a target while the test uses it as a source (a cluster directory is
    locked by one process)."""

    def __init__(self, cluster: nxstore.Cluster) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        ident = SiteIdentity(cluster.id, cluster.site_name)
        self.server = asyncio.run_coroutine_threadsafe(
            serve("127.0.0.1", 0, ReplicationTarget(cluster).handle, identity=ident,
                  secret=SECRET), self.loop).result(10)
        self.address = f"127.0.0.1:{self.server.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_mesh_of_three_replicating_concurrently(tmp_path):
    names = ("a", "b", "c")
    clusters = {n: source(tmp_path, n) for n in names}
    daemons = {n: InProcessDaemon(clusters[n]) for n in names}
    rng = np.random.default_rng(6)
    shared = rand(rng, 2 * MiB)  # the same data on every site: dedup across sources
    snaps = {}
    try:
        for n, c in clusters.items():
            for m in names:
                if m != n:
                    c.add_remote_site(m, daemons[m].address, SECRET)
            vd = c.create_vdisk("vol", 8 * MiB)
            vd.write(0, shared)
            vd.write(2 * MiB, rand(rng, 4 * MiB))
            snaps[n] = [vd.snapshot("s1")]
            vd.write(3 * MiB, rand(rng, MiB))
            snaps[n].append(vd.snapshot("s2"))
        # Every ordered pair at once: each cluster sends to two sites and receives from two.
        pairs = [(n, m) for n in names for m in names if n != m]
        errors: list[BaseException] = []

        def ship(src: str, dst: str) -> None:
            try:
                for snap in snaps[src]:
                    clusters[src].replicate(snap, dst)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=ship, args=p) for p in pairs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        for dst in names:
            held = {r.vdisk: [s.name for s in r.snapshots] for r in clusters[dst].replicas()}
            assert held == {f"{src}:vol": ["s1", "s2"] for src in names if src != dst}
            for src in names:
                if src != dst:
                    for snap in snaps[src]:
                        rep = clusters[dst].snapshot(f"{src}:vol", snap.name)
                        assert image(rep) == image(snap), (src, dst, snap.name)
    finally:
        for d in daemons.values():
            d.close()
        for c in clusters.values():
            c.close()
    for n in names:
        assert_clean(str(tmp_path / n))


def test_two_sources_into_one_daemon_process_at_once(tmp_path, site):
    tokyo = site.start(site.make("tokyo"))
    rng = np.random.default_rng(7)
    common = rand(rng, 4 * MiB)
    srcs = {n: source(tmp_path, n) for n in ("paris", "oslo")}
    snaps = {}
    for n, c in srcs.items():
        c.add_remote_site("tokyo", tokyo.address, SECRET)
        vd = c.create_vdisk("db", 16 * MiB)
        vd.write(0, common)  # both send the same blocks at the same time
        vd.write(4 * MiB, rand(rng, 8 * MiB))
        snaps[n] = vd.snapshot("s1")
    results, errors = {}, []

    def ship(n: str) -> None:
        try:
            results[n] = srcs[n].replicate(snaps[n], "tokyo")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ship, args=(n,)) for n in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    expected = {n: image(s) for n, s in snaps.items()}
    for c in srcs.values():
        c.close()
    tokyo.stop()
    for n in srcs:
        assert replica_images(tokyo.path, n, "db") == {"s1": expected[n]}
    assert_clean(tokyo.path)


# -- (g) remote retention ---------------------------------------------------------------------
def test_prune_remote_keeps_exactly_n(tmp_path, site):
    tokyo = site.start(site.make("tokyo"))
    with source(tmp_path) as c:
        c.add_remote_site("tokyo", tokyo.address, SECRET)
        vd = c.create_vdisk("db", 2 * MiB)
        snaps = []
        for i in range(5):
            vd.write(i * BS, os.urandom(BS))
            snaps.append(vd.snapshot(f"s{i}"))
            c.replicate(snaps[-1], "tokyo")
        assert c.prune_remote("tokyo", "db", 2) == ["s0", "s1", "s2"]
        assert c.prune_remote("tokyo", "db", 2) == []
        with pytest.raises(nxstore.errors.InvalidArgument):
            c.prune_remote("tokyo", "db", 0)
        # Incrementals continue from what is left.
        vd.write(10 * BS, os.urandom(BS))
        snaps.append(vd.snapshot("s5"))
        assert c.replicate(snaps[-1], "tokyo").base_snapshot == "s4"
        assert c.prune_remote("tokyo", "db", 1) == ["s3", "s4"]
        expected = image(snaps[-1])
        assert [s.name for s in vd.snapshots()] == [f"s{i}" for i in range(6)]  # local: untouched
    tokyo.stop()
    assert replica_images(tokyo.path, "paris", "db") == {"s5": expected}
    assert_clean(tokyo.path)


def _replicated_db(c, tokyo, n: int):
    """vDisk "db" of `c` with snapshots s0..s<n-1>, each replicated to site "tokyo"."""
    c.add_remote_site("tokyo", tokyo.address, SECRET)
    vd = c.create_vdisk("db", 2 * MiB)
    for i in range(n):
        vd.write(i * BS, os.urandom(BS))
        c.replicate(vd.snapshot(f"s{i}"), "tokyo")
    return vd


def test_delete_remote_snapshots_by_name(tmp_path, site):
    tokyo = site.start(site.make("tokyo"))
    with source(tmp_path) as c:
        vd = _replicated_db(c, tokyo, 5)
        # Exactly the names asked for; names not held are skipped, so a retry is harmless.
        assert delete_remote_snapshots(c, "tokyo", {"db": ["s3", "s1", "gone"]}) == {
            "db": ["s1", "s3"]}
        assert delete_remote_snapshots(c, "tokyo", {"db": ["s1", "s3"]}) == {"db": []}
        assert delete_remote_snapshots(c, "tokyo", {"db": []}) == {}
        # The newest replica snapshot is the next incremental's base: refused, nothing deleted.
        with pytest.raises(InUse, match="db@s4 is the newest"):
            delete_remote_snapshots(c, "tokyo", {"db": ["s0", "s4"]})
        with pytest.raises(InvalidArgument):
            delete_remote_snapshots(c, "tokyo", {"db": "s0"})
        vd.write(10 * BS, os.urandom(BS))
        assert c.replicate(vd.snapshot("s5"), "tokyo").base_snapshot == "s4"
        expected = image(vd.snapshots()[-1])
    tokyo.stop()
    assert set(replica_images(tokyo.path, "paris", "db")) == {"s0", "s2", "s4", "s5"}
    assert replica_images(tokyo.path, "paris", "db")["s5"] == expected
    assert_clean(tokyo.path)


def test_version_2_peers_and_prune_by_name(tmp_path, site, monkeypatch):
    """A connection that negotiated version 2 (the other side is an older build) keeps
    replicating and pruning by count; pruning by name needs version 3 and says so on
    both sides, deleting nothing."""
    tokyo = site.start(site.make("tokyo"))
    monkeypatch.setattr(tcp, "client_handshake", functools.partial(
        auth.client_handshake, versions=(WIRE_MIN_PROTOCOL_VERSION, 2)))
    with source(tmp_path) as c:
        _replicated_db(c, tokyo, 3)
        # This build as the source, an older one as the target:
        with pytest.raises(VersionMismatch, match="speaks replication protocol version 2; "
                                                  "deleting replica snapshots by name needs "
                                                  "version 3: upgrade nxstore there"):
            delete_remote_snapshots(c, "tokyo", {"db": ["s0"]})

        # A version 2 connection that sends PRUNE_SNAPSHOTS anyway: the target refuses it.
        async def send_anyway():
            s = await open_session(c, get_site(c.ctx.catalog, "tokyo"))
            try:
                assert s.t.version == 2
                await s.request(lambda r: PruneSnapshots("db", ("s0",), req_id=r), Pruned)
            finally:
                await s.close()

        with pytest.raises(ProtocolError, match="PRUNE_SNAPSHOTS needs protocol version 3; "
                                                "paris negotiated 2"):
            asyncio.run(send_anyway())
        assert c.prune_remote("tokyo", "db", 2) == ["s0"]
    tokyo.stop()
    assert set(replica_images(tokyo.path, "paris", "db")) == {"s1", "s2"}


# -- (h) bandwidth limit -------------------------------------------------------------------------
def test_bandwidth_limit_is_honoured_over_5s_windows(tmp_path, site):
    tokyo = site.start(site.make("tokyo"))
    limit = 2_000_000  # bytes/s
    proxy = ThreadedProxy(tokyo.port)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:  # bytes the source sent, as they pass the proxy
        while not done.is_set():
            samples.append((time.monotonic(), proxy.proxy.passed("up")))
            time.sleep(0.05)

    try:
        with source(tmp_path) as c:
            c.add_remote_site("tokyo", proxy.address, SECRET)
            vd = c.create_vdisk("db", 16 * MiB)
            vd.write(0, os.urandom(12 * MiB))
            snap = vd.snapshot("s1")
            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                r = c.replicate(snap, "tokyo", bandwidth_limit=limit)
            finally:
                done.set()
                sampler.join()
    finally:
        proxy.close()
    assert r.blocks_sent == 3072 and r.seconds >= 5
    assert r.bytes_on_wire / r.seconds <= 1.1 * limit, r
    worst = 0.0
    for i, (t0, b0) in enumerate(samples):
        for t1, b1 in samples[i:]:
            if t1 - t0 >= 5.0:
                worst = max(worst, (b1 - b0) / (t1 - t0))
                break
    assert 0 < worst <= 1.1 * limit, worst
    tokyo.stop()


# -- (i) SIGTERM during a transfer -----------------------------------------------------------------
def test_sigterm_during_transfer_exits_cleanly_and_retry_succeeds(tmp_path, site):
    tokyo_path = site.make("tokyo")
    tokyo = site.start(tokyo_path)
    rng = np.random.default_rng(9)
    proxy = ThreadedProxy(tokyo.port)  # counts the bytes that reached the daemon
    with source(tmp_path) as c:
        c.add_remote_site("tokyo", proxy.address, SECRET)
        vd = c.create_vdisk("db", 16 * MiB)
        vd.write(0, rand(rng, MiB))
        s1 = vd.snapshot("s1")
        c.replicate(s1, "tokyo")
        vd.write(MiB, rand(rng, 12 * MiB))
        s2 = vd.snapshot("s2")
        outcome: list[BaseException | object] = []

        def ship() -> None:
            try:
                outcome.append(c.replicate(s2, "tokyo", bandwidth_limit=4_000_000))
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)

        t = threading.Thread(target=ship)
        t.start()
        # SIGTERM once two 4 MiB BLOCKS frames (of three) have reached the daemon (the
        # count is the newest connection's: s1's ended at ~1.1 MB).
        deadline = time.monotonic() + 60
        while proxy.proxy.passed("up") < 8_500_000 and t.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert t.is_alive(), f"the transfer ended before tokyo stopped: {outcome}"
        tokyo.stop()  # asserts exit status 0 and no traceback
        t.join(60)
        proxy.close()
        assert len(outcome) == 1 and isinstance(outcome[0], NxError), outcome
        expected = {"s1": image(s1), "s2": image(s2)}
        assert replica_images(tokyo_path, "paris", "db") == {"s1": expected["s1"]}
        assert_clean(tokyo_path)
        tokyo = site.start(tokyo_path)
        c.remove_remote_site("tokyo")
        c.add_remote_site("tokyo", tokyo.address, SECRET)
        r = c.replicate(s2, "tokyo")
        assert r.base_snapshot == "s1" and r.blocks_sent < 3072
    tokyo.stop()
    assert replica_images(tokyo_path, "paris", "db") == expected


# -- TLS ----------------------------------------------------------------------------------
def test_tls_site(tmp_path, site):
    cert, key = self_signed(tmp_path, "lyon")
    other, _ = self_signed(tmp_path, "other")
    target = site.make("lyon")
    daemon = Daemon.start(target, site.secret_file, "--tls-cert", cert, "--tls-key", key)
    try:
        c = source(tmp_path)
        vd = c.create_vdisk("db", 2 * MiB)
        vd.write(0, rand(np.random.default_rng(5), 2 * MiB))
        snap = vd.snapshot("s1")
        c.add_remote_site("plain", daemon.address, SECRET)
        c.add_remote_site("wrong-ca", daemon.address, SECRET, tls_ca=other)
        c.add_remote_site("lyon", daemon.address, SECRET, tls_ca=cert)
        with pytest.raises(NxError):  # plain TCP to a TLS endpoint
            c.replicate(snap, "plain")
        with pytest.raises(NxError):  # certificate not signed by the CA we trust
            c.replicate(snap, "wrong-ca")
        r = c.replicate(snap, "lyon")
        assert r.blocks_sent == 2 * MiB // BS
        expected = image(snap)
        c.close()
    finally:
        daemon.stop()
    assert replica_images(target, "paris", "db") == {"s1": expected}
