"""The Leap layer of an open cluster: how it is served, its in-memory stage hooks, and the
tick that the scheduler runs before the schedules."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..protection.manager import ProtectionManager
from .definitions import deliver_owed
from .membership import Reconciled, reconcile
from .recovery import StageHook
from .zones import Endpoint

log = logging.getLogger(__name__)


class LeapService:
    """Held by the Cluster facade. `manager` returns the ProtectionManager (made on first
    use)."""

    def __init__(self, manager: Callable[[], ProtectionManager]) -> None:
        self.manager = manager
        self.endpoint: Endpoint | None = None   # set by `nxstore serve`
        self.hooks: dict[tuple[str, int], StageHook] = {}  # (plan, stage number) -> callable
        self._tick_lock = threading.Lock()

    def tick(self) -> Reconciled:
        """Deliver owed definitions to their zones, then reconcile the policies whose
        primary zone is this site (nxstore.leap.membership). Never raises for one zone or
        entity; what failed is logged and in the result."""
        mgr = self.manager()
        with self._tick_lock:
            undelivered = deliver_owed(mgr)
            out = reconcile(mgr)
        out.errors.extend(f"definition not delivered to {u}" for u in undelivered)
        for line in out.conflicts:
            log.warning("Leap: %s", line)
        for line in out.errors:
            log.warning("Leap: %s", line)
        return out
