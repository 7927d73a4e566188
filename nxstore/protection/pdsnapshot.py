"""PD snapshots: one named vDisk snapshot on every vDisk of a protection domain.

Taking one (`take_pd_snapshot`):
1. a PD snapshot row is committed with `complete = 0` and a manifest of the
   entities (VM configuration included) and their vDisks;
2. for an app-consistent snapshot, the pre-freeze hooks of the powered-on VMs run;
3. each consistency group is snapshotted at one crash-consistent point
   (`take_snapshots` holds all its members' locks at once), then every other
   entity on its own (a VM's vDisks together);
4. the post-thaw hooks run, ALWAYS (also when 2 or 3 failed);
5. one transaction records the member rows and marks the row complete, with its
   consistency ("application" only if it was asked for, every powered-on VM has
   a pre-freeze hook and no hook failed; "crash" otherwise) and hook failures.
If step 3 fails, the vDisk snapshots already taken are removed with the row. A
crash between 1 and 5 leaves an incomplete row: the next open removes it and
its vDisk snapshots (ProtectionManager), so a PD snapshot exists whole or not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import AlreadyExists, InvalidArgument, NotFound
from ..names import check_name
from ..replication.source import replicate_snapshots
from ..store.catalog import Catalog, SnapshotRow
from ..store.snapshot import Snapshot, take_snapshots
from .domain import entity_vdisks
from .hooks import POST_THAW, PRE_FREEZE, HookFailure, run_hook
from .manager import ProtectionManager
from .rows import PDReplicationRow, PDSnapshotMemberRow, PDSnapshotRow
from .vm import VM, create_vm

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..replication.source import ReplicationResult
    from .domain import ProtectionDomain

APPLICATION = "application"
CRASH = "crash"


@dataclass(frozen=True)
class PDSnapshotMember:
    """One vDisk snapshot of a PD snapshot and the entity (and CG, "" = none) it protects."""

    entity_kind: str  # "vm" | "vdisk" | "container"
    entity_name: str
    cg: str
    snapshot: Snapshot


@dataclass(frozen=True)
class RestoreResult:
    """What `ProtectionDomain.restore` did: the VMs and vDisks it wrote or created."""

    mode: str
    snapshot: str
    vms: tuple[str, ...]
    vdisks: tuple[str, ...]


class PDSnapshot:
    """A complete PD snapshot (get them from `ProtectionDomain.snapshots`)."""

    def __init__(self, mgr: ProtectionManager, pd_name: str, row: PDSnapshotRow) -> None:
        self._mgr = mgr
        self.pd_name = pd_name
        self._row = row

    name = property(lambda self: self._row.name)
    id = property(lambda self: self._row.id)
    created_at = property(lambda self: self._row.created_at, doc="cluster-clock seconds")
    schedule_id = property(lambda self: self._row.schedule_id, doc="0 = ad hoc")
    consistency = property(lambda self: self._row.consistency, doc='"application" | "crash"')

    @property
    def app_consistent(self) -> bool:
        return self._row.consistency == APPLICATION

    @property
    def hook_failures(self) -> list[HookFailure]:
        return [HookFailure.from_json(f) for f in json.loads(self._row.hook_failures)]

    @property
    def manifest(self) -> list[dict[str, Any]]:
        """The entities at snapshot time: kind, name, cg, members [{vdisk, size}] (a
        container's: the vDisks it covered then) and, for VMs, vdisks, nics, categories,
        power."""
        return json.loads(self._row.manifest)

    def __repr__(self) -> str:
        return f"PDSnapshot({self.pd_name!r}, {self.name!r}, {self.consistency})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PDSnapshot) and other.id == self.id and other._mgr is self._mgr

    def __hash__(self) -> int:
        return hash(("pdsnap", self.id))

    def _member_rows(self) -> list[PDSnapshotMemberRow]:
        return self._mgr.catalog.rows(PDSnapshotMemberRow, "pd_snapshot_id = ?", (self.id,))

    def members(self) -> list[PDSnapshotMember]:
        """Every member vDisk snapshot (NotFound if one was deleted behind the PD's back)."""
        out = []
        for m in self._member_rows():
            rows = self._mgr.catalog.rows(SnapshotRow, "id = ?", (m.snapshot_id,))
            if not rows:
                raise NotFound(f"snapshot {m.vdisk_name}@{self.name} of PD snapshot "
                               f"{self.pd_name}/{self.name} was deleted")
            out.append(PDSnapshotMember(m.entity_kind, m.entity_name, m.cg,
                                        Snapshot(self._mgr.cluster._ctx, rows[0], m.vdisk_name)))
        return out

    def vdisk_snapshots(self) -> list[Snapshot]:
        return [m.snapshot for m in self.members()]

    def replicated_to(self) -> list[str]:
        """Sites this PD snapshot was fully replicated to."""
        rows = self._mgr.catalog.rows(PDReplicationRow, "pd_snapshot_id = ?", (self.id,))
        return sorted(r.site for r in rows)

    def delete(self) -> None:
        """Delete the PD snapshot and its vDisk snapshots (one transaction; clones of
        them stay intact). Idempotent for vDisk snapshots already gone."""
        delete_pd_snapshots(self._mgr, [self])


def delete_pd_snapshots(mgr: ProtectionManager, snaps: list[PDSnapshot]) -> None:
    cat = mgr.catalog
    with mgr.lock:
        with cat.transaction():
            for snap in snaps:
                for m in snap._member_rows():
                    cat.delete(SnapshotRow, m.snapshot_id)
                    cat.delete(PDSnapshotMemberRow, m.id)
                for r in cat.rows(PDReplicationRow, "pd_snapshot_id = ?", (snap.id,)):
                    cat.delete(PDReplicationRow, r.id)
                cat.delete(PDSnapshotRow, snap.id)
        mgr.cluster._ctx.prune()


# -- taking -----------------------------------------------------------------------------------

def _plan(pd: ProtectionDomain) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """(groups, manifest): each group is a list of manifest entities snapshotted at
    one point: each CG (by name), then every other entity on its own."""
    mgr = pd._mgr
    manifest: list[dict[str, Any]] = []
    for e in pd._entity_rows():
        entry: dict[str, Any] = {"kind": e.kind, "name": e.name, "cg": e.cg}
        if e.kind == "vm":
            vm = mgr.vm_row(e.name)
            entry.update(vdisks=json.loads(vm.vdisks), nics=json.loads(vm.nics),
                         categories=json.loads(vm.categories), power=vm.power)
        names = entity_vdisks(mgr, e.kind, e.name)  # a container's: what it covers now
        members = []
        for vd_name in names:
            try:
                vd = mgr.vdisk(vd_name)
            except NotFound:
                raise NotFound(f"vDisk {vd_name!r} of {e.kind} {e.name!r} in protection domain "
                               f"{pd.name!r} does not exist") from None
            members.append({"vdisk": vd_name, "size": vd.size})
        entry["members"] = members
        manifest.append(entry)
    cgs: dict[str, list[dict[str, Any]]] = {}
    groups: list[list[dict[str, Any]]] = []
    for entry in manifest:
        if entry["cg"]:
            cgs.setdefault(entry["cg"], []).append(entry)
        else:
            groups.append([entry])
    groups = [cgs[name] for name in sorted(cgs)] + groups
    return [g for g in groups if any(e["members"] for e in g)], manifest


def _hooked_vms(mgr: ProtectionManager, manifest: list[dict[str, Any]]
                ) -> tuple[list[tuple[VM, dict[str, Any], float]], bool]:
    """(powered-on VMs with hooks, every powered-on VM has a pre-freeze hook)."""
    hooked, complete = [], True
    for entry in manifest:
        if entry["kind"] != "vm" or entry["power"] != "on":
            continue
        vm = VM(mgr, entry["name"])
        hooks, timeout = vm.hooks()
        complete &= PRE_FREEZE in hooks
        if hooks:
            hooked.append((vm, hooks, timeout))
    return hooked, complete


def take_pd_snapshot(pd: ProtectionDomain, *, name: str | None, schedule_id: int,
                     app_consistent: bool,
                     on_commit: Callable[[Catalog], None] | None = None,
                     allow_states: tuple[str, ...] = ("active",)) -> PDSnapshot:
    """Take a PD snapshot (steps in the module docstring); `on_commit` runs inside the
    transaction that completes it (the scheduler advances its schedule there).
    `allow_states`: PD states that may take it (migrate's final snapshot: "migrating")."""
    mgr, cat = pd._mgr, pd._mgr.catalog
    if name is not None:
        check_name("snapshot", name)
    pd_row = pd._row()
    if pd_row.state not in allow_states:
        pd_row = pd.require_active("take snapshots")
    groups, manifest = _plan(pd)
    if not groups:
        raise InvalidArgument(f"protection domain {pd.name!r} protects no vDisks")
    with cat.transaction():
        if name is not None and cat.rows(PDSnapshotRow, "pd_id = ? AND name = ?", (pd_row.id, name)):
            raise AlreadyExists(f"protection domain {pd.name!r} has a snapshot {name!r}")
        row = cat.insert(PDSnapshotRow(0, pd_row.id, f"{pd.name}.pending", mgr.now(), schedule_id,
                                       CRASH, False, json.dumps(manifest), "[]"))
        row.name = name or _default_name(mgr, pd.name, pd_row.epoch, row.id)
        cat.update(row)
    hooked, all_hooked = _hooked_vms(mgr, manifest) if app_consistent else ([], False)
    failures: list[HookFailure] = []
    taken: list[tuple[dict[str, Any], Snapshot]] = []
    try:
        for vm, hooks, timeout in hooked:
            if PRE_FREEZE in hooks and (f := run_hook(hooks[PRE_FREEZE], PRE_FREEZE, vm,
                                                      pd.name, timeout)):
                failures.append(f)
        try:
            for group in groups:
                vds = [mgr.vdisk(m["vdisk"]) for e in group for m in e["members"]]
                owners = [e for e in group for _ in e["members"]]
                taken += zip(owners, take_snapshots(mgr.cluster._ctx, vds, row.name), strict=True)
        except BaseException:
            _discard(mgr, row, [s for _, s in taken])
            raise
    finally:
        for vm, hooks, timeout in hooked:
            if POST_THAW in hooks and (f := run_hook(hooks[POST_THAW], POST_THAW, vm,
                                                     pd.name, timeout)):
                failures.append(f)
    row.consistency = APPLICATION if app_consistent and all_hooked and not failures else CRASH
    row.hook_failures = json.dumps([f.to_json() for f in failures])
    row.complete = True
    with cat.transaction():
        for entry, snap in taken:
            cat.insert(PDSnapshotMemberRow(0, row.id, snap.id, snap.vdisk_name, entry["kind"],
                                           entry["name"], entry["cg"]))
        cat.update(row)
        if on_commit is not None:
            on_commit(cat)
    return PDSnapshot(mgr, pd.name, row)


def _default_name(mgr: ProtectionManager, pd_name: str, epoch: int, row_id: int) -> str:
    """"<pd>.<row id>" while the PD never changed owner; after that the site and epoch
    are in the name too: PD snapshot rows travel between sites (ids do not), and a
    name must mean one snapshot on every site (one owner per site and epoch; two
    owners of one epoch, after two activations, are two sites)."""
    if epoch == 1:
        return f"{pd_name}.{row_id:06d}"
    return f"{pd_name}.{mgr.cluster.site_name}-e{epoch}.{row_id:06d}"


def _discard(mgr: ProtectionManager, row: PDSnapshotRow, snaps: list[Snapshot]) -> None:
    with mgr.catalog.transaction():
        for snap in snaps:
            mgr.catalog.delete(SnapshotRow, snap.id)
        mgr.catalog.delete(PDSnapshotRow, row.id)
    mgr.cluster._ctx.prune()


def replicate_pd_snapshot(mgr: ProtectionManager, snap: PDSnapshot, site: str) -> ReplicationResult:
    """Replicate every member vDisk snapshot to `site` (one connection), then record it
    and send the PD metadata there (nxstore.protection.failover.sync_peer). The
    metadata goes first too: if the site owns the PD at a higher rank (activated
    there), this site demotes itself and InUse is raised, nothing sent; if the site
    knew another owner, it re-links its replicas to this one first, so the transfer is
    incremental on the snapshots they share."""
    from .failover import sync_peer

    sync_peer(mgr, snap.pd_name, site)
    result = replicate_snapshots(mgr.cluster, snap.vdisk_snapshots(), site)
    with mgr.catalog.transaction():
        if not mgr.catalog.rows(PDReplicationRow, "pd_snapshot_id = ? AND site = ?",
                                (snap.id, site)):
            mgr.catalog.insert(PDReplicationRow(0, snap.id, site, mgr.now()))
    sync_peer(mgr, snap.pd_name, site)
    return result


# -- restoring --------------------------------------------------------------------------------

def restore_pd_snapshot(pd: ProtectionDomain, snap: PDSnapshot, mode: str, prefix: str,
                        power_on: bool) -> RestoreResult:
    manifest = snap.manifest
    if mode == "overwrite":
        if pd.state == "inactive":
            raise InvalidArgument(f"protection domain {pd.name!r} is owned by another site: "
                                  "restore its snapshots here as clones (mode='clone'), or "
                                  "activate it")
        members = snap.members()  # NotFound if a member snapshot is gone
        return _overwrite(pd, snap, members, manifest, power_on)
    return _clone(pd, snap, _sources(pd, snap), manifest, prefix, power_on)


def _sources(pd: ProtectionDomain, snap: PDSnapshot) -> list[tuple[str, Snapshot]]:
    """(vDisk name in the manifest, the vDisk snapshot to read) of each member: the PD's own
    vDisks where it is owned here; where it is owned elsewhere, the replicas of them.
    NotFound if one is gone."""
    if pd.state != "inactive":
        return [(m.snapshot.vdisk_name, m.snapshot) for m in snap.members()]
    from ..replication.replica import find_replica

    mgr = pd._mgr
    owner = mgr.pd_row(pd.name).owner_cluster
    out = []
    for entry in snap.manifest:
        for m in entry["members"]:
            vd = find_replica(mgr.cluster, owner, m["vdisk"])
            rows = [] if vd is None else mgr.catalog.rows(
                SnapshotRow, "vdisk_id = ? AND name = ?", (vd.id, snap.name))
            if vd is None or not rows:
                raise NotFound(f"the replica of {m['vdisk']}@{snap.name} is not here")
            out.append((m["vdisk"], Snapshot(mgr.cluster._ctx, rows[0], vd.name)))
    return out


def _overwrite(pd: ProtectionDomain, snap: PDSnapshot, members: list[PDSnapshotMember],
               manifest: list[dict[str, Any]], power_on: bool) -> RestoreResult:
    mgr = pd._mgr
    vdisks = [mgr.vdisk(m.snapshot.vdisk_name) for m in members]  # NotFound before any change
    existing = {v.name for v in _vms(mgr)}
    vm_entries = [e for e in manifest if e["kind"] == "vm"]
    for entry in vm_entries:
        if entry["name"] in existing:
            VM(mgr, entry["name"]).power_off()
    for vd, m in zip(vdisks, members, strict=True):
        vd.restore(m.snapshot)
    for entry in vm_entries:
        if entry["name"] not in existing:  # deleted since (keep_vdisks=True): register again
            create_vm(mgr, entry["name"], entry["vdisks"], entry["nics"], entry["categories"],
                      power="off")
            if pd.state == "active" and mgr.protecting_pd("vm", entry["name"]) is None:
                pd.add_entities([entry["name"]])
        if power_on:
            VM(mgr, entry["name"]).power_on()
    return RestoreResult("overwrite", snap.name, tuple(e["name"] for e in vm_entries),
                         tuple(vd.name for vd in vdisks))


def _clone(pd: ProtectionDomain, snap: PDSnapshot, sources: list[tuple[str, Snapshot]],
           manifest: list[dict[str, Any]], prefix: str, power_on: bool) -> RestoreResult:
    mgr = pd._mgr
    if not isinstance(prefix, str) or not prefix:
        raise InvalidArgument("clone restore needs a non-empty name prefix")
    vm_entries = [e for e in manifest if e["kind"] == "vm"]
    new_vds = {name: prefix + name for name, _ in sources}
    existing_vds = {vd.name for vd in mgr.cluster.vdisks()}
    existing_vms = {v.name for v in _vms(mgr)}
    for new in new_vds.values():
        check_name("vDisk", new)
        if new in existing_vds:
            raise AlreadyExists(f"vDisk {new!r} exists (clone restore of {snap.name!r})")
    for entry in vm_entries:
        check_name("VM", prefix + entry["name"])
        if prefix + entry["name"] in existing_vms:
            raise AlreadyExists(f"VM {prefix + entry['name']!r} exists (clone restore of {snap.name!r})")
    made_vds: list[str] = []
    made_vms: list[str] = []
    try:
        for name, vd_snap in sources:
            made_vds.append(mgr.cluster.clone(vd_snap, new_vds[name]).name)
        for entry in vm_entries:
            create_vm(mgr, prefix + entry["name"], [new_vds[v] for v in entry["vdisks"]],
                      entry["nics"], entry["categories"], power="on" if power_on else "off")
            made_vms.append(prefix + entry["name"])
    except BaseException:
        _undo_clone(mgr, made_vms, made_vds)
        raise
    return RestoreResult("clone", snap.name, tuple(made_vms), tuple(made_vds))


def _undo_clone(mgr: ProtectionManager, vms: list[str], vdisks: list[str]) -> None:
    from .vm import delete_vm

    for name in vms:
        delete_vm(mgr, name, keep_vdisks=True)
    for name in vdisks:
        mgr.cluster.delete_vdisk(name, with_snapshots=True)


def _vms(mgr: ProtectionManager) -> list[VM]:
    from .vm import list_vms

    return list_vms(mgr)
