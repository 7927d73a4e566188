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

A forging relay: `proxy.rewrite["up"] = Rewrite(msg_type, action, edit)` makes the proxy
split that direction into frames (48-byte header, docs/format.md) and pass everything
through, the genuine handshake included, except the first frame of type `msg_type`:
"forge" replaces its payload with `edit(payload)` and recomputes the frame checksum (what
a relay without the secret can do); "drop" swallows it; "replay" sends it twice;
"reorder" sends it after the frame that follows it. `rewrite.done` counts the frames
tampered with (compressed frames are passed through untouched).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass

import xxhash

HEADER = 48  # frame header bytes (WIRE_FRAME_HEADER_BYTES, restated: this is the attacker)


@dataclass
class Faults:
    flip_at: int | None = None
    stall_at: int | None = None
    cut_at: int | None = None


@dataclass
class Rewrite:
    msg_type: int
    action: str  # "forge", "drop", "replay", "reorder"
    edit: Callable[[bytes], bytes] | None = None
    done: int = 0


class _FrameRelay:
    """Splits one direction's byte stream into frames and applies a Rewrite once."""

    def __init__(self, rw: Rewrite) -> None:
        self.rw = rw
        self.buf = bytearray()
        self.held: bytes | None = None  # "reorder": the frame sent after the next one

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = bytearray()
        while len(self.buf) >= HEADER:
            (length,) = struct.unpack_from("<I", self.buf, 8)
            if len(self.buf) < HEADER + length:
                break
            frame = bytes(self.buf[: HEADER + length])
            del self.buf[: HEADER + length]
            out += self._one(frame)
        return bytes(out)

    def _one(self, frame: bytes) -> bytes:
        if self.held is not None:
            frame, self.held = frame + self.held, None
            return frame
        rw = self.rw
        (flags,) = struct.unpack_from("<H", frame, 6)
        if rw.done or frame[5] != rw.msg_type or flags & 1:
            return frame
        rw.done += 1
        if rw.action == "drop":
            return b""
        if rw.action == "replay":
            return frame + frame
        if rw.action == "reorder":
            self.held = frame
            return b""
        assert rw.action == "forge" and rw.edit is not None
        payload = rw.edit(frame[HEADER:])
        head = bytearray(frame[:HEADER])
        struct.pack_into("<II", head, 8, len(payload), len(payload))
        seed = xxhash.xxh3_64_intdigest(payload) if payload else 0
        struct.pack_into("<Q", head, 24, xxhash.xxh3_64_intdigest(bytes(head[:24]), seed=seed))
        return bytes(head) + payload  # the tag (bytes 32..47) is left as it was


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.faults: dict[str, Faults] = {"up": Faults(), "down": Faults()}
        self.rewrite: dict[str, Rewrite | None] = {"up": None, "down": None}
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
        rw = self.rewrite[direction]
        relay = _FrameRelay(rw) if rw is not None else None
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
                if relay is not None:
                    data = relay.feed(data)
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
