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
       the site's network mapping applied, powered on if they were on here,
       schedules enabled with this site as their remote
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
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import AuthenticationError, InUse, InvalidArgument, NotFound, NxError
from ..nearsync import state as nearsync_state
from ..replication.replica import make_replica
from ..replication.sites import list_sites
from . import remote
from .domain import ACTIVE, INACTIVE, ProtectionDomain, _check_sites
from .ownership import (
    Ownership,
    demote,
    outranks,
    ownership,
    schedule_records,
    set_row,
    snapshot_record,
)
from .rows import (
    PDEntityRow,
    PDMigrationRow,
    PDReplicationRow,
    PDScheduleRow,
    PDSnapshotMemberRow,
    PDSnapshotRow,
)

if TYPE_CHECKING:
    from ..nearsync.compose import RestorePoint
    from ..replication.source import ReplicationResult
    from .manager import ProtectionManager

log = logging.getLogger(__name__)

MIGRATING = "migrating"
STEPS = ("power_off", "final_snapshot", "remove_vms", "disable_schedules",
         "register_at_destination", "reverse_direction")
OPEN = ("running", "failed")
ABORTED = "aborted"  # closed by a demotion: a newer owner took the PD mid-migration


@dataclass(frozen=True)
class MigrateResult:
    pd: str
    site: str
    snapshot: str
    epoch: int                                  # the PD's epoch after the migration
    steps: tuple[str, ...]                      # the steps this call ran
    vms: tuple[str, ...] = ()                   # VMs registered at the destination
    replication: ReplicationResult | None = None  # the final snapshot's transfer


@dataclass(frozen=True)
class ActivateResult:
    pd: str
    snapshot: str               # the PD snapshot the PD came up from
    snapshot_created_at: float  # cluster-clock seconds: writes after it were lost
    epoch: int
    vms: tuple[str, ...]
    vdisks: tuple[str, ...]
    previous_owner: str
    dropped_sites: tuple[str, ...] = ()
    lws: str = ""               # the LWS `snapshot` was composed at ("" = a replicated one)


@dataclass(frozen=True)
class FailbackResult:
    pd: str
    site: str
    reprotect: ReplicationResult
    migrate: MigrateResult | None = None


@dataclass(frozen=True)
class SyncResult:
    """What sync_ownership found: this site's view after it, and per site the peer's
    view (None: unreachable, with the error)."""

    state: str
    epoch: int
    owner_site: str
    demoted: bool
    peers: dict[str, Ownership | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


# -- journal ------------------------------------------------------------------------------------

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
            for name in (e["vdisks"] if e["kind"] == "vm" else [e["name"]])]


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


# -- metadata to peers (called around every PD snapshot replication) ---------------------------------

def _learn(mgr: ProtectionManager, pd_name: str, site: str, view: Ownership) -> None:
    """Peer `site` answered `view`: if the owner it knows (itself or another site)
    outranks the one this site knows (ownership.outranks), demote here (or, at a
    non-owner, just learn the new owner) and raise InUse."""
    mine = ownership(mgr, pd_name)
    owner = site if view.state != INACTIVE else view.owner_site
    if (not view.exists or owner == mgr.cluster.site_name
            or not outranks(view.epoch, view.owner_cluster, mine.epoch, mine.owner_cluster)):
        return
    demote(mgr, pd_name, view.epoch, owner, view.owner_cluster,
           reason=f"site {site!r} says {owner!r} owns it at epoch {view.epoch} "
                  f"(here: epoch {mine.epoch})")
    raise InUse(f"protection domain {pd_name!r} is owned by site {owner!r} (epoch "
                f"{view.epoch}, this site knew {mine.epoch}; it was activated or moved "
                f"there): demoted here, nothing replicated")


