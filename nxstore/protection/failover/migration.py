"""Planned failover: migrate(pd, site) in steps 0-6, journalled and resumable, and
rollback_migrate (the steps and what each guarantees: the package docstring,
nxstore.protection.failover). migrate looks each step up as this module's attribute
`_step_<name>` (names in STEPS), so that a test can replace one."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import InUse, InvalidArgument, NotFound, NxError
from ...replication.replica import make_replica
from .. import remote
from ..domain import ACTIVE, INACTIVE, ProtectionDomain, _check_sites
from ..ownership import Ownership, set_row
from ..rows import (
    PDEntityRow,
    PDMigrationRow,
    PDReplicationRow,
    PDScheduleRow,
    PDSnapshotMemberRow,
    PDSnapshotRow,
)
from .journals import MIGRATING, STEPS, _detail, _save, _set_state, journal

if TYPE_CHECKING:
    from ...replication.source import ReplicationResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MigrateResult:
    pd: str
    site: str
    snapshot: str
    epoch: int                                  # the PD's epoch after the migration
    steps: tuple[str, ...]                      # the steps this call ran
    vms: tuple[str, ...] = ()                   # VMs registered at the destination
    replication: ReplicationResult | None = None  # the final snapshot's transfer
    power_on: bool = False                      # VMs on at the source were powered on there


def migrate(pd: ProtectionDomain, site: str, power_on: bool = False) -> MigrateResult:
    """Planned failover of `pd` to remote `site` (steps in the package docstring).
    The VMs are registered at `site` powered off (they are started by hand there) unless
    `power_on`: then those that were on here are on there. The choice is kept in the
    journal: a resumed migration powers them on if the first call asked, or this one does
    before the VMs were registered at `site` (MigrateResult.power_on tells which held).
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
            j = _begin(pd, site, power_on)
        elif power_on and not _powers_on(j) and j.step <= STEPS.index("register_at_destination"):
            j.detail = json.dumps({**_detail(j), "power_on": True})
            _save(mgr, j)
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
                             tuple(ctx["vms"]), ctx["result"], _powers_on(j))


def _powers_on(j: PDMigrationRow) -> bool:
    # a journal opened before the choice existed keeps that version's behaviour (power on)
    return bool(_detail(j).get("power_on", True))


def _begin(pd: ProtectionDomain, site: str, power_on: bool) -> PDMigrationRow:
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
        if e.kind == "container":  # what it covers now (migration_vdisks)
            entry["vdisks"] = mgr.container_vdisks(e.name)
        entities.append(entry)
    enabled = [s.id for s in mgr.catalog.rows(PDScheduleRow, "pd_id = ?", (row.id,)) if s.enabled]
    detail = {"entities": entities, "schedules_enabled": enabled, "peer_cluster": view["cluster"],
              "peer_site": view["site"], "power_on": power_on}
    with mgr.catalog.transaction():
        j = mgr.catalog.insert(PDMigrationRow(0, row.id, "migrate", site, 0, "running", row.epoch,
                                              "", json.dumps(detail), "", mgr.now(), mgr.now()))
    _set_state(mgr, pd.name, MIGRATING)
    log.info("migrate %s -> %s: journal %d opened at epoch %d", pd.name, site, j.id, row.epoch)
    return j


def _step_power_off(pd: ProtectionDomain, j: PDMigrationRow, ctx: dict[str, Any]) -> None:
    from ..rows import VMRow
    from ..vm import VM

    for e in _detail(j)["entities"]:
        if e["kind"] == "vm" and pd._mgr.catalog.rows(VMRow, "name = ?", (e["name"],)):
            VM(pd._mgr, e["name"]).power_off()


def _step_final_snapshot(pd: ProtectionDomain, j: PDMigrationRow, ctx: dict[str, Any]) -> None:
    from ..pdsnapshot import replicate_pd_snapshot, take_pd_snapshot

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
    from ..rows import VMRow
    from ..vm import delete_vm

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
    on = [e["name"] for e in _detail(j)["entities"]
          if e["kind"] == "vm" and e["power"] == "on"] if _powers_on(j) else []
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
    for mode in mgr.modes:
        mode.forget(pd.id)
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
    from ..rows import VMRow
    from ..vm import VM, create_vm

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
