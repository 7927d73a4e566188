"""Fixtures of the NearSync tests: a source cluster on the fake clock and real remotes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # ns_helpers
sys.path.insert(0, str(Path(__file__).parent.parent / "replication"))  # sites_helper, tcp_proxy



@pytest.fixture
def remote(tmp_path):
    """start(name) -> (path, running `nxstore serve` Daemon) of a new 4 KiB-block cluster;
    every daemon is killed at teardown if the test did not stop it."""
    from ns_helpers import SECRET
    from sites_helper import Daemon

    import nxstore

    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)  # nxstore refuses a secret file others can read
    daemons: list = []

    def start(name: str = "canada", path: str | None = None):
        path = path or str(tmp_path / name)
        if not os.path.exists(path):
            nxstore.Cluster.create(path, block_size=4096, background=False).close()
        d = Daemon.start(path, str(secret))
        daemons.append(d)
        return path, d

    yield start
    for d in daemons:
        d.cleanup()
