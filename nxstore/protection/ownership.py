"""Who owns a protection domain, and the two local transitions that change it.

Both sites of a PD hold a row for it. The owner's row is "active"; every other
site's row is "inactive" and names the owner (site, cluster) and the owner's
`epoch`. Every ownership change (migrate, activate, failback) increments the
epoch, so of two sites that both claim a PD, the higher epoch is the owner and
the other one demotes itself the first time they talk (`demote`). Equal epochs
cannot both be active: an epoch is only ever taken by one site (migrate moves
it with the destination's agreement, activate takes epoch+1 at the survivor).

At a non-owner the PD row is metadata shipped by the owner (`record_sync`,
after every PD snapshot replication): the PD snapshot rows with their
manifests (VM configuration, NICs already mapped to this site's networks) and
the schedules. They carry no member rows: the members are the replica vDisk
snapshots of the owner's vDisks, resolved when the PD is adopted here.

`adopt` turns that into a live PD (migrate step 5 at the destination, activate):
each member replica vDisk is promoted into a writable vDisk named like the
source vDisk, keeping its snapshots (names and creation times line up with the
old owner's, so replication back is incremental) and restored to the chosen PD
snapshot; the VMs are registered, the PD entities, CGs and schedules created.

`demote` is the reverse at the old owner: the VMs are powered off and
unregistered (their vDisks stay), the schedules disabled, and every protected
vDisk becomes a read-only replica of the new owner's vDisk of the same name:
its snapshots are then the "replica snapshots" the new owner's replication
finds in common, so failback ships only the blocks changed since.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import AlreadyExists, InUse, NotFound
from ..replication.replica import find_replica, make_replica, promote_replica
from ..replication.sites import list_sites
from ..store.catalog import SnapshotRow, VDiskRow
from ..store.snapshot import take_snapshots
from .domain import ACTIVE, INACTIVE, ProtectionDomain, entity_vdisks
from .rows import (
    PDEntityRow,
    PDReplicationRow,
    PDScheduleRow,
    PDSnapshotMemberRow,
    PDSnapshotRow,
    ProtectionDomainRow,
    VMRow,
)

if TYPE_CHECKING:
    from .manager import ProtectionManager

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ownership:
    """One site's view of a PD (what a "status" request answers)."""

    exists: bool
    state: str = ""
    epoch: int = 0
    owner_site: str = ""
    owner_cluster: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"exists": self.exists, "state": self.state, "epoch": self.epoch,
                "owner_site": self.owner_site, "owner_cluster": self.owner_cluster}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Ownership:
        return cls(bool(d.get("exists")), str(d.get("state", "")), int(d.get("epoch", 0)),
                   str(d.get("owner_site", "")), str(d.get("owner_cluster", "")))


def outranks(epoch: int, cluster: str, other_epoch: int, other_cluster: str) -> bool:
    """Does an owner at (epoch, cluster id) win over one at (other_epoch, other_cluster)?
    The higher epoch wins. Equal epochs with two owners happen only when two survivors
    activated the PD while cut off from each other: the smaller cluster id wins, so
    every site decides the same and the two converge at their first contact (the
    loser keeps its writes in a "diverged" snapshot, see demote)."""
    if epoch != other_epoch:
        return epoch > other_epoch
    return cluster < other_cluster


def ownership(mgr: ProtectionManager, pd_name: str) -> Ownership:
    rows = mgr.catalog.rows(ProtectionDomainRow, "name = ?", (pd_name,))
    if not rows:
        return Ownership(False)
    r = rows[0]
    return Ownership(True, r.state, r.epoch, r.owner_site, r.owner_cluster)


def set_row(mgr: ProtectionManager, pd_name: str, state: str, epoch: int, owner_site: str,
            owner_cluster: str) -> ProtectionDomainRow:
    """Write the ownership fields as given (the epoch is set, not bumped), creating
    the row if it does not exist. Durable on return."""
    cat = mgr.catalog
    with mgr.lock, cat.transaction():
        rows = cat.rows(ProtectionDomainRow, "name = ?", (pd_name,))
        if rows:
            row = rows[0]
            row.state, row.epoch, row.owner_site, row.owner_cluster = (state, epoch, owner_site,
                                                                       owner_cluster)
            cat.update(row)
            return row
        return cat.insert(ProtectionDomainRow(0, pd_name, state, owner_site, owner_cluster, epoch,
                                              mgr.now()))


# -- metadata shipped by the owner ----------------------------------------------------------

