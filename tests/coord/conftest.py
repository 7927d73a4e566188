from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from etcd_server import EtcdServer  # noqa: E402


@pytest.fixture
def etcd(tmp_path):
    with EtcdServer.start(tmp_path) as server:
        yield server
