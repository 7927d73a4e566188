"""Witnesses for the Metro tests: a real `nxstore witness` process, and one in this process.

    w = WitnessDaemon.start(data_dir, secret_file)   # 127.0.0.1, port 0, waits for readiness
    client = WitnessClient(w.address, SECRET, "paris", "cluster-paris")
    w.stop()        # SIGTERM; asserts a clean exit (status 0, no traceback)
    w.kill()        # SIGKILL, for crash tests

    with InProcessWitness(data_dir, SECRET) as w:     # a WitnessServer on a loop thread
        ...

The daemon is ready once it logs "witness ID serving ... on 127.0.0.1:PORT" (stderr, read
by a thread so the pipe never fills up; every line is kept in `lines`).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Coroutine
from typing import Any

from sites_helper import Daemon

from nxstore.metro.witness import WitnessServer, WitnessStore

SECRET = "metro witness test secret"
READY_RE = re.compile(r"witness (\w+) serving .* on 127\.0\.0\.1:(\d+)")


class WitnessDaemon(Daemon):
    """A running `nxstore witness` (stop, kill, stderr, address: as sites_helper.Daemon)."""

    witness_id = ""

    @classmethod
    def start(cls, data: str, secret_file: str, *extra: str,  # type: ignore[override]
              timeout: float = 30.0) -> WitnessDaemon:
        """Start `nxstore witness` on 127.0.0.1:0 over `data` and wait until it is ready.
        AssertionError (with its stderr) if it exits or says nothing in `timeout` s."""
        w = cls._spawn(["witness", "--listen", "127.0.0.1:0", "--secret-file", secret_file,
                        "--data", data, *extra], data, timeout)
        assert isinstance(w, WitnessDaemon)
        return w

    def _ready_line(self, line: str) -> bool:
        m = READY_RE.search(line)
        if m:
            self.witness_id, self.port = m.group(1), int(m.group(2))
        return m is not None


class LoopThread:
    """An asyncio loop on a thread of its own: `run(coro)` runs a coroutine there and
    returns its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class InProcessWitness:
    """A WitnessServer over `data` on 127.0.0.1 (a free port), served on a LoopThread."""

    def __init__(self, data: str, secret: str = SECRET, **serve_options: Any) -> None:
        self.store = WitnessStore.open(data)
        self.loop = LoopThread()
        try:
            self.server: WitnessServer = self.loop.run(
                WitnessServer.start(self.store, "127.0.0.1", 0, secret, **serve_options))
        except BaseException:
            self.loop.close()
            self.store.close()
            raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def close(self) -> None:
        try:
            self.loop.run(self.server.close())
        finally:
            self.loop.close()
            self.store.close()

    def __enter__(self) -> InProcessWitness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