def snapshot_record(snap_row: PDSnapshotRow, network_mapping: dict[str, str],
                    vstore_mapping: dict[str, str]) -> dict[str, Any]:
    """A PD snapshot as shipped to a peer: manifest NICs mapped to the peer's networks,
    container entities to the peer's containers (where the replicas of their vDisks go)."""
    manifest = json.loads(snap_row.manifest)
    for entry in manifest:
        if entry["kind"] == "container":
            entry["name"] = vstore_mapping.get(entry["name"], entry["name"])
        if entry["kind"] == "vm":
            entry["nics"] = [dict(nic, network=network_mapping.get(nic.get("network", ""),
                                                                   nic.get("network", "")))
                             for nic in entry["nics"]]
    return {"name": snap_row.name, "created_at": snap_row.created_at,
            "schedule_id": snap_row.schedule_id, "consistency": snap_row.consistency,
            "manifest": manifest}


def schedule_records(mgr: ProtectionManager, pd_id: int) -> list[dict[str, Any]]:
    """The PD's schedules as shipped to a peer (`created_at` identifies each one there)."""
    return [{"every": r.every, "keep_local": r.keep_local, "keep_remote": json.loads(r.keep_remote),
             "app_consistent": r.app_consistent, "next_due": r.next_due, "id": r.id,
             "created_at": r.created_at}
            for r in mgr.catalog.rows(PDScheduleRow, "pd_id = ?", (pd_id,))]


def record_sync(mgr: ProtectionManager, peer_cluster: str, body: dict[str, Any]) -> Ownership:
    """Apply an owner's "sync" (PD name, epoch, owner, snapshots, schedules) here and
    return this site's view afterwards. If the owner this site knows (itself or
    another site) outranks the sender, nothing changes and the sender learns from the
    reply that it must demote; if this site is active and the sender outranks it, it
    demotes itself first (the PD was activated elsewhere while it was away). Epochs
    here never go down."""
    name, epoch = str(body["pd"]), int(body["epoch"])
    with mgr.lock:
        mine = ownership(mgr, name)
        same = (mine.epoch, mine.owner_cluster) == (epoch, peer_cluster)
        if mine.exists and not same and not outranks(epoch, peer_cluster, mine.epoch,
                                                     mine.owner_cluster):
            return mine
        if mine.exists and mine.state != INACTIVE and not same:
            demote(mgr, name, epoch, body["owner_site"], peer_cluster,
                   reason=f"site {body['owner_site']!r} owns it at epoch {epoch}")
        row = set_row(mgr, name, INACTIVE, epoch, str(body["owner_site"]), peer_cluster)
        follow_owner(mgr, row, mine.owner_cluster)
        cat = mgr.catalog
        with cat.transaction():
            local_ids = _store_schedules(mgr, row.id, body.get("schedules", []))
            have = {r.name: r for r in cat.rows(PDSnapshotRow, "pd_id = ?", (row.id,))}
            for s in body.get("snapshots", []):
                if s["name"] not in have:
                    cat.insert(PDSnapshotRow(0, row.id, s["name"], float(s["created_at"]),
                                             local_ids.get(int(s["schedule_id"]), 0),
                                             s["consistency"], True, json.dumps(s["manifest"]),
                                             "[]"))
        _forget_pruned(mgr, row)
        return ownership(mgr, name)


def _store_schedules(mgr: ProtectionManager, pd_id: int, records: list[dict[str, Any]]
                     ) -> dict[int, int]:
    """Keep the owner's schedules here as disabled rows; return {owner's schedule id:
    row id here}. A schedule is known on every site by its creation time (unique in its
    PD, see schedule.add_schedule), so its row here is updated in place: the PD
    snapshots recorded here keep their schedule, and retention prunes them once this
    site adopts the PD. Schedules the owner removed are removed here too."""
    cat = mgr.catalog
    rows = {r.created_at: r for r in cat.rows(PDScheduleRow, "pd_id = ?", (pd_id,))}
    ids = {}
    for s in records:
        created = float(s["created_at"])
        row = rows.pop(created, None) or PDScheduleRow(0, pd_id, 0.0, 0, "", False, False, 0.0,
                                                       0.0, created)
        row.every, row.keep_local = float(s["every"]), int(s["keep_local"])
        row.keep_remote = json.dumps(s["keep_remote"], sort_keys=True)
        row.app_consistent, row.enabled = bool(s["app_consistent"]), False
        row.next_due = float(s["next_due"])
        if row.id:
            cat.update(row)
        else:
            cat.insert(row)
        ids[int(s["id"])] = row.id
    for r in rows.values():
        cat.delete(PDScheduleRow, r.id)
    return ids


