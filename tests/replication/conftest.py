"""Shared helpers for the replication tests (no pytest-asyncio: each test runs its own loop)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tcp_proxy


def run(coro, timeout: float = 30.0):
    """Run `coro` in a fresh event loop, failing the test if it takes over `timeout` s."""

    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())
