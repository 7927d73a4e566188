"""Fixtures of the Leap tests: `zones`, a set of in-process served clusters on one fake
clock (closed at teardown)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # leap_helpers
sys.path.insert(0, str(Path(__file__).parent.parent / "replication"))  # sites_helper

from leap_helpers import Zones  # noqa: E402


@pytest.fixture
def zones(tmp_path, clock) -> Iterator[Zones]:
    z = Zones(tmp_path, clock)
    try:
        yield z
    finally:
        z.close()
