"""Fixtures of the Metro tests: the witness's secret file, real witness processes, and
`world`, a World of real processes closed at teardown."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # harness, link_proxy, witness_helper
sys.path.insert(0, str(Path(__file__).parent.parent / "replication"))  # sites_helper

from harness import World  # noqa: E402


@pytest.fixture
def secret_file(tmp_path) -> str:
    """A file holding witness_helper.SECRET, mode 0600 (nxstore refuses looser modes)."""
    from witness_helper import SECRET

    path = tmp_path / "witness.secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def start_witness(tmp_path, secret_file):
    """start(data=tmp_path/"witness") -> a running WitnessDaemon; every daemon is killed
    at teardown if the test did not stop it."""
    from witness_helper import WitnessDaemon

    daemons: list = []

    def start(data: str | None = None, *extra: str):
        d = WitnessDaemon.start(data or str(tmp_path / "witness"), secret_file, *extra)
        daemons.append(d)
        return d

    yield start
    for d in daemons:
        d.cleanup()


@pytest.fixture
def world(tmp_path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()
