"""A real single-node etcd for the coordination tests and benchmarks: 127.0.0.1 only, a
temporary data directory, free non-default ports, ready when its /health endpoint says so.

    with EtcdServer.start(tmp_path) as etcd:   # AssertionError if etcd is missing or fails
        etcd.url                               # http://127.0.0.1:PORT
        etcd.kill()                            # SIGKILL (etcd unreachable from then on)
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
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    @classmethod
    def start(cls, directory: Path) -> EtcdServer:
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        assert os.access(binary, os.X_OK), "etcd is missing: apt-get install etcd-server"
        client, peer = free_port(), free_port()
        url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        log = directory / "etcd.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [binary, "--name", "nxtest", "--data-dir", str(directory / "etcd-data"),
                 "--listen-client-urls", url, "--advertise-client-urls", url,
                 "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                 "--initial-cluster", f"nxtest={peer_url}", "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        server = cls(proc, url, log)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not server.healthy():
            if proc.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise AssertionError(f"etcd did not become healthy:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)  # a poll interval, not a guess: readiness is /health
        return server

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> EtcdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
