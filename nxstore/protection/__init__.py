"""Data protection (issue 5): VMs, protection domains, consistency groups,
schedules with local and remote retention, app-consistent hooks, restore.

    vm = c.create_vm("web", vdisks=[vd], nics=[{"network": "VLAN50"}])
    c.create_category("replicated-vm", values=["from-canada"])
    vm.add_category("replicated-vm", "from-canada")   # or remove_category, set_nics
    pd = c.create_protection_domain("pd-web", entities=[vm, vd_files])
    pd.add_consistency_group("app+db", [vm_app, vm_db])
    pd.add_container("ctr")    # its vDisks of no VM, also those created later
    pd.add_schedule(every=timedelta(hours=1), keep_local=2, keep_remote={"canada": 2})
    snap = pd.snapshot(replicate_to=["canada"])
    c.run_schedules()          # what is due on the cluster clock
    pd.restore(snap, mode="clone", prefix="restored-")
    pd.migrate("canada")       # planned failover, VMs left off there unless power_on=True
                               # (resumable; pd.rollback_migrate())
    c2.activate("pd-web")      # unplanned failover at the surviving site
    pd.sync_ownership()        # a returning old owner learns it was activated elsewhere
    pd.failback()              # at the new owner: deltas back to the old one, migrate home

Modules: vm (VM entity), categories (the category registry), hooks (pre-freeze/
post-thaw), domain (PDs, entities, CGs), pdsnapshot (taking, recording, restoring PD
snapshots), schedule (scheduler and
retention), manager (per-cluster state and crash clean-up), ownership (epochs,
adopt, demote), remote (the PD_REQUEST metadata protocol), failover (migrate,
activate, reprotect, failback and the journal).
"""

from . import rows  # noqa: F401  (registers this layer's catalogue tables)
from .categories import Category
from .domain import ProtectionDomain
from .failover import ActivateResult, FailbackResult, MigrateResult, SyncResult
from .hooks import HookFailure
from .manager import ProtectionManager
from .pdsnapshot import PDSnapshot, PDSnapshotMember, RestoreResult
from .schedule import Schedule, ScheduleRun
from .vm import VM

__all__ = [
    "VM",
    "ActivateResult",
    "Category",
    "FailbackResult",
    "MigrateResult",
    "SyncResult",
    "HookFailure",
    "PDSnapshot",
    "PDSnapshotMember",
    "ProtectionDomain",
    "ProtectionManager",
    "RestoreResult",
    "Schedule",
    "ScheduleRun",
]
