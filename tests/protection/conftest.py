"""Fixtures for the protection tests: a cluster on the fake clock."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pd_helpers


@pytest.fixture
def cl(make_cluster, clock):
    """A fresh cluster (site "france") on the fake clock, no background drain."""
    return make_cluster("france", site_name="france", clock=clock)
