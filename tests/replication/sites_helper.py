"""Real `nxstore serve` processes for the end-to-end replication tests.

    d = Daemon.start(cluster_path, secret_file)   # 127.0.0.1, port 0, waits for the port
    c.add_remote_site("canada", d.address, SECRET)
    ...
    d.stop()        # SIGTERM; asserts a clean exit (status 0, no traceback)
    d.kill()        # SIGKILL, for crash tests

Every line the daemon writes to stderr is kept in `d.lines` (read by a thread, so the
pipe never fills up).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

NXSTORE = [sys.executable, "-m", "nxstore.cli"]
_PORT_RE = re.compile(r"serving site (\S+) \(cluster (\w+)\) on 127\.0\.0\.1:(\d+)")


class Daemon:
    def __init__(self, proc: subprocess.Popen, path: str) -> None:
        self.proc = proc
        self.path = path
        self.lines: list[str] = []
        self.port = 0
        self.site = ""
        self.cluster_id = ""
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, path: str, secret_file: str, *extra: str, timeout: float = 30.0) -> Daemon:
        """Start `nxstore serve PATH` on 127.0.0.1:0 and wait until it logs its port.
        AssertionError (with its stderr) if it exits or says nothing in `timeout` s."""
        return cls._spawn(["serve", path, "--listen", "127.0.0.1:0", "--secret-file",
                           secret_file, *extra], path, timeout)

    @classmethod
    def _spawn(cls, args: list[str], path: str, timeout: float) -> Daemon:
        """Run `nxstore ARGS` and wait until `_ready_line` accepts a line of its stderr."""
        proc = subprocess.Popen(
            [*NXSTORE, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        d = cls(proc, path)
        deadline = time.monotonic() + timeout
        while not d._ready.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                d._reader.join(2)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                raise AssertionError(f"nxstore {args[0]} {path} did not start "
                                     f"(rc {proc.returncode}):\n{d.stderr}")
        return d

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if not self._ready.is_set() and self._ready_line(line):
                self._ready.set()

    def _ready_line(self, line: str) -> bool:
        """Is `line` the daemon's readiness line? (Takes its port, site and cluster id.)"""
        m = _PORT_RE.search(line)
        if m:
            self.site, self.cluster_id, self.port = m.group(1), m.group(2), int(m.group(3))
        return m is not None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> str:
        """SIGTERM, wait, assert a clean exit (status 0, no traceback); returns its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"nxstore serve did not stop on SIGTERM:\n{self.stderr}") from None
        self._reader.join(5)
        assert rc == 0, f"nxstore serve exited with {rc}:\n{self.stderr}"
        assert "Traceback" not in self.stderr, self.stderr
        return self.stderr

    def kill(self) -> None:
        """SIGKILL (a crash): no cleanup at all."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)

    def cleanup(self) -> None:
        """Kill it if still running (test teardown; no assertions)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