def sync_peer(mgr: ProtectionManager, pd_name: str, site: str) -> Ownership:
    """Send the PD metadata (owner, epoch, the PD snapshots replicated to `site`, the
    schedules) to `site`; demote here (InUse) if it answers with a higher epoch.
    InUse without asking if this site does not own the PD (any more): a demoted site's
    sync would claim the new owner's epoch for itself."""
    row = mgr.pd_row(pd_name)
    if row.state == INACTIVE:
        raise InUse(f"protection domain {pd_name!r} is owned by site {row.owner_site!r} "
                    f"(epoch {row.epoch}), not by this site: nothing sent to {site!r}")
    net = next((s.network_mapping for s in list_sites(mgr.catalog) if s.name == site), {})
    snaps = []
    for s in mgr.catalog.rows(PDSnapshotRow, "pd_id = ? AND complete = 1", (row.id,)):
        if mgr.catalog.rows(PDReplicationRow, "pd_snapshot_id = ? AND site = ?", (s.id, site)):
            snaps.append(snapshot_record(s, net))
    body = {"pd": pd_name, "epoch": row.epoch, "owner_site": mgr.cluster.site_name,
            "snapshots": snaps, "schedules": schedule_records(mgr, row.id)}
    view = Ownership.from_json(remote.call(mgr.cluster, site, "sync", body))
    _learn(mgr, pd_name, site, view)
    return view


def confirm_owner(mgr: ProtectionManager, pd_name: str, site: str, view: Ownership) -> None:
    """The ownership check of a NearSync shipping round, given `site`'s answer to a
    status request (`view`; read-only there, so cheap at the LWS rate, and asked on the
    shipping connection). Nothing to do if `site` knows this site as the owner at this
    epoch; any other answer is settled as before a snapshot replication, by sync_peer:
    it demotes this site (InUse) if `site` knows an owner that outranks it. NxError if
    `site` cannot be reached for that sync."""
    mine = ownership(mgr, pd_name)
    if view.exists and view.state == INACTIVE and (view.epoch, view.owner_cluster) == (
            mine.epoch, mgr.cluster.id):
        return
    sync_peer(mgr, pd_name, site)


def sync_ownership(pd: ProtectionDomain, sites: list[str] | None = None) -> SyncResult:
    """Ask every configured remote site (or `sites`) who owns the PD; if one owns it at a
    higher epoch, demote here (state inactive, schedules disabled, VMs unregistered,
    vDisks kept as replicas of the owner's). If this site owns it, the peers get the
    metadata (a sync). Unreachable sites are reported, not raised."""
    mgr = pd._mgr
    targets = sites if sites is not None else [s.name for s in list_sites(mgr.catalog)]
    _check_sites(mgr, targets)
    peers: dict[str, Ownership | None] = {}
    errors: dict[str, str] = {}
    demoted = False
    for site in targets:
        try:
            view = Ownership.from_json(remote.status(mgr.cluster, site, pd.name))
            peers[site] = view
            try:
                _learn(mgr, pd.name, site, view)
            except InUse:
                demoted = True
        except NxError as exc:
            peers[site], errors[site] = None, str(exc)
    row = pd._row()
    return SyncResult(row.state, row.epoch, row.owner_site, demoted, peers, errors)


# -- migrate ------------------------------------------------------------------------------------------

def migrate(pd: ProtectionDomain, site: str) -> MigrateResult:
    """Planned failover of `pd` to remote `site` (steps in the module docstring).
    Raises NotFound (unknown site, no reverse site entry there), InUse (PD not active
    here, another migration unfinished, destination owns it), NxError (the site is
    down: nothing changed if it happens at the checks; else journal "failed": re-run
    or rollback_migrate()). Durable after each step."""
    mgr = pd._mgr
    _check_sites(mgr, [site])
    with mgr.lock:
        row = pd._row()
        j = journal(mgr, row.id)
        if j is not None and j.site != site:
            raise InUse(f"a migration of protection domain {pd.name!r} to {j.site!r} is "
                        f"unfinished (step {j.step}/{len(STEPS)}, {j.status}): run "
                        f"migrate({j.site!r}) again or rollback_migrate()")
        if j is None:
            j = _begin(pd, site)
        ran: list[str] = []
        ctx: dict[str, Any] = {"result": None, "vms": ()}
        mod = sys.modules[__name__]
        for number in range(j.step + 1, len(STEPS) + 1):
            name = STEPS[number - 1]
            log.info("migrate %s -> %s: step %d/%d %s", pd.name, site, number, len(STEPS), name)
            j.status, j.error = "running", ""
            _save(mgr, j)
            try:
                getattr(mod, f"_step_{name}")(pd, j, ctx)
            except BaseException as exc:
                j.status, j.error = "failed", f"step {number} {name}: {exc}"
                _save(mgr, j)
                log.error("migrate %s -> %s failed at step %d %s: %s", pd.name, site, number,
                          name, exc)
                raise
            j.step = number
            j.status = "done" if number == len(STEPS) else "running"
            _save(mgr, j)
            ran.append(name)
        if not ran:  # journal was already done: nothing to run
            j.status = "done"
            _save(mgr, j)
        return MigrateResult(pd.name, site, j.snapshot, pd.epoch, tuple(ran),
                             tuple(ctx["vms"]), ctx["result"])


