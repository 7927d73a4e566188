"""Failover workflows: migrate (planned), activate (unplanned), failback, demotion.

migrate(pd, site), run at the owner with the destination's `nxstore serve` up:

    0. checks, nothing changed on failure: `site` is a configured remote site, it
       answers, it has a remote site named like this cluster (the reverse
       replication needs it: configure it there first; no address is shipped),
       it does not own the PD already. A journal row (pd_migrations) is opened
       and the PD goes to state "migrating" (schedules stop running).
    1. power off the PD's VMs (their power states are kept in the journal)
    2. take the final PD snapshot and replicate it (with the PD metadata); then
       the destination checks it can adopt it (no VM / vDisk name taken there)
    3. unregister the VMs here (their vDisks stay) and empty the PD
    4. disable the PD's schedules here
    5. the destination adopts the PD at epoch+1 (ownership.adopt): replica
       vDisks promoted to writable vDisks named like ours, VMs registered with
       the site's network mapping applied, powered off (started by hand there)
       unless migrate(site, power_on=True) asked to power on those that were on
       here (the choice is in the journal's detail), schedules enabled with this
       site as their remote
    6. reverse: our vDisks become read-only replicas of the destination's (their
       snapshots are the common base of its replication back), the PD row here
       becomes inactive at epoch+1, owned by the destination; journal "done".

Every step is idempotent and recorded (journal `step` = last step done). If a
step fails the journal says "failed" and the error: `migrate(site)` again
resumes at the failed step; `rollback_migrate()` undoes steps 1-4 (VMs
registered again with their power state, schedules re-enabled, PD active) as
long as the destination has not adopted the PD. Both sites' data is intact at
every point: nothing is deleted before step 6, and step 6 only changes flags. If a
newer owner demotes this site while a migration is unfinished (the destination or
another survivor activated the PD meanwhile), the demotion closes the journal as
"aborted": it is neither resumed nor in the way of a later migration from here.

activate(mgr, name, point=None), at a surviving site: adopts the PD from the newest PD
snapshot fully replicated here, at epoch+1 (writes after that snapshot are lost:
the RPO is the replication interval). A NearSync PD comes up at the newest LWS
every member holds when that is newer (the RPO is the LWS interval), composed into
a PD snapshot here first (nxstore.nearsync.activate); `point` names another
restore point (LWS or PD snapshot). The old owner learns it at its next
contact (sync_ownership, any PD replication, or a sync from the new owner) and
demotes itself (ownership.demote). reprotect(pd, site) replicates the PD back
to the old owner (incremental on the newest common snapshot) and failback(pd)
then migrates it home.

The package, one module per workflow: migration (migrate, rollback_migrate),
activation (activate), reprotection (reprotect, failback); shared by them: journals
(the failover journal rows) and sync (ownership sync with peer sites).
"""

from .activation import ActivateResult, activate
from .journals import (
    ABORTED,
    MIGRATING,
    OPEN,
    STEPS,
    abort_migration,
    journal,
    journal_rows,
    migration_vdisks,
)
from .migration import MigrateResult, migrate, rollback_migrate
from .reprotection import FailbackResult, failback, reprotect
from .sync import SyncResult, confirm_owner, sync_ownership, sync_peer

__all__ = ["ABORTED", "MIGRATING", "OPEN", "STEPS", "ActivateResult", "FailbackResult",
           "MigrateResult", "SyncResult", "abort_migration", "activate", "confirm_owner",
           "failback", "journal", "journal_rows", "migrate", "migration_vdisks", "reprotect",
           "rollback_migrate", "sync_ownership", "sync_peer"]
