"""NearSync as a protection replication mode (`nxstore.protection.modes.ReplicationMode`).

`NearSyncMode.attach(engine)` plugs NearSync into an open cluster: the OpLog release floor
and gc roots that keep unshipped episodes (retention.py) and the settings kept in the
catalogue (state.py). The facade then hands the mode to its ProtectionManager, which asks it
about schedules, per-site state, restore points and PDs that leave.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protection.modes import ReplicationState, RestorePoint
from . import activate, driver, retention, state

if TYPE_CHECKING:
    from ..protection.domain import ProtectionDomain
    from ..protection.manager import ProtectionManager
    from ..protection.rows import PDScheduleRow
    from ..protection.schedule import ScheduleRun
    from ..store.engine import Engine


class NearSyncMode:
    """NearSync on one open cluster (see module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def attach(cls, engine: Engine) -> NearSyncMode:
        """Install NearSync's retention on `engine` and load its settings; the mode.
        Raises Corruption if the stored settings are damaged."""
        retention.install(engine)
        state.load(engine)
        return cls(engine)

    def accepts_interval(self, pd: ProtectionDomain, seconds: float) -> bool:
        return driver.nearsync_interval(pd, seconds)

    def takes_schedule(self, pd: ProtectionDomain, row: PDScheduleRow) -> bool:
        return driver.is_nearsync(pd, row)

    def run_schedule(self, pd: ProtectionDomain, row: PDScheduleRow, now: float, due: float,
                     missed: int) -> ScheduleRun:
        return driver.run(pd, row, now, due, missed)

    def states(self, pd_id: int) -> dict[str, ReplicationState]:
        return state.replication_states(self.engine.ctx, pd_id)

    def shipped_at(self, pd_id: int) -> dict[str, float]:
        return state.shipped_at(self.engine.ctx, pd_id)

    def forget(self, pd_id: int) -> None:
        state.forget(self.engine.ctx, pd_id)

    def choose_point(self, mgr: ProtectionManager, pd_name: str,
                     point: RestorePoint | str | int | None) -> RestorePoint | None:
        return activate.choose(mgr, pd_name, point)

    def materialize(self, mgr: ProtectionManager, pd_name: str, point: RestorePoint) -> str:
        return activate.materialize(mgr, pd_name, point)