def _begin(pd: ProtectionDomain, site: str) -> PDMigrationRow:
    """Step 0: the checks (nothing changes if one fails), then the journal row."""
    mgr = pd._mgr
    row = pd.require_active(f"migrate to {site!r}")
    if not pd.vdisk_names():
        raise InvalidArgument(f"protection domain {pd.name!r} protects no vDisks")
    try:
        view = remote.status(mgr.cluster, site, pd.name)
    except NxError as exc:
        raise type(exc)(f"cannot migrate protection domain {pd.name!r} to {site!r}: {exc}; "
                        "nothing was changed") from exc
    if mgr.cluster.site_name not in view.get("has_site", []):
        raise NotFound(f"site {site!r} has no remote site named {mgr.cluster.site_name!r}: "
                       "add it there first (the migrated PD replicates back to this site)")
    theirs = Ownership.from_json(view)
    if theirs.exists and theirs.state != INACTIVE:
        raise InUse(f"site {site!r} already has protection domain {pd.name!r} {theirs.state} "
                    f"(epoch {theirs.epoch}); run pd.sync_ownership()")
    entities = []
    for e in pd._entity_rows():
        entry: dict[str, Any] = {"kind": e.kind, "name": e.name, "cg": e.cg}
        if e.kind == "vm":
            vm = mgr.vm_row(e.name)
            entry.update(vdisks=json.loads(vm.vdisks), nics=json.loads(vm.nics),
                         categories=json.loads(vm.categories), power=vm.power,
                         pre_freeze=vm.pre_freeze, post_thaw=vm.post_thaw,
                         hook_timeout=vm.hook_timeout)
        entities.append(entry)
    enabled = [s.id for s in mgr.catalog.rows(PDScheduleRow, "pd_id = ?", (row.id,)) if s.enabled]
    detail = {"entities": entities, "schedules_enabled": enabled, "peer_cluster": view["cluster"],
              "peer_site": view["site"]}
    with mgr.catalog.transaction():
        j = mgr.catalog.insert(PDMigrationRow(0, row.id, "migrate", site, 0, "running", row.epoch,
                                              "", json.dumps(detail), "", mgr.now(), mgr.now()))
    _set_state(mgr, pd.name, MIGRATING)
    log.info("migrate %s -> %s: journal %d opened at epoch %d", pd.name, site, j.id, row.epoch)
    return j


def _step_power_off(pd: ProtectionDomain, j: PDMigrationRow, ctx: dict[str, Any]) -> None:
    from .rows import VMRow
    from .vm import VM

    for e in _detail(j)["entities"]:
        if e["kind"] == "vm" and pd._mgr.catalog.rows(VMRow, "name = ?", (e["name"],)):
            VM(pd._mgr, e["name"]).power_off()


