"""Fixtures of the NBD tests: clusters and in-process exports, and the nbdkit reference."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # nbd_helpers
sys.path.insert(0, str(Path(__file__).parents[1] / "replication"))  # sites_helper

from nbd_helpers import NbdProcess, start_nbdkit_memory  # noqa: E402

import nxstore  # noqa: E402
import nxstore.nbd  # noqa: E402


@pytest.fixture
def cluster(make_cluster):
    """An open cluster (4 KiB blocks, drain thread on) in the test process."""
    return make_cluster(background=True)


@pytest.fixture
def exported(tmp_path) -> Iterator[Callable[..., nxstore.nbd.NbdServer]]:
    """exported(cluster, target, read_only=False) -> an in-process NBD server on a Unix
    socket; closed at teardown (before the cluster closes)."""
    servers: list[nxstore.nbd.NbdServer] = []

    def start(c: nxstore.Cluster, target: str, read_only: bool = False):
        server = nxstore.nbd.serve(c, target, unix=str(tmp_path / f"nbd{len(servers)}.sock"),
                                   read_only=read_only)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(params=["nxstore", "nbdkit"])
def any_server(request, cluster, exported, tmp_path) -> Callable[[int], str]:
    """uri(size): a fresh read-write export of `size` bytes, from nxstore or from the
    nbdkit memory plugin (the reference)."""
    made: list[NbdProcess] = []

    def make(size: int) -> str:
        if request.param == "nbdkit":
            made.append(start_nbdkit_memory(tmp_path, size))
            return made[-1].uri
        cluster.create_vdisk("disk", size)
        return exported(cluster, "disk").uri

    yield make
    for p in made:
        p.kill()