def follow_owner(mgr: ProtectionManager, row: ProtectionDomainRow, old_cluster: str) -> None:
    """At a non-owner whose PD moved from cluster `old_cluster` to row.owner_cluster
    (between two other sites): the replicas of the old owner's vDisks become replicas
    of the new owner's vDisks of the same names, so its replication here is
    incremental on the snapshots they share (same names and times) and adopting here
    later finds them."""
    if old_cluster in ("", row.owner_cluster):
        return
    names = {m["vdisk"] for s in mgr.catalog.rows(PDSnapshotRow, "pd_id = ?", (row.id,))
             for e in json.loads(s.manifest) for m in e["members"]}
    for name in sorted(names):
        old = find_replica(mgr.cluster, old_cluster, name)
        if old is not None and find_replica(mgr.cluster, row.owner_cluster, name) is None:
            make_replica(mgr.cluster, old.name, row.owner_cluster, row.owner_site, name)


def _forget_pruned(mgr: ProtectionManager, row: ProtectionDomainRow) -> None:
    """Drop PD snapshot records whose replica snapshots were all pruned here."""
    cat = mgr.catalog
    with cat.transaction():
        for s in cat.rows(PDSnapshotRow, "pd_id = ?", (row.id,)):
            if cat.rows(PDSnapshotMemberRow, "pd_snapshot_id = ?", (s.id,)):
                continue
            if all(found is None for _, _, found in _members(mgr, row.owner_cluster, s)):
                cat.delete(PDSnapshotRow, s.id)


def _members(mgr: ProtectionManager, source_cluster: str, snap: PDSnapshotRow
             ) -> list[tuple[dict[str, Any], str, SnapshotRow | None]]:
    """(entity, source vDisk name, replica snapshot row or None) of each member."""
    out: list[Any] = []
    for entry in json.loads(snap.manifest):
        for m in entry["members"]:
            found = None
            vd = find_replica(mgr.cluster, source_cluster, m["vdisk"])
            if vd is not None:
                rows = mgr.catalog.rows(SnapshotRow, "vdisk_id = ? AND name = ?",
                                        (vd.id, snap.name))
                found = rows[0] if rows else None
            out.append((entry, m["vdisk"], found))
    return out


def usable_snapshots(mgr: ProtectionManager, pd_name: str) -> list[PDSnapshotRow]:
    """PD snapshot records at a non-owner whose every member replica snapshot is
    here (fully replicated), oldest first."""
    row = mgr.pd_row(pd_name)
    rows = mgr.catalog.rows(PDSnapshotRow, "pd_id = ? AND complete = 1", (row.id,))
    rows.sort(key=lambda r: (r.created_at, r.id))
    return [r for r in rows if all(s is not None for _, _, s in _members(mgr, row.owner_cluster, r))]


# -- adopt: become the owner ------------------------------------------------------------------

