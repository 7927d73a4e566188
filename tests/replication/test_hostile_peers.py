"""A real `nxstore serve` under 200 hostile connections (loopback only).

Before the fix for issue 12 item 2, 50 connections announcing 16 MiB frames took a daemon
to 1.7 GB and 200 lz4 bombs to 3.1 GB. Here 200 connections, 40 of each kind: 16 MiB
frame headers followed by a stream of junk, lz4 bombs (65 KB that expand to 16 MiB),
idle connections, a HELLO followed by silence, and HELLO bytes trickled one per 0.5 s.
The daemon's peak RSS (VmHWM) must stay under PEAK_RSS_LIMIT, every hostile connection
must be closed by the daemon within the handshake timeout, and a real replication must
succeed while the attack is on and after it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import lz4.block
import numpy as np
from sites_helper import Daemon
from test_limits import frame_header

import nxstore
from nxstore.constants import WIRE_HANDSHAKE_TIMEOUT_S, WIRE_MAX_FRAME_PAYLOAD
from nxstore.replication import Hello, encode

MiB = 1 << 20
SECRET = "hostile peers shared secret"
KINDS = ("big", "bomb", "idle", "hello", "trickle")
PER_KIND = 40
PEAK_RSS_LIMIT = 300 * MiB


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


HELLO = b"".join(bytes(p) for p in encode(Hello(2, 2, "c-evil", "evil", os.urandom(32))))
BOMB_PAYLOAD = lz4.block.compress(bytes(WIRE_MAX_FRAME_PAYLOAD), store_size=False)
BOMB = frame_header(len(BOMB_PAYLOAD), WIRE_MAX_FRAME_PAYLOAD, 1, BOMB_PAYLOAD) + BOMB_PAYLOAD
BIG = frame_header(WIRE_MAX_FRAME_PAYLOAD, WIRE_MAX_FRAME_PAYLOAD)


class Attack:
    """200 hostile connections on an event loop thread. `opened` is set once every
    connection is open (each then sends its bytes); `lifetimes` holds, per connection,
    the seconds until the daemon closed it (None: still open)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened = threading.Event()
        self.lifetimes: list[float | None] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the attack did not finish"

    async def _run(self) -> None:
        conns = []
        for i in range(PER_KIND * len(KINDS)):
            r, w = await asyncio.open_connection("127.0.0.1", self.port)
            conns.append((KINDS[i % len(KINDS)], r, w, time.monotonic()))
        self.lifetimes = [None] * len(conns)
        self.opened.set()
        await asyncio.gather(*(self._one(i, *c) for i, c in enumerate(conns)))

    async def _one(self, i: int, kind: str, r: asyncio.StreamReader,
                   w: asyncio.StreamWriter, t0: float) -> None:
        async def send() -> None:
            try:
                if kind == "big":
                    w.write(BIG)
                    junk = os.urandom(MiB)
                    for _ in range(WIRE_MAX_FRAME_PAYLOAD // MiB):
                        w.write(junk)
                        await w.drain()
                elif kind == "bomb":
                    w.write(BOMB)
                elif kind == "hello":
                    w.write(HELLO)
                elif kind == "trickle":
                    for byte in HELLO:
                        w.write(bytes([byte]))
                        await w.drain()
                        await asyncio.sleep(0.5)
                await w.drain()
            except OSError:
                pass

        sender = asyncio.create_task(send())
        try:
            while await asyncio.wait_for(r.read(65536), WIRE_HANDSHAKE_TIMEOUT_S + 15):
                pass
            self.lifetimes[i] = time.monotonic() - t0  # EOF: the daemon closed it
        except OSError:  # reset: the daemon closed it with our bytes unread
            self.lifetimes[i] = time.monotonic() - t0
        except asyncio.TimeoutError:
            pass  # still open: reported by the test
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            w.close()


def _replicate(c: nxstore.Cluster, vd, name: str, rng) -> None:
    vd.write(0, rng.integers(0, 256, 4 * MiB, dtype=np.uint8).tobytes())
    r = c.replicate(vd.snapshot(name), "tokyo")
    assert r.blocks_sent == 4 * MiB // 4096, r


def test_daemon_memory_bounded_under_200_hostile_connections(tmp_path):
    started = time.monotonic()
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)  # serve refuses a secret file others can read
    path = str(tmp_path / "tokyo")
    nxstore.Cluster.create(path, block_size=4096, background=False).close()
    tokyo = Daemon.start(path, str(secret))
    try:
        pid = tokyo.proc.pid
        baseline = _status_kib(pid, "VmHWM") * 1024
        rng = np.random.default_rng(12)
        with nxstore.Cluster.create(str(tmp_path / "paris"), block_size=4096,
                                    background=False) as c:
            c.add_remote_site("tokyo", tokyo.address, SECRET)
            vd = c.create_vdisk("db", 8 * MiB)
            attack = Attack(tokyo.port)
            assert attack.opened.wait(30), "could not open the hostile connections"
            _replicate(c, vd, "during", rng)  # while the attack is on
            attack.join(WIRE_HANDSHAKE_TIMEOUT_S + 30)
            _replicate(c, vd, "after", rng)
        peak = _status_kib(pid, "VmHWM") * 1024
        rss = _status_kib(pid, "VmRSS") * 1024
        out = tokyo.stop()
    finally:
        tokyo.cleanup()
    lifetimes = attack.lifetimes
    print(f"\ndaemon peak RSS (VmHWM) {peak / MiB:.0f} MiB under {len(lifetimes)} hostile "
          f"connections (before the attack {baseline / MiB:.0f} MiB, after it "
          f"{rss / MiB:.0f} MiB); longest hostile connection "
          f"{max(x for x in lifetimes if x is not None):.1f} s; test "
          f"{time.monotonic() - started:.0f} s; load {os.getloadavg()[0]:.1f}")
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / MiB:.0f} MiB"
    # Every hostile connection was closed by the daemon, none outlived the handshake
    # timeout by more than the slack a busy machine needs.
    assert all(x is not None for x in lifetimes), lifetimes
    assert max(lifetimes) < WIRE_HANDSHAKE_TIMEOUT_S + 10, sorted(lifetimes)[-5:]
    assert "before authentication" in out and "still in the handshake to make room" in out
    with nxstore.Cluster.open(path, background=False) as t:
        assert [s.name for s in t.vdisk("paris:db").snapshots()] == ["during", "after"]
