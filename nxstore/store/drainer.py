"""The background drain: keeps the OpLog short without blocking writers for long."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from ..constants import OPLOG_DRAIN_INTERVAL_S, OPLOG_DRAIN_START_BYTES

if TYPE_CHECKING:
    from .cluster import Cluster

log = logging.getLogger(__name__)

POLL_S = 0.25  # seconds between checks of the OpLog's fill level


class Drainer(threading.Thread):
    """Drains the cluster when the OpLog passes OPLOG_DRAIN_START_BYTES, when a
    writer waits for OpLog space (`kick`), and every OPLOG_DRAIN_INTERVAL_S."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(name=f"nxstore-drain:{cluster.path}", daemon=True)
        self._cluster = cluster
        self._wake = threading.Event()
        self._stopping = False

    def kick(self) -> None:
        """Ask for a drain now (called by the OpLog under back-pressure)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop after the drain in progress, if any; returns when the thread has ended."""
        self._stopping = True
        self._wake.set()
        self.join()

    def run(self) -> None:
        idle = 0.0
        while not self._stopping:
            kicked = self._wake.wait(POLL_S)
            self._wake.clear()
            if self._stopping:
                return
            idle += POLL_S
            oplog_bytes = self._cluster._ctx.oplog.bytes_used
            if kicked or oplog_bytes >= OPLOG_DRAIN_START_BYTES or (
                idle >= OPLOG_DRAIN_INTERVAL_S and oplog_bytes
            ):
                idle = 0.0
                try:
                    self._cluster.drain()
                except Exception:  # the next round retries; writers see errors themselves
                    log.exception("background drain failed")
