"""Protection domains: sets of entities snapshotted, replicated and recovered together.

A PD protects entities: VMs, bare vDisks and containers. An entity belongs to at
most one PD (a VM's vDisks count as the VM: a vDisk cannot be protected on its own
while its VM is protected, nor the other way round). A consistency group (CG) is a
named subset of the PD's entities whose vDisks are snapshotted at one
crash-consistent point; every other entity is snapshotted on its own (a VM's
vDisks always together). A PD snapshot is one vDisk snapshot of the same name
on every member vDisk (see pdsnapshot).

Containers (`pd.add_container(name)`, or "container:NAME" in `add_entities`): the
container entity covers, at the moment each PD snapshot is taken, every vDisk in the
container that is writable (replicas, the read-only copies of other sites' vDisks, are
not), belongs to no VM (a VM's vDisks are protected through the VM, in this PD or
another, or not at all) and is no PD's "vdisk" entity. So a vDisk created in the
container later is in the PD from its next snapshot on, and so is a clone restored into
it; a vDisk attached to a VM, or deleted, leaves it at the next snapshot. Deleting
one is allowed, as for any vDisk with its snapshots (`with_snapshots=True`): the PD
snapshots that held it then lack a member, and restoring one of them raises NotFound. The covered vDisks are snapshotted together, at one crash-consistent
point (and with the rest of a CG the container is in). Conflicts raise InUse naming
both PDs: a container protected by two PDs, a vDisk protected on its own (by any PD)
in a container a PD protects, either way round. At another site the container entity
names that site's container (the source site's vstore mapping, as its replicas): after
a migrate or activate the new owner protects its own container, so its writable vDisks
of no VM there join the PD at its next snapshot too.

Ownership: a PD row records its `state` ("active" where this cluster owns and
protects it), the owning site and cluster, and an `epoch` that every ownership
change increments. Only an active PD takes snapshots or runs schedules; the
failover workflows (migrate, activate, failback) flip these fields.

Kept as one file (about 520 lines) because `ProtectionDomain` is the one object users hold
for a PD: membership, CGs, schedules, snapshots and the entry points of the replication
modes (NearSync, Metro) are thin methods here, each forwarding to the module or layer that
owns the work.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from ..errors import AlreadyExists, InUse, InvalidArgument, NotFound, NxError
from ..names import check_name
from ..replication.sites import list_sites
from ..store.catalog import ContainerRow
from .manager import ProtectionManager
from .rows import (
    PDEntityRow,
    PDReplicationRow,
    PDScheduleRow,
    PDSnapshotMemberRow,
    PDSnapshotRow,
    ProtectionDomainRow,
    VMRow,
)
from .vm import VM

if TYPE_CHECKING:
    from ..replication.source import ReplicationResult
    from ..store.vdisk import VDisk
    from .failover import FailbackResult, MigrateResult, SyncResult
    from .modes import MetroState, ReplicationState, SynchronousReplication
    from .pdsnapshot import PDSnapshot, RestoreResult
    from .rows import PDMigrationRow
    from .schedule import Schedule

ACTIVE = "active"        # this cluster owns the PD: snapshots, schedules, replication run
INACTIVE = "inactive"    # owned elsewhere (migrated away / activated at a peer): nothing runs
PD_STATES = (ACTIVE, INACTIVE, "migrating")


class ProtectionDomain:
    """A protection domain; get one from `Cluster.create_protection_domain` /
    `Cluster.protection_domain`. A handle: properties read the catalogue."""

    def __init__(self, mgr: ProtectionManager, name: str) -> None:
        self._mgr = mgr
        self._name = name

    def _row(self) -> ProtectionDomainRow:
        return self._mgr.pd_row(self._name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def id(self) -> int:
        return self._row().id

    @property
    def state(self) -> str:
        """"active" (owned and protected here) or another state set by failover."""
        return self._row().state

    @property
    def owner_site(self) -> str:
        return self._row().owner_site

    @property
    def epoch(self) -> int:
        return self._row().epoch

    @property
    def created_at(self) -> float:
        return self._row().created_at

    def __repr__(self) -> str:
        return f"ProtectionDomain({self._name!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ProtectionDomain) and other._mgr is self._mgr
                and other._name == self._name)

    def __hash__(self) -> int:
        return hash(("pd", self._name))

    def require_active(self, action: str) -> ProtectionDomainRow:
        row = self._row()
        if row.state != ACTIVE:
            raise InUse(f"protection domain {self._name!r} is {row.state} on this cluster "
                        f"(owner: site {row.owner_site!r}); cannot {action}")
        return row

    def _set_ownership(self, state: str, owner_site: str, owner_cluster: str) -> int:
        """Flip state/ownership and bump the epoch (for the failover workflows);
        returns the new epoch. Durable on return."""
        if state not in PD_STATES:
            raise InvalidArgument(f"unknown PD state {state!r}")
        with self._mgr.lock, self._mgr.catalog.transaction():
            row = self._row()
            row.state, row.owner_site, row.owner_cluster = state, owner_site, owner_cluster
            row.epoch += 1
            self._mgr.catalog.update(row)
            return row.epoch

    # -- entities ------------------------------------------------------------------
    def _entity_rows(self) -> list[PDEntityRow]:
        return self._mgr.catalog.rows(PDEntityRow, "pd_id = ?", (self.id,))

    def entities(self) -> list[VM | VDisk | ContainerRow]:
        """The protected entities (VM, VDisk and container objects) in the order they
        were added."""
        out: list[VM | VDisk | ContainerRow] = []
        for e in self._entity_rows():
            out.append(VM(self._mgr, e.name) if e.kind == "vm"
                       else self._mgr.cluster.container(e.name) if e.kind == "container"
                       else self._mgr.vdisk(e.name))
        return out

    def containers(self) -> list[str]:
        """The names of the containers the PD protects."""
        return [e.name for e in self._entity_rows() if e.kind == "container"]

    def vms(self) -> list[VM]:
        return [VM(self._mgr, e.name) for e in self._entity_rows() if e.kind == "vm"]

    def vdisk_names(self) -> list[str]:
        """Every vDisk the PD protects now (VMs' vDisks and what its containers cover)."""
        return [vd for e in self._entity_rows() for vd in entity_vdisks(self._mgr, e.kind, e.name)]

    def add_entities(self, entities: Sequence[object]) -> None:
        """Protect more entities (VM / VDisk / container objects, VM or vDisk names,
        "container:NAME"). Raises InUse if one is already protected (by this or another
        PD; see the module docstring for containers), NotFound, InvalidArgument."""
        with self._mgr.lock, self._mgr.catalog.transaction():
            pd_id = self.require_active("add entities").id
            for kind, name in resolve_entities(self._mgr, entities, self._name):
                self._mgr.catalog.insert(PDEntityRow(0, pd_id, kind, name, ""))

    def add_container(self, name: str) -> None:
        """Protect container `name`: its vDisks of no VM, also those created later (module
        docstring). Same as add_entities(["container:" + name]); same errors."""
        self.add_entities([CONTAINER_PREFIX + name])

    def remove_container(self, name: str) -> None:
        """Stop protecting container `name` (its snapshots stay). NotFound if the PD
        does not protect it."""
        self.remove_entities([CONTAINER_PREFIX + name])

    def remove_entities(self, entities: Sequence[object]) -> None:
        """Stop protecting entities (their snapshots stay). NotFound if one is not in this PD."""
        with self._mgr.lock, self._mgr.catalog.transaction():
            rows = {(e.kind, e.name): e for e in self._entity_rows()}
            for kind, name in _entity_keys(self._mgr, entities):
                if (kind, name) not in rows:
                    raise NotFound(f"{kind} {name!r} is not in protection domain {self._name!r}")
                self._mgr.catalog.delete(PDEntityRow, rows[(kind, name)].id)

    # -- consistency groups ---------------------------------------------------------------
    def add_consistency_group(self, name: str, members: Sequence[object]) -> None:
        """Make `members` (entities of this PD) a consistency group: their vDisks are
        snapshotted at one crash-consistent point. Raises AlreadyExists (CG name),
        NotFound (not an entity of this PD), InUse (member already in a CG)."""
        check_name("consistency group", name)
        keys = _entity_keys(self._mgr, members)
        if not keys:
            raise InvalidArgument("a consistency group needs at least one member")
        with self._mgr.lock, self._mgr.catalog.transaction():
            rows = {(e.kind, e.name): e for e in self._entity_rows()}
            if any(e.cg == name for e in rows.values()):
                raise AlreadyExists(f"protection domain {self._name!r} has a consistency group {name!r}")
            for key in keys:
                row = rows.get(key)
                if row is None:
                    raise NotFound(f"{key[0]} {key[1]!r} is not in protection domain {self._name!r}")
                if row.cg:
                    raise InUse(f"{key[0]} {key[1]!r} is already in consistency group {row.cg!r}")
                row.cg = name
                self._mgr.catalog.update(row)

    def remove_consistency_group(self, name: str) -> None:
        """Dissolve CG `name` (its members stay protected, each on its own)."""
        with self._mgr.lock, self._mgr.catalog.transaction():
            rows = [e for e in self._entity_rows() if e.cg == name]
            if not rows or not name:  # "" is the CG of entities in none
                raise NotFound(f"protection domain {self._name!r} has no consistency group {name!r}")
            for row in rows:
                row.cg = ""
                self._mgr.catalog.update(row)

    def consistency_groups(self) -> dict[str, list[str]]:
        """{CG name: [entity names]}."""
        groups: dict[str, list[str]] = {}
        for e in self._entity_rows():
            if e.cg:
                groups.setdefault(e.cg, []).append(e.name)
        return dict(sorted(groups.items()))

    # -- snapshots -----------------------------------------------------------------------
    def snapshot(self, replicate_to: Sequence[str] = (), name: str | None = None,
                 app_consistent: bool = False) -> PDSnapshot:
        """Take a PD snapshot now (each CG at one point, other entities each
        crash-consistent) and replicate it to each site in `replicate_to`.

        Raises NotFound (unknown site: checked before anything is taken; missing
        vDisk), InUse (PD not active here), InvalidArgument (no vDisks), and the
        replication error if a transfer fails: the local snapshot is then kept and
        `replicate(snap, site)` retries. Durable on return."""
        from .pdsnapshot import take_pd_snapshot

        sites = _check_sites(self._mgr, replicate_to)
        with self._mgr.lock:
            snap = take_pd_snapshot(self, name=name, schedule_id=0, app_consistent=app_consistent)
        failed: list[tuple[str, NxError]] = []
        for site in sites:  # every site is tried; the first failure is raised after
            try:
                self.replicate(snap, site)
            except NxError as exc:
                failed.append((site, exc))
        if failed:
            site, exc = failed[0]
            msg = (f"PD snapshot {snap.name!r} was taken but replication to "
                   f"{', '.join(s for s, _ in failed)} failed ({site}: {exc}); "
                   "retry with pd.replicate(snap, site)")
            try:
                error = type(exc)(msg)  # keep the class (AuthenticationError...)
            except Exception:  # noqa: BLE001 - a class with another signature
                error = NxError(msg)
            raise error from exc
        return snap

    def snapshots(self) -> list[PDSnapshot]:
        """Complete PD snapshots, oldest first. At a non-owner (inactive): those whose
        every vDisk snapshot is held here (what activate could start from)."""
        from .ownership import usable_snapshots
        from .pdsnapshot import PDSnapshot

        if self.state == INACTIVE:
            rows = usable_snapshots(self._mgr, self._name)
        else:
            rows = self._mgr.catalog.rows(PDSnapshotRow, "pd_id = ? AND complete = 1", (self.id,))
            rows.sort(key=lambda r: (r.created_at, r.id))
        return [PDSnapshot(self._mgr, self._name, r) for r in rows]

    def get_snapshot(self, name: str) -> PDSnapshot:
        for snap in self.snapshots():
            if snap.name == name:
                return snap
        raise NotFound(f"protection domain {self._name!r} has no snapshot {name!r}")

    def replicate(self, snap: PDSnapshot, site: str) -> ReplicationResult:
        """Replicate PD snapshot `snap` (every member vDisk snapshot, over one
        connection) to `site` and record it. Raises NotFound, replication errors."""
        from .pdsnapshot import replicate_pd_snapshot

        _check_sites(self._mgr, [site])
        return replicate_pd_snapshot(self._mgr, snap, site)

    def restore(self, snap: PDSnapshot, mode: str = "overwrite", prefix: str = "restored-",
                power_on: bool = False) -> RestoreResult:
        """Recover the PD's entities from `snap`.

        mode="overwrite": VMs are powered off, then every member vDisk is restored
        to the snapshot (VMs deleted since are registered again; they stay off
        unless `power_on`). mode="clone": new vDisks and VMs named `prefix + name`
        are created from the snapshot (powered off unless `power_on`); the
        originals are untouched and the clones are not protected (unless they are
        bare vDisks in a container the PD protects: the clone is in its source's).
        Where the PD is owned by another site (inactive here), only clones are made,
        from the replicas.
        Raises InvalidArgument (mode, foreign snapshot), AlreadyExists (a clone
        name is taken: checked before anything changes), NotFound (a member
        snapshot or vDisk is gone)."""
        from .pdsnapshot import restore_pd_snapshot

        if mode not in ("overwrite", "clone"):
            raise InvalidArgument(f"restore mode must be 'overwrite' or 'clone', not {mode!r}")
        if snap.pd_name != self._name:
            raise InvalidArgument(f"{snap!r} is not a snapshot of protection domain {self._name!r}")
        with self._mgr.lock:
            return restore_pd_snapshot(self, snap, mode, prefix, power_on)

    # -- schedules -----------------------------------------------------------------------
    def add_schedule(self, every: timedelta, keep_local: int,
                     keep_remote: dict[str, int] | None = None, app_consistent: bool = False,
                     start: float | None = None) -> Schedule:
        """Add a schedule (see nxstore.protection.schedule.add_schedule)."""
        from .schedule import add_schedule

        return add_schedule(self, every, keep_local, keep_remote, app_consistent, start)

    def schedules(self) -> list[Schedule]:
        from .schedule import list_schedules

        return list_schedules(self)

    def remove_schedule(self, schedule: Schedule | int) -> None:
        """Delete a schedule (its snapshots stay, now retained by nothing)."""
        from .schedule import remove_schedule

        remove_schedule(self, schedule)

    def set_schedules_enabled(self, enabled: bool) -> None:
        """Enable or disable every schedule of the PD (migrate disables them)."""
        from .schedule import set_enabled

        set_enabled(self, enabled)

    # -- replication modes (NearSync: nxstore.protection.modes) --------------------------------
    def replication_state(self) -> dict[str, ReplicationState]:
        """{remote site: NearSync state ("seeding" | "nearsync" | "fallback"), since when, and
        the transition history} for each site a NearSync schedule replicates to."""
        return {site: st for mode in self._mgr.modes for site, st in mode.states(self.id).items()}

    def rpo(self) -> dict[str, float | None]:
        """{remote site: age in seconds (cluster clock) of the newest restore point it holds:
        LWS or PD snapshot}; None for a site that holds none yet."""
        cat = self._mgr.catalog
        shipped: dict[str, float] = {}
        for mode in self._mgr.modes:
            for site, at in mode.shipped_at(self.id).items():
                shipped[site] = max(shipped.get(site, 0.0), at)
        times = {r.id: r.created_at for r in cat.rows(PDSnapshotRow, "pd_id = ?", (self.id,))}
        for rep in cat.rows(PDReplicationRow):
            if rep.pd_snapshot_id in times:
                shipped[rep.site] = max(shipped.get(rep.site, 0.0), times[rep.pd_snapshot_id])
        sites = {s for sch in self.schedules() for s in sch.keep_remote} | set(shipped)
        now = self._mgr.now()
        return {site: (now - shipped[site]) if shipped.get(site) else None
                for site in sorted(sites)}

    # -- Metro: synchronous replication with a witness (protection.modes) ------------------
    def _metro(self) -> SynchronousReplication:
        if self._mgr.synchronous is None:
            raise InvalidArgument("Metro is not available on this cluster object (open it "
                                  "with nxstore.Cluster)")
        return self._mgr.synchronous

    def enable_metro(self, site: str, witness: str, *, witness_secret: str,
                     peer_witness: str | None = None, break_mode: str = "automatic",
                     break_timeout: float = 15.0, rtt_limit: float = 0.005) -> MetroState:
        """Replicate this PD synchronously to remote `site` (RPO 0): seed the standby
        (deduplicated), then every flush of a PD vDisk returns only once both sites hold
        it. `witness` (HOST:PORT, its secret `witness_secret`) decides which site may
        continue alone when they lose each other; `peer_witness`: its address as `site`
        reaches it (default the same). `break_mode` "automatic": after `break_timeout`
        seconds of stalled flushes the active site asks the witness and continues alone;
        "manual": IO stalls until `metro_break()` or the link returns. Raises
        InvalidArgument (bad values; a NearSync schedule; a round trip to `site` above
        `rtt_limit` seconds), AlreadyExists (Metro already on), NotFound (site),
        WitnessUnreachable, AuthenticationError. Durable on return."""
        return self._metro().enable(self, site, witness=witness, witness_secret=witness_secret,
                                    peer_witness=peer_witness, break_mode=break_mode,
                                    break_timeout=break_timeout, rtt_limit=rtt_limit)

    def disable_metro(self) -> None:
        """Stop Metro (at the active site); the standby keeps its replicas."""
        self._metro().disable(self)

    def metro_state(self) -> MetroState:
        """This site's view of the PD's Metro pair (NotFound: no Metro)."""
        return self._metro().state(self)

    def metro_break(self) -> MetroState:
        """Operator break at the active site: continue alone in the next epoch if the
        witness agrees (MetroFenced otherwise, WitnessUnreachable)."""
        return self._metro().break_link(self)

    def metro_resume(self) -> MetroState:
        """Resync the standby and go back to synchronous (after a manual break)."""
        return self._metro().resume(self)

    def metro_promote(self, force: bool = False, power_on: bool = True) -> MetroState:
        """Make this standby the active site in the next epoch. It must be in step with
        the active (it streamed in its epoch and saw no later one) and the witness must
        agree; `force` skips both checks (the operator accepts losing what the standby
        lacks). The VMs that were on come up on (`power_on` False: all stay off).
        MetroFenced if another site holds the epoch, WitnessUnreachable or
        InvalidArgument without `force`."""
        return self._metro().promote(self, force, power_on)

    # -- failover (nxstore.protection.failover) --------------------------------------------
    def migrate(self, site: str, power_on: bool = False) -> MigrateResult:
        """Planned failover to `site`, its VMs left powered off there unless `power_on`;
        re-run to resume (see failover.migrate)."""
        from .failover import migrate

        return migrate(self, site, power_on)

    def rollback_migrate(self) -> list[str]:
        """Undo an unfinished migration (see failover.rollback_migrate)."""
        from .failover import rollback_migrate

        return rollback_migrate(self)

    def sync_ownership(self, sites: Sequence[str] | None = None) -> SyncResult:
        """Learn from the peers whether the PD was activated elsewhere; demote if so."""
        from .failover import sync_ownership

        return sync_ownership(self, list(sites) if sites is not None else None)

    def reprotect(self, site: str | None = None) -> ReplicationResult:
        """Replicate back to the previous owner after activate (deltas only)."""
        from .failover import reprotect

        return reprotect(self, site)

    def failback(self, site: str | None = None, migrate_back: bool = True,
                 power_on: bool = False) -> FailbackResult:
        """reprotect(site), then migrate(site, power_on)."""
        from .failover import failback

        return failback(self, site, migrate_back, power_on)

    def journal(self) -> list[PDMigrationRow]:
        """The failover journal of this PD (migrate / activate rows), oldest first."""
        from .failover import journal_rows

        return journal_rows(self._mgr, self.id)


# -- entity resolution ---------------------------------------------------------------------

CONTAINER_PREFIX = "container:"  # "container:NAME" (a user's VM or vDisk name has no ':')


def entity_vdisks(mgr: ProtectionManager, kind: str, name: str) -> list[str]:
    """The vDisks entity (kind, name) protects now: a VM's, a container's (those it
    covers: module docstring), or the vDisk itself."""
    if kind == "vm":
        return json.loads(mgr.vm_row(name).vdisks)
    if kind == "container":
        return mgr.container_vdisks(name)
    return [name]


def _entity_keys(mgr: ProtectionManager, items: Sequence[object]) -> list[tuple[str, str]]:
    """(kind, name) of each item: VM, VDisk, container, "container:NAME" or a name (a
    VM's name wins only if unique)."""
    from ..store.vdisk import VDisk

    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise InvalidArgument("entities must be a list of VMs, vDisks, containers or names")
    keys = []
    for item in items:
        if isinstance(item, VM):
            keys.append(("vm", item.name))
        elif isinstance(item, VDisk):
            keys.append(("vdisk", item.name))
        elif isinstance(item, ContainerRow):
            keys.append(("container", item.name))
        elif isinstance(item, str) and item.startswith(CONTAINER_PREFIX):
            keys.append(("container", item[len(CONTAINER_PREFIX):]))
        elif isinstance(item, str):
            is_vm = bool(mgr.catalog.rows(VMRow, "name = ?", (item,)))
            is_vd = item in {vd.name for vd in mgr.cluster.vdisks()}
            if is_vm and is_vd:
                raise InvalidArgument(f"{item!r} names both a VM and a vDisk: pass the object")
            if not (is_vm or is_vd):
                raise NotFound(f"no VM or vDisk {item!r}")
            keys.append(("vm" if is_vm else "vdisk", item))
        else:
            raise InvalidArgument(f"an entity is a VM, a VDisk, a container or a name, not {item!r}")
    if len(set(keys)) != len(keys):
        raise InvalidArgument("an entity is named twice")
    return keys


def resolve_entities(mgr: ProtectionManager, items: Sequence[object],
                     pd_name: str) -> list[tuple[str, str]]:
    """Entity keys to add to PD `pd_name`, checked: they exist, none is protected yet
    (InUse; for containers see the module docstring), and no vDisk is covered twice (a
    VM and one of its own vDisks)."""
    keys = _entity_keys(mgr, items)
    covered: dict[str, str] = {}
    adding = {name for kind, name in keys if kind == "container"}
    for kind, name in keys:
        if kind == "container":
            mgr.cluster.container(name)  # NotFound
            _check_container_free(mgr, name, pd_name)
            vdisks = mgr.container_vdisks(name)
        elif kind == "vm":
            vdisks = json.loads(mgr.vm_row(name).vdisks)  # NotFound
        else:
            vd_obj = mgr.vdisk(name)  # NotFound
            vdisks = [name]
            holder = mgr.container_pd(vd_obj.container)
            if vd_obj.container in adding:
                holder = pd_name
            if holder is not None and not vd_obj.read_only and mgr.vm_of_vdisk(name) is None:
                raise InUse(f"vDisk {name!r} is in container {vd_obj.container!r}, which "
                            f"protection domain {holder!r} protects; protection domain "
                            f"{pd_name!r} cannot also protect it on its own")
        pd = mgr.protecting_pd(kind, name)
        if pd is not None:
            what = {"vm": "VM", "vdisk": "vDisk", "container": "container"}[kind]
            raise InUse(f"{what} {name!r} is already protected by protection domain {pd!r}; "
                        f"protection domain {pd_name!r} cannot protect it too (an entity "
                        "belongs to at most one PD)")
        for vd in vdisks:
            if vd in covered:
                raise InvalidArgument(f"vDisk {vd!r} is covered twice ({covered[vd]!r} and {name!r})")
            covered[vd] = name
    return keys


def _check_container_free(mgr: ProtectionManager, container: str, pd_name: str) -> None:
    """InUse if a vDisk in `container` is a PD's "vdisk" entity (protected on its own)."""
    for vd in mgr.cluster.vdisks():
        if vd.container != container:
            continue
        rows = mgr.catalog.rows(PDEntityRow, "kind = 'vdisk' AND name = ?", (vd.name,))
        if rows:
            holder = mgr.pd_row_by_id(rows[0].pd_id).name
            raise InUse(f"container {container!r} holds vDisk {vd.name!r}, which protection "
                        f"domain {holder!r} protects on its own; protection domain "
                        f"{pd_name!r} cannot protect the container too")


def _check_sites(mgr: ProtectionManager, sites: Sequence[str]) -> list[str]:
    if isinstance(sites, str) or not isinstance(sites, Sequence):
        raise InvalidArgument(f"sites must be a list of remote site names, not {sites!r}")
    known = {s.name for s in list_sites(mgr.catalog)}
    for site in sites:
        if site not in known:
            raise NotFound(f"no remote site {site!r} (known: {sorted(known) or 'none'})")
    return list(dict.fromkeys(sites))


# -- registry (called by the Cluster glue) ---------------------------------------------------

def create_protection_domain(mgr: ProtectionManager, name: str,
                             entities: Sequence[object] = ()) -> ProtectionDomain:
    """A new, active PD owned by this cluster. Raises AlreadyExists, InUse (an
    entity is already protected), NotFound, InvalidArgument. Durable on return."""
    check_name("protection domain", name)
    cluster = mgr.cluster
    with mgr.lock, mgr.catalog.transaction():
        if mgr.catalog.rows(ProtectionDomainRow, "name = ?", (name,)):
            raise AlreadyExists(f"protection domain {name!r} exists")
        keys = resolve_entities(mgr, entities, name)
        row = mgr.catalog.insert(ProtectionDomainRow(
            0, name, ACTIVE, cluster.site_name, cluster.id, 1, mgr.now()))
        for kind, ent in keys:
            mgr.catalog.insert(PDEntityRow(0, row.id, kind, ent, ""))
    return ProtectionDomain(mgr, name)


def get_protection_domain(mgr: ProtectionManager, name: str) -> ProtectionDomain:
    mgr.pd_row(name)  # NotFound
    return ProtectionDomain(mgr, name)


def list_protection_domains(mgr: ProtectionManager) -> list[ProtectionDomain]:
    return sorted((ProtectionDomain(mgr, r.name) for r in mgr.catalog.rows(ProtectionDomainRow)),
                  key=lambda p: p.name)


def delete_protection_domain(mgr: ProtectionManager, name: str,
                             delete_snapshots: bool = False) -> None:
    """Delete a PD: its entities become unprotected, its schedules and PD snapshot
    records go. The vDisk snapshots stay (plain snapshots) unless `delete_snapshots`."""
    with mgr.lock:
        pd = get_protection_domain(mgr, name)
        snaps = pd.snapshots()
        if delete_snapshots:
            for snap in snaps:
                snap.delete()
        cat = mgr.catalog
        with cat.transaction():
            pd_id = pd.id
            for table in (PDEntityRow, PDScheduleRow):
                for r in cat.rows(table, "pd_id = ?", (pd_id,)):
                    cat.delete(table, r.id)
            for s in cat.rows(PDSnapshotRow, "pd_id = ?", (pd_id,)):
                for table in (PDSnapshotMemberRow, PDReplicationRow):
                    for r in cat.rows(table, "pd_snapshot_id = ?", (s.id,)):
                        cat.delete(table, r.id)
                cat.delete(PDSnapshotRow, s.id)
            cat.delete(ProtectionDomainRow, pd_id)
