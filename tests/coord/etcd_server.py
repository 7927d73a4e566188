"""A real single-node etcd for the coordination tests and benchmarks: 127.0.0.1 only, a
temporary data directory, free non-default ports, ready when its /health endpoint says so.

    with EtcdServer.start(tmp_path) as etcd:   # AssertionError if etcd is missing or fails
        etcd.url                               # http://127.0.0.1:PORT
        etcd.kill()                            # SIGKILL (etcd unreachable from then on)
        etcd.restart()                         # the same ports and data: its state is back
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

READY_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.url = f"http://127.0.0.1:{free_port()}"
        self.peer_url = f"http://127.0.0.1:{free_port()}"
        self.log = directory / "etcd.log"
        self.proc: subprocess.Popen | None = None

    @classmethod
    def start(cls, directory: Path) -> EtcdServer:
        server = cls(directory)
        server.restart()
        return server

    def restart(self) -> None:
        """Start etcd (again: the same ports and data directory) and wait until healthy."""
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        assert os.access(binary, os.X_OK), "etcd is missing: apt-get install etcd-server"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [binary, "--name", "nxtest", "--data-dir", str(self.directory / "etcd-data"),
                 "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                 "--listen-peer-urls", self.peer_url,
                 "--initial-advertise-peer-urls", self.peer_url,
                 "--initial-cluster", f"nxtest={self.peer_url}", "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError("etcd did not become healthy:\n"
                                     f"{self.log.read_text()[-2000:]}")
            time.sleep(0.05)  # a poll interval, not a guess: readiness is /health

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EtcdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