def _step_final_snapshot(pd: ProtectionDomain, j: PDMigrationRow, ctx: dict[str, Any]) -> None:
    from .pdsnapshot import replicate_pd_snapshot, take_pd_snapshot

    mgr = pd._mgr
    if not j.snapshot:
        snap = take_pd_snapshot(pd, name=f"{pd.name}.migrate-e{j.epoch}-{j.id}", schedule_id=0,
                                app_consistent=False, allow_states=(ACTIVE, MIGRATING))
        j.snapshot = snap.name
        _save(mgr, j)
    snap = pd.get_snapshot(j.snapshot)
    ctx["result"] = replicate_pd_snapshot(mgr, snap, j.site)
    remote.call(mgr.cluster, j.site, "adopt", {"pd": pd.name, "epoch": j.epoch + 1,
                                               "snapshot": j.snapshot, "check": True})


def _step_remove_vms(pd: ProtectionDomain, j: PDMigrationRow, ctx: dict[str, Any]) -> None:
    from .rows import VMRow
    from .vm import delete_vm

    mgr, cat = pd._mgr, pd._mgr.catalog
    with cat.transaction():
        for e in cat.rows(PDEntityRow, "pd_id = ?", (pd.id,)):
            cat.delete(PDEntityRow, e.id)
    for e in _detail(j)["entities"]:
        if e["kind"] == "vm" and cat.rows(VMRow, "name = ?", (e["name"],)):
            delete_vm(mgr, e["name"], keep_vdisks=True)


def _step_disable_schedules(pd: ProtectionDomain, j: PDMigrationRow, ctx: dict[str, Any]) -> None:
    pd.set_schedules_enabled(False)


def _step_register_at_destination(pd: ProtectionDomain, j: PDMigrationRow,
                                  ctx: dict[str, Any]) -> None:
    mgr = pd._mgr
    on = [e["name"] for e in _detail(j)["entities"] if e["kind"] == "vm" and e["power"] == "on"]
    out = remote.call(mgr.cluster, j.site, "adopt", {
        "pd": pd.name, "epoch": j.epoch + 1, "snapshot": j.snapshot, "power_on": on,
        "rename": {j.site: mgr.cluster.site_name}})
    ctx["vms"] = tuple(out.get("vms", ()))


def _step_reverse_direction(pd: ProtectionDomain, j: PDMigrationRow, ctx: dict[str, Any]) -> None:
    mgr, cat = pd._mgr, pd._mgr.catalog
    d = _detail(j)
    snap_row = cat.rows(PDSnapshotRow, "pd_id = ? AND name = ?", (pd.id, j.snapshot))[0]
    names = [m["vdisk"] for e in json.loads(snap_row.manifest) for m in e["members"]]
    for name in names:
        make_replica(mgr.cluster, name, d["peer_cluster"], j.site)
    nearsync_state.forget(mgr.cluster._ctx, pd.id)
    # One commit for the flags and the journal: a crash between "inactive" and "done"
    # would leave an entry that a later migrate (after a failback) resumes at a stale epoch.
    with cat.transaction():
        for s in cat.rows(PDSnapshotRow, "pd_id = ?", (pd.id,)):
            for table in (PDSnapshotMemberRow, PDReplicationRow):
                for r in cat.rows(table, "pd_snapshot_id = ?", (s.id,)):
                    cat.delete(table, r.id)
        set_row(mgr, pd.name, INACTIVE, j.epoch + 1, j.site, d["peer_cluster"])
        j.step, j.status = len(STEPS), "done"
        _save(mgr, j)