def adopt(mgr: ProtectionManager, pd_name: str, *, snapshot: str | None, epoch: int,
          power_on: list[str] | None, peer_site: str | None, check_only: bool = False,
          keep_remote_rename: dict[str, str] | None = None) -> dict[str, Any]:
    """Make this site the owner of `pd_name` at `epoch` from PD snapshot `snapshot`
    (None: the newest fully replicated one): see the module docstring.

    `power_on`: VM names to power on (None: those that were on in the snapshot).
    `keep_remote_rename`: schedule keep_remote keys to rename (this site's name ->
    the old owner's). check_only: run every check, change nothing.
    Idempotent: already active at `epoch` returns at once. Raises NotFound (no
    metadata, no usable snapshot), InUse (active here), AlreadyExists (a VM or
    vDisk name is taken here). Returns {"snapshot", "vms", "vdisks", "dropped_sites"}."""
    with mgr.lock:
        mine = ownership(mgr, pd_name)
        if not mine.exists:
            raise NotFound(f"no protection domain {pd_name!r} at site {mgr.cluster.site_name!r}: "
                           "no PD snapshot of it was ever replicated here")
        if mine.state == ACTIVE:
            if mine.epoch == epoch:
                return {"snapshot": snapshot, "vms": [], "vdisks": [], "dropped_sites": [],
                        "already": True}
            raise InUse(f"protection domain {pd_name!r} is active on site "
                        f"{mgr.cluster.site_name!r} already")
        usable = usable_snapshots(mgr, pd_name)
        if snapshot is not None:
            usable = [r for r in usable if r.name == snapshot]
        if not usable:
            what = f"PD snapshot {snapshot!r}" if snapshot else "any PD snapshot"
            raise NotFound(f"site {mgr.cluster.site_name!r} holds no complete replica of {what} "
                           f"of protection domain {pd_name!r}")
        snap = usable[-1]
        row = mgr.pd_row(pd_name)
        members = _members(mgr, row.owner_cluster, snap)
        manifest = json.loads(snap.manifest)
        _check_free(mgr, row.owner_cluster, manifest)
        known_sites = {s.name for s in list_sites(mgr.catalog)}
        rename = keep_remote_rename or {}
        schedules, dropped = [], set()
        for s in mgr.catalog.rows(PDScheduleRow, "pd_id = ?", (row.id,)):
            keep = {rename.get(k, k): v for k, v in json.loads(s.keep_remote).items()}
            keep.pop(mgr.cluster.site_name, None)
            dropped |= {k for k in keep if k not in known_sites}
            schedules.append((s, {k: v for k, v in keep.items() if k in known_sites}))
        if check_only:
            return {"snapshot": snap.name, "vms": [], "vdisks": [], "dropped_sites": sorted(dropped)}
        log.info("adopting PD %s at epoch %d from snapshot %s", pd_name, epoch, snap.name)
        cluster = mgr.cluster
        # 1. promote each member replica vDisk (named like the source vDisk) and roll it
        #    back to the chosen snapshot (a newer partial one may have arrived)
        vdisks = []
        for _entry, src_name, srow in members:
            assert srow is not None
            vd_row = find_replica(cluster, row.owner_cluster, src_name)
            assert vd_row is not None
            vd = promote_replica(cluster, vd_row.name, src_name)
            vd.restore(next(s for s in vd.snapshots() if s.id == srow.id))
            vdisks.append(vd.name)
        cat = mgr.catalog
        from .vm import create_vm

        vms = []
        for entry in manifest:
            if entry["kind"] == "vm":
                create_vm(mgr, entry["name"], entry["vdisks"], entry["nics"], entry["categories"],
                          power="off")
                vms.append(entry["name"])
        with cat.transaction():
            for entry in manifest:
                cat.insert(PDEntityRow(0, row.id, entry["kind"], entry["name"], entry["cg"]))
            for s in cat.rows(PDSnapshotRow, "pd_id = ?", (row.id,)):
                # member rows for every PD snapshot whose vDisk snapshots are all here
                found = []
                for entry in json.loads(s.manifest):
                    for m in entry["members"]:
                        vd = cluster.vdisk(m["vdisk"]) if m["vdisk"] in vdisks else None
                        hit = [x for x in (vd.snapshots() if vd else []) if x.name == s.name]
                        found.append((entry, m["vdisk"], hit[0] if hit else None))
                if all(f[2] is not None for f in found):
                    for entry, vd_name, sn in found:
                        cat.insert(PDSnapshotMemberRow(0, s.id, sn.id, vd_name, entry["kind"],
                                                       entry["name"], entry["cg"]))
                else:
                    cat.delete(PDSnapshotRow, s.id)
            for s, keep in schedules:
                s.keep_remote = json.dumps(keep, sort_keys=True)
                s.enabled = True
                cat.update(s)
            row.state, row.epoch = ACTIVE, epoch
            row.owner_site, row.owner_cluster = cluster.site_name, cluster.id
            cat.update(row)
        on = power_on if power_on is not None else [e["name"] for e in manifest
                                                    if e["kind"] == "vm" and e["power"] == "on"]
        from .vm import VM

        for name in on:
            if name in vms:
                VM(mgr, name).power_on()
        if dropped:
            log.warning("PD %s: schedules no longer replicate to %s (no such remote site here)",
                        pd_name, sorted(dropped))
        return {"snapshot": snap.name, "vms": vms, "vdisks": vdisks, "dropped_sites": sorted(dropped)}


