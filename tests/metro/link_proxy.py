"""LinkProxy: a TCP link between two processes on 127.0.0.1 that a test controls.

    link = LinkProxy(server_port)          # listens on 127.0.0.1:link.port at once
    client connects to link.address ...
    link.set_mode("stall")                 # both directions; or direction="up" / "down"
    link.set_mode("delay", seconds=0.05)
    link.set_mode("drop")                  # close every connection, refuse new ones
    link.set_mode("pass")
    link.set_target(new_port)              # the server restarted elsewhere
    link.close()

It runs its own asyncio loop on a daemon thread; every method is synchronous and has taken
effect when it returns (set_mode waits for the loop to apply it), so a test needs no sleeps.

Directions: "up" = client -> server, "down" = server -> client. Each direction of each
connection is a FIFO: a reader queues what arrives (at most QUEUE_CHUNKS chunks, then it stops
reading, so the sender's socket fills as on a real network) and a forwarder sends the queue on
according to the direction's mode *at the time it forwards*, so a mode change applies to data
already queued:

* ``pass``: forward at once.
* ``stall``: forward nothing more and keep every connection open (a partition: the peers see
  silence, not an error). New connections are accepted (and connected upstream) but stalled.
  Back to ``pass``, everything queued goes on in order, like TCP after a partition heals.
* ``delay`` (``seconds``): each chunk goes on `seconds` after it arrived, in order (latency,
  not a bandwidth limit).
* ``drop``: connections, not directions, can be cut: dropping either direction aborts every
  connection at once (both sides see a reset or EOF) and, while any direction is in drop,
  closes each new connection as soon as it is accepted.

``at_byte=N`` arms a mode change for one exact point of a direction's stream instead: the
direction forwards up to byte N of `passed(direction)` (counted over all connections since
the proxy started) and switches to the mode before forwarding byte N, e.g. ``set_mode("stall",
"up", at_byte=link.passed("up") + 100_000)`` stalls in the middle of a transfer,
deterministically. A connection that cannot reach the target (no target, refused) is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DIRECTIONS = ("up", "down")
MODES = ("pass", "stall", "delay", "drop")
READ_BYTES = 64 * 1024  # bytes per read: the unit a mode change can split at most once
QUEUE_CHUNKS = 64  # chunks a direction queues before it stops reading (back-pressure)
CALL_TIMEOUT_S = 10.0  # a control call the loop does not run in this long is a harness bug
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Mode:
    kind: str  # one of MODES
    seconds: float = 0.0  # delay only


@dataclass
class _Pipe:
    """One direction of one connection."""

    direction: str
    src: asyncio.StreamReader
    dst: asyncio.StreamWriter
    queue: asyncio.Queue  # (arrival monotonic time, bytes); b"" = the sender's EOF


class LinkProxy:
    def __init__(self, target_port: int | None = None, *, name: str = "link") -> None:
        """Listen on a free 127.0.0.1 port now; forward to `target_port` (None: close every
        connection until `set_target`)."""
        self.name = name
        self._target = target_port
        self._modes = {d: Mode("pass") for d in DIRECTIONS}
        self._armed: dict[str, tuple[int, Mode] | None] = {d: None for d in DIRECTIONS}
        self._passed = {d: 0 for d in DIRECTIONS}
        self._queued = {d: 0 for d in DIRECTIONS}
        self._open: dict[asyncio.Task, tuple[asyncio.StreamWriter, ...]] = {}
        self.accepted = 0  # connections accepted since start (refused ones included)
        self._progress = threading.Condition()  # notified on every byte count / connection change
        self._loop = asyncio.new_event_loop()
        self._changed: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"LinkProxy {name}")
        self._thread.start()
        self._server = self._call(self._listen)

    # -- control (any thread) ------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def target_port(self) -> int | None:
        return self._target

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        return len(self._open)

    def passed(self, direction: str) -> int:
        """Bytes forwarded in `direction` since the proxy started (all connections)."""
        return self._passed[_check_direction(direction)]

    def queued(self, direction: str) -> int:
        """Bytes received in `direction` and not forwarded yet (held by stall or delay)."""
        return self._queued[_check_direction(direction)]

    def mode(self, direction: str) -> Mode:
        return self._modes[_check_direction(direction)]

    def set_target(self, port: int | None) -> None:
        """New connections go to `port`; open ones keep theirs."""
        self._target = port

    def set_mode(self, kind: str, direction: str = "both", *, seconds: float = 0.0,
                 at_byte: int | None = None) -> None:
        """Switch `direction` ("up", "down" or "both") to mode `kind` (see the module
        docstring), now or when the direction's `passed` count reaches `at_byte`."""
        if kind not in MODES:
            raise ValueError(f"unknown mode {kind!r}: one of {', '.join(MODES)}")
        if (kind == "delay") != (seconds > 0):
            raise ValueError("seconds > 0 goes with mode 'delay', and only with it")
        dirs = DIRECTIONS if direction == "both" else (_check_direction(direction),)
        mode = Mode(kind, seconds)

        def apply() -> None:
            for d in dirs:
                if at_byte is None:
                    self._modes[d], self._armed[d] = mode, None
                elif at_byte <= self._passed[d]:
                    raise ValueError(f"at_byte {at_byte} already passed ({self._passed[d]})")
                else:
                    self._armed[d] = (at_byte, mode)
            self._apply_modes()

        self._call(apply)

    def wait_passed(self, direction: str, at_least: int, timeout: float = 30.0) -> int:
        """Block until `passed(direction) >= at_least`; the count. AssertionError on timeout."""
        return self._wait(lambda: self.passed(direction), at_least, timeout, f"passed {direction}")

    def wait_queued(self, direction: str, at_least: int, timeout: float = 30.0) -> int:
        """Block until `queued(direction) >= at_least`; the count. AssertionError on timeout."""
        return self._wait(lambda: self.queued(direction), at_least, timeout, f"queued {direction}")

    def close(self) -> None:
        """Abort every connection, stop listening, stop the loop (idempotent)."""
        if self._loop.is_closed():
            return

        async def shutdown() -> None:
            self._server.close()
            self._abort_all()
            tasks = list(self._open)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

        self._call(shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT_S)
        self._loop.close()

    def _call(self, fn: Callable[[], object]) -> object:
        async def run() -> object:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(CALL_TIMEOUT_S)

    def _wait(self, count: Callable[[], int], at_least: int, timeout: float, what: str) -> int:
        with self._progress:
            if not self._progress.wait_for(lambda: count() >= at_least, timeout):
                raise AssertionError(f"{self.name}: {count()} bytes {what} after {timeout:g} s, "
                                     f"waited for {at_least}")
            return count()

    # -- the loop ------------------------------------------------------------------------
    async def _listen(self) -> asyncio.base_events.Server:
        self._changed = self._loop.create_future()
        return await asyncio.start_server(self._on_client, "127.0.0.1", 0)

    def _notify(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _apply_modes(self) -> None:
        """Wake every forwarder to look at the modes again; carry out a drop."""
        assert self._changed is not None
        self._changed.set_result(None)
        self._changed = self._loop.create_future()
        if self._dropping:
            self._abort_all()

    @property
    def _dropping(self) -> bool:
        return any(m.kind == "drop" for m in self._modes.values())

    def _abort_all(self) -> None:
        for task, writers in list(self._open.items()):
            for w in writers:
                w.transport.abort()
            task.cancel()

    async def _on_client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._notify()
        if self._dropping or self._target is None:
            cw.transport.abort()
            return
        try:
            sr, sw = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self._target),
                                            CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError):
            cw.transport.abort()
            return
        if self._dropping:  # dropped while connecting
            sw.transport.abort()
            cw.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = (cw, sw)
        self._notify()
        pipes = [asyncio.create_task(self._run(_Pipe(d, src, dst, asyncio.Queue(QUEUE_CHUNKS))))
                 for d, src, dst in (("up", cr, sw), ("down", sr, cw))]
        try:
            done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            if any(not t.cancelled() and t.exception() is not None for t in done):
                for w in (cw, sw):  # one side failed: the other learns it at once
                    w.transport.abort()
        except asyncio.CancelledError:  # dropped or closed: already aborted
            pass
        finally:
            for t in pipes:
                t.cancel()
            for w in (cw, sw):
                w.close()
            del self._open[task]
            self._notify()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pipes, return_exceptions=True)

    async def _run(self, pipe: _Pipe) -> None:
        reader = asyncio.create_task(self._read(pipe))
        try:
            await self._forward(pipe)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reader
            while not pipe.queue.empty():  # an aborted connection's bytes are gone
                self._queued[pipe.direction] -= len(pipe.queue.get_nowait()[1])
            self._notify()

    async def _read(self, pipe: _Pipe) -> None:
        while True:
            try:
                data = await pipe.src.read(READ_BYTES)
            except OSError:
                data = b""
            self._queued[pipe.direction] += len(data)
            await pipe.queue.put((time.monotonic(), data))
            self._notify()
            if not data:
                return

    async def _forward(self, pipe: _Pipe) -> None:
        """Forward the queue until the sender's EOF (passed on as EOF)."""
        d = pipe.direction
        data = b""
        try:
            while True:
                arrived, data = await pipe.queue.get()
                while True:
                    await self._until_due(d, arrived)
                    armed = self._armed[d]
                    if armed is None or self._passed[d] + len(data) <= armed[0]:
                        break
                    # Forward up to the armed byte; the rest waits for the new mode, which
                    # is carried out (a drop aborts) once the head has left.
                    cut = armed[0] - self._passed[d]
                    self._modes[d], self._armed[d] = armed[1], None
                    self._send(pipe, data[:cut])
                    data = data[cut:]
                    await pipe.dst.drain()
                    self._apply_modes()
                if not data:
                    if pipe.dst.can_write_eof():
                        pipe.dst.write_eof()
                    return
                self._send(pipe, data)
                data = b""
                await pipe.dst.drain()
        finally:
            self._queued[d] -= len(data)  # held here when the connection was aborted

    def _send(self, pipe: _Pipe, data: bytes) -> None:
        self._passed[pipe.direction] += len(data)  # counted first: the peer may read at once
        self._queued[pipe.direction] -= len(data)
        pipe.dst.write(data)
        self._notify()

    async def _until_due(self, direction: str, arrived: float) -> None:
        """Return when `direction`'s mode lets a chunk that arrived at `arrived` go on."""
        while True:
            mode, changed = self._modes[direction], self._changed
            assert changed is not None
            if mode.kind == "pass":
                return
            if mode.kind == "delay":
                wait = arrived + mode.seconds - time.monotonic()
                if wait <= 0:
                    return
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(changed), wait)
            else:  # stall; drop: the connection is being aborted
                await asyncio.shield(changed)  # shielded: a cancelled waiter must not cancel it


def _check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not 'up' or 'down'")
    return direction