def rollback_migrate(pd: ProtectionDomain) -> list[str]:
    """Undo an unfinished migration (steps 1-4): VMs registered again with their power
    states, entities and CGs back in the PD, schedules re-enabled, PD active. Returns
    the VMs registered again. Raises NotFound (no unfinished migration), InUse (the
    destination adopted the PD, or cannot be asked whether it did: then migrate again)."""
    from .rows import VMRow
    from .vm import VM, create_vm

    mgr = pd._mgr
    with mgr.lock:
        row = pd._row()
        j = journal(mgr, row.id)
        if j is None:
            raise NotFound(f"protection domain {pd.name!r} has no unfinished migration")
        if j.step >= 5:
            raise InUse(f"the migration to {j.site!r} reached step {j.step}: the destination "
                        f"owns the PD; run migrate({j.site!r}) to finish, then migrate back")
        if j.step == 4 and j.status == "failed":  # step 5 may have happened at the peer
            view = Ownership.from_json(remote.status(mgr.cluster, j.site, pd.name))
            if view.state == ACTIVE and view.epoch > j.epoch:
                raise InUse(f"site {j.site!r} adopted protection domain {pd.name!r}: run "
                            f"migrate({j.site!r}) to finish, then migrate back")
        d = _detail(j)
        made = []
        for e in d["entities"]:
            if e["kind"] == "vm" and not mgr.catalog.rows(VMRow, "name = ?", (e["name"],)):
                create_vm(mgr, e["name"], e["vdisks"], e["nics"], e["categories"], power="off")
                with mgr.catalog.transaction():
                    vm_row = mgr.vm_row(e["name"])
                    vm_row.pre_freeze, vm_row.post_thaw = e["pre_freeze"], e["post_thaw"]
                    vm_row.hook_timeout = e["hook_timeout"]
                    mgr.catalog.update(vm_row)
                made.append(e["name"])
        cat = mgr.catalog
        with cat.transaction():
            have = {(x.kind, x.name) for x in cat.rows(PDEntityRow, "pd_id = ?", (row.id,))}
            for e in d["entities"]:
                if (e["kind"], e["name"]) not in have:
                    cat.insert(PDEntityRow(0, row.id, e["kind"], e["name"], e["cg"]))
            for s in cat.rows(PDScheduleRow, "pd_id = ?", (row.id,)):
                if s.id in d["schedules_enabled"] and not s.enabled:
                    s.enabled = True
                    cat.update(s)
        for e in d["entities"]:
            if e["kind"] == "vm":
                VM(mgr, e["name"])._set_power(e["power"])
        _set_state(mgr, pd.name, ACTIVE)
        j.status = "rolled_back"
        _save(mgr, j)
        log.info("migrate %s -> %s rolled back (was at step %d)", pd.name, j.site, j.step)
        return made


# -- activate / reprotect / failback --------------------------------------------------------------

def activate(mgr: ProtectionManager, name: str, force: bool = False,
             point: RestorePoint | str | int | None = None) -> ActivateResult:
    """Unplanned failover at this (surviving) site; see the module docstring.

    First every remote site is asked, the owner first: if one answers that it owns the
    PD (the owner is alive, or another survivor activated it already) or names a newer
    owner, activating here would make two owners, so InUse is raised unless `force`.
    A site that cannot be reached is taken as gone. `point`: the restore point to come
    up at (a RestorePoint, its name, an LWS seq; None: the newest, see the module
    docstring). Raises NotFound (no PD metadata, no such point, no complete PD snapshot
    here), InvalidArgument (an ambiguous point), InUse (active here; an owner answers),
    AuthenticationError (a site answers but refuses the secret)."""
    from ..nearsync import activate as at_lws
    with mgr.lock:
        mine = ownership(mgr, name)
        if not mine.exists:
            raise NotFound(f"no protection domain {name!r} at site {mgr.cluster.site_name!r}")
        if mine.state != INACTIVE:
            raise InUse(f"protection domain {name!r} is {mine.state} on this site already "
                        "(activate is for a PD owned by a site that is gone)")
        prev = mine.owner_site
        if not force:
            _check_no_owner_answers(mgr, name, mine)
        from .ownership import adopt

        target = at_lws.choose(mgr, name, point)
        lws = target.name if target is not None and target.kind == "lws" else ""
        snapshot = None if target is None else target.name
        if lws:
            # names free here? (checked before composing, so a refusal leaves the replicas be)
            adopt(mgr, name, snapshot=None, epoch=mine.epoch + 1, power_on=None,
                  peer_site=prev, check_only=True)
            snapshot = at_lws.materialize(mgr, name, target)
        out = adopt(mgr, name, snapshot=snapshot, epoch=mine.epoch + 1, power_on=None,
                    peer_site=prev, keep_remote_rename={mgr.cluster.site_name: prev})
        row = mgr.pd_row(name)
        snap = mgr.catalog.rows(PDSnapshotRow, "pd_id = ? AND name = ?", (row.id, out["snapshot"]))
        created = snap[0].created_at if snap else 0.0
        _record(mgr, row.id, "activate", prev, row.epoch, out["snapshot"],
                {"previous_owner": prev, "previous_cluster": mine.owner_cluster, "lws": lws})
        log.warning("PD %s activated at site %s from %s%s (epoch %d): writes at %s after it "
                    "are lost", name, mgr.cluster.site_name, out["snapshot"],
                    f" (LWS {lws})" if lws else "", row.epoch, prev)
        return ActivateResult(name, out["snapshot"], created, row.epoch, tuple(out["vms"]),
                              tuple(out["vdisks"]), prev, tuple(out["dropped_sites"]), lws)