def _check_free(mgr: ProtectionManager, source_cluster: str, manifest: list[dict[str, Any]]) -> None:
    """AlreadyExists unless every VM name and (promoted) vDisk name is free here; InUse
    if a container entity's container is protected here by another PD."""
    cat = mgr.catalog
    for entry in manifest:
        if entry["kind"] == "container" and (other := mgr.container_pd(entry["name"])):
            raise InUse(f"container {entry['name']!r} is protected at site "
                        f"{mgr.cluster.site_name!r} by protection domain {other!r}")
        if entry["kind"] == "vm" and cat.rows(VMRow, "name = ?", (entry["name"],)):
            raise AlreadyExists(f"VM {entry['name']!r} already exists at site "
                                f"{mgr.cluster.site_name!r}")
        for m in entry["members"]:
            rep = find_replica(mgr.cluster, source_cluster, m["vdisk"])
            taken = cat.rows(VDiskRow, "name = ?", (m["vdisk"],))
            if taken and (rep is None or taken[0].id != rep.id):
                raise AlreadyExists(f"vDisk {m['vdisk']!r} already exists at site "
                                    f"{mgr.cluster.site_name!r} (not the replica)")


# -- demote: stop being the owner ----------------------------------------------------------------

def _snapshotted_vdisks(mgr: ProtectionManager, pd: ProtectionDomain) -> list[str]:
    """The vDisks pd protects now, less those of its containers that are in none of its PD
    snapshots (created since the newest): the new owner has no vDisk they could be replicas
    of, so they stay writable here, unprotected."""
    known = {m["vdisk"] for s in mgr.catalog.rows(PDSnapshotRow, "pd_id = ?", (pd.id,))
             for e in json.loads(s.manifest) for m in e["members"]}
    out = []
    for e in pd._entity_rows():
        names = entity_vdisks(mgr, e.kind, e.name)
        out += [n for n in names if n in known] if e.kind == "container" else names
    return out


def demote(mgr: ProtectionManager, pd_name: str, epoch: int, owner_site: str, owner_cluster: str,
           reason: str, *, keep_diverged: bool = True) -> list[str]:
    """This site no longer owns `pd_name` (see module docstring); returns the VMs
    unregistered. Writes made here after the newest snapshot the new owner holds are
    kept in a snapshot "<pd>.diverged-e<epoch>" of each vDisk (unless not
    `keep_diverged`: Metro discards writes it never acknowledged). An unfinished migration
    of the PD is closed as "aborted" (failover.abort_migration) in the commit that makes
    the PD inactive here. Idempotent."""
    from .failover import abort_migration, journal, migration_vdisks
    from .vm import VM, delete_vm

    with mgr.lock:
        pd = ProtectionDomain(mgr, pd_name)
        row = mgr.pd_row(pd_name)
        if row.state == INACTIVE and not outranks(epoch, owner_cluster, row.epoch,
                                                  row.owner_cluster):
            return []
        log.warning("PD %s: demoted at site %s: %s", pd_name, mgr.cluster.site_name, reason)
        unfinished = journal(mgr, row.id)
        vd_names = _snapshotted_vdisks(mgr, pd)
        if unfinished is not None:
            vd_names += [n for n in migration_vdisks(unfinished) if n not in vd_names]
        vms = pd.vms()
        cat = mgr.catalog
        for vm in vms:
            VM(mgr, vm.name).power_off()
        pd.set_schedules_enabled(False)
        with cat.transaction():
            for e in cat.rows(PDEntityRow, "pd_id = ?", (row.id,)):
                cat.delete(PDEntityRow, e.id)
            for s in cat.rows(PDSnapshotRow, "pd_id = ?", (row.id,)):
                for table in (PDSnapshotMemberRow, PDReplicationRow):
                    for r in cat.rows(table, "pd_snapshot_id = ?", (s.id,)):
                        cat.delete(table, r.id)
        for vm in vms:
            delete_vm(mgr, vm.name, keep_vdisks=True)
        for mode in mgr.modes:
            mode.forget(row.id)
        tag = f"{pd_name}.diverged-e{epoch}"
        for name in vd_names:
            try:
                vd = mgr.cluster.vdisk(name)
            except NotFound:
                continue
            if keep_diverged and not vd.read_only and not any(s.name == tag
                                                              for s in vd.snapshots()):
                take_snapshots(mgr.cluster._ctx, [vd], tag)  # composed: may exceed users' limit
            make_replica(mgr.cluster, name, owner_cluster, owner_site)
        with cat.transaction():
            new_row = set_row(mgr, pd_name, INACTIVE, epoch, owner_site, owner_cluster)
            if unfinished is not None:
                abort_migration(mgr, unfinished, reason)
        follow_owner(mgr, new_row, row.owner_cluster)
        return [vm.name for vm in vms]
