"""An asyncio TCP proxy for tests: forwards bytes and can damage them on the way.

    proxy = await FaultProxy.start("127.0.0.1", target_port)
    proxy.faults["up"] = Faults(flip_at=proxy.passed("up") + 100)
    ... connect to ("127.0.0.1", proxy.port) ...
    await proxy.close()

Directions: "up" = client -> server, "down" = server -> client. Offsets count the bytes
of one direction since the connection opened; `passed(direction)` is the count of the
newest connection, so a test can arm a fault "N bytes from now", e.g. after the handshake.
A fault: `flip_at` XORs that byte with 0xFF; `stall_at` forwards nothing from that byte on
(the connection stays open); `cut_at` forwards the bytes before it, then closes both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass
class Faults:
    flip_at: int | None = None
    stall_at: int | None = None
    cut_at: int | None = None


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.faults: dict[str, Faults] = {"up": Faults(), "down": Faults()}
        self._passed: dict[str, int] = {"up": 0, "down": 0}
        self.flipped = 0
        self.cut = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    async def start(cls, target_host: str, target_port: int) -> FaultProxy:
        p = cls(target_host, target_port)
        p._server = await asyncio.start_server(p._on_client, "127.0.0.1", 0)
        return p

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def passed(self, direction: str) -> int:
        return self._passed[direction]

    async def _on_client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.close()
            return
        self._writers.update((cw, sw))
        self._passed = {"up": 0, "down": 0}
        up = asyncio.create_task(self._pump("up", cr, sw, cw))
        down = asyncio.create_task(self._pump("down", sr, cw, sw))
        self._tasks.update((up, down))
        await asyncio.gather(up, down, return_exceptions=True)
        self._tasks.difference_update((up, down))

    async def _pump(
        self,
        direction: str,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        other: asyncio.StreamWriter,
    ) -> None:
        pos = 0
        stalled = False
        try:
            while True:
                data = await src.read(256 * 1024)
                if not data:
                    break
                start, end = pos, pos + len(data)
                pos = end
                self._passed[direction] = pos
                if stalled:
                    continue
                f = self.faults[direction]
                if f.cut_at is not None and start <= f.cut_at < end:
                    dst.write(data[: f.cut_at - start])
                    with contextlib.suppress(Exception):
                        await dst.drain()
                    self.cut += 1
                    break
                if f.stall_at is not None and start <= f.stall_at < end:
                    dst.write(data[: f.stall_at - start])
                    stalled = True
                    continue
                if f.flip_at is not None and start <= f.flip_at < end:
                    b = bytearray(data)
                    b[f.flip_at - start] ^= 0xFF
                    data = bytes(b)
                    self.flipped += 1
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if not stalled:
                for w in (dst, other):
                    with contextlib.suppress(Exception):
                        w.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