def _check_no_owner_answers(mgr: ProtectionManager, name: str, mine: Ownership) -> None:
    """InUse if a remote site answers that it owns the PD (the owner still alive, or a
    peer that activated it already) or knows a newer owner than this site does."""
    others = [s.name for s in list_sites(mgr.catalog)]
    fence = "or activate with force=True to fence that site off"
    for site in sorted(others, key=lambda s: s != mine.owner_site):  # the owner first
        try:
            view = Ownership.from_json(remote.status(mgr.cluster, site, name))
        except AuthenticationError as exc:  # it answers but will not say whether it owns it
            raise AuthenticationError(f"cannot ask site {site!r} whether it owns protection "
                                      f"domain {name!r}: {exc}; fix the secret, {fence}") from exc
        except NxError as exc:
            log.warning("PD %s: site %s unreachable (%s): taken as gone", name, site, exc)
            continue
        if view.exists and view.state != INACTIVE:
            raise InUse(f"site {site!r} answers and owns protection domain {name!r} "
                        f"({view.state}, epoch {view.epoch}): activating here would make two "
                        f"owners; migrate it instead, {fence}")
        if view.exists and view.epoch > mine.epoch:
            raise InUse(f"site {site!r} answers: protection domain {name!r} moved to "
                        f"{view.owner_site!r} at epoch {view.epoch} (this site knows epoch "
                        f"{mine.epoch}); ask that site, {fence}")


def _failback_site(pd: ProtectionDomain, site: str | None) -> str:
    if site is not None:
        _check_sites(pd._mgr, [site])
        return site
    j = journal(pd._mgr, pd.id, "activate", open_only=False)
    if j is not None:
        return j.site
    raise InvalidArgument(f"protection domain {pd.name!r} was not activated here: name the site")


def reprotect(pd: ProtectionDomain, site: str | None = None) -> ReplicationResult:
    """At the owner after activate: make `site` (default: the previous owner) a replica
    site again: it is told the PD's epoch (and demotes itself if it still claims the
    PD), then a PD snapshot is taken and replicated, incremental on the newest snapshot
    both sides hold. Returns the transfer. Raises NxError if `site` is down."""
    from .pdsnapshot import replicate_pd_snapshot, take_pd_snapshot

    mgr = pd._mgr
    site = _failback_site(pd, site)
    with mgr.lock:
        pd.require_active(f"reprotect to {site!r}")
        sync_peer(mgr, pd.name, site)
        snap = take_pd_snapshot(pd, name=None, schedule_id=0, app_consistent=False)
        return replicate_pd_snapshot(mgr, snap, site)


def failback(pd: ProtectionDomain, site: str | None = None, migrate_back: bool = True
             ) -> FailbackResult:
    """reprotect(site), then (unless migrate_back=False) migrate(site): the PD and its
    VMs go home with only the deltas since the newest common snapshot on the wire."""
    site = _failback_site(pd, site)
    result = reprotect(pd, site)
    moved = migrate(pd, site) if migrate_back else None
    return FailbackResult(pd.name, site, result, moved)


__all__ = ["ActivateResult", "FailbackResult", "MigrateResult", "SyncResult", "activate",
           "failback", "migrate", "reprotect", "rollback_migrate", "sync_ownership"]
