"""`nxstore serve --etcd` worker processes for the coordination tests and benchmarks.

    w = Worker.join(path, secret_file, etcd_url, "w1")   # ready once it joined the site
    w.wait_for("serving site", 30)                        # ... and leads (it opened PATH)
    w.stop() / w.kill()                                   # SIGTERM (clean exit) / SIGKILL
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "replication"))
from sites_helper import NXSTORE, Daemon  # noqa: E402

__all__ = ["LEASE_TTL", "NXSTORE", "Daemon", "Worker"]

LEASE_TTL = 5


class Worker(Daemon):
    """`nxstore serve PATH --etcd URL --worker NAME`, ready once it has joined the site.
    `line_times[i]`: when `lines[i]` was read (time.monotonic())."""

    def __init__(self, proc: subprocess.Popen, path: str) -> None:
        self.line_times: list[float] = []  # before the reader thread starts
        super().__init__(proc, path)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.line_times.append(time.monotonic())  # first: lines[i] has its time
            self.lines.append(line.rstrip("\n"))
            if not self._ready.is_set() and self._ready_line(line):
                self._ready.set()

    @classmethod
    def join(cls, path: str, secret_file: str, etcd: str, name: str, *extra: str,
             listen: str = "127.0.0.1:0") -> Worker:
        d = cls._spawn(["serve", path, "--listen", listen, "--secret-file", secret_file,
                        "--schedule-interval", "0", "--etcd", etcd, "--worker", name,
                        "--lease-ttl", str(LEASE_TTL), *extra], path, 60)
        d.name = name
        return d

    def _ready_line(self, line: str) -> bool:
        super()._ready_line(line)  # takes the port once it leads
        return " joined the site at " in line or "not coordinating" in line

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds until a line of its stderr contains `text` (AssertionError after `timeout`)."""
        start = time.monotonic()
        while not any(text in line for line in self.lines):
            assert time.monotonic() - start < timeout, f"no {text!r} in:\n{self.stderr}"
            time.sleep(0.02)
        return time.monotonic() - start
