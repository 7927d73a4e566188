"""The failover journal (pd_migrations rows): one row per migration, open ("running",
"failed") until it is done, rolled back or aborted, and one closed row per activation.
Shared by the workflows of this package and by ownership.demote (abort_migration)."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from ..rows import PDMigrationRow

if TYPE_CHECKING:
    from ..manager import ProtectionManager

log = logging.getLogger(__name__)

MIGRATING = "migrating"
STEPS = ("power_off", "final_snapshot", "remove_vms", "disable_schedules",
         "register_at_destination", "reverse_direction")
OPEN = ("running", "failed")
ABORTED = "aborted"  # closed by a demotion: a newer owner took the PD mid-migration


def journal(mgr: ProtectionManager, pd_id: int, kind: str = "migrate",
            open_only: bool = True) -> PDMigrationRow | None:
    rows = mgr.catalog.rows(PDMigrationRow, "pd_id = ? AND kind = ?", (pd_id, kind))
    if open_only:
        rows = [r for r in rows if r.status in OPEN]
    return rows[-1] if rows else None


def journal_rows(mgr: ProtectionManager, pd_id: int) -> list[PDMigrationRow]:
    return mgr.catalog.rows(PDMigrationRow, "pd_id = ?", (pd_id,))


def _save(mgr: ProtectionManager, row: PDMigrationRow) -> None:
    row.updated_at = mgr.now()
    with mgr.catalog.transaction():
        mgr.catalog.update(row)


def _detail(j: PDMigrationRow) -> dict[str, Any]:
    return json.loads(j.detail)


def migration_vdisks(j: PDMigrationRow) -> list[str]:
    """The vDisks the PD protected when migration `j` began (from step 3 on the PD
    itself no longer lists them: its entities are gone)."""
    return [name for e in _detail(j)["entities"]
            for name in (e["vdisks"] if "vdisks" in e else [e["name"]])]  # VMs', containers'


def abort_migration(mgr: ProtectionManager, j: PDMigrationRow, reason: str) -> None:
    """Close unfinished migration `j` as "aborted" (ownership.demote: a newer owner took
    the PD, so the migration can neither resume nor roll back, and left open it would
    block or be resumed by a later migration from this site). Logged; durable on
    return, or with the caller's catalogue transaction."""
    j.status, j.error = ABORTED, f"aborted by demotion at step {j.step}/{len(STEPS)}: {reason}"
    _save(mgr, j)
    log.warning("migrate of PD id %d -> %s (journal %d) aborted by demotion at step %d: %s",
                j.pd_id, j.site, j.id, j.step, reason)


def _record(mgr: ProtectionManager, pd_id: int, kind: str, site: str, epoch: int, snapshot: str,
            detail: dict[str, Any]) -> PDMigrationRow:
    with mgr.catalog.transaction():
        return mgr.catalog.insert(PDMigrationRow(0, pd_id, kind, site, len(STEPS), "done", epoch,
                                                 snapshot, json.dumps(detail), "", mgr.now(),
                                                 mgr.now()))


def _set_state(mgr: ProtectionManager, pd_name: str, state: str) -> None:
    """State without an ownership change (no epoch bump)."""
    with mgr.lock, mgr.catalog.transaction():
        row = mgr.pd_row(pd_name)
        row.state = state
        mgr.catalog.update(row)

