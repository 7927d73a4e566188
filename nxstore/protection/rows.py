"""The protection layer's catalogue rows: VMs, categories, protection domains, their entities,
schedules, PD snapshots, replication records and the failover journal.

JSON columns hold lists/objects; `state`/`owner_*`/`epoch` of a PD are what failover flips.
Registered with the catalogue (`store.catalog.register_table`) when this module is imported;
`nxstore.protection` imports it, so every use of the layer has its tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..store.catalog import register_table


@dataclass
class VMRow:
    """A VM: `vdisks` JSON list of vDisk names, `nics` JSON list of {"network": ...},
    `categories` JSON object, `power` "on"/"off"; hook paths "" when unset."""

    id: int
    name: str
    vdisks: str
    nics: str
    categories: str
    power: str
    pre_freeze: str
    post_thaw: str
    hook_timeout: float
    created_at: float


@dataclass
class CategoryRow:
    """A category of the registry (nxstore.protection.categories): `name` is its key,
    `category_values` a JSON list of the values it allows, in the order they were added."""

    id: int
    name: str
    category_values: str
    description: str
    created_at: float


@dataclass
class ProtectionDomainRow:
    """A PD. `state` is "active" where this cluster owns and protects it; `epoch`
    grows with every ownership change (failover fencing)."""

    id: int
    name: str
    state: str
    owner_site: str
    owner_cluster: str
    epoch: int
    created_at: float


@dataclass
class PDEntityRow:
    """An entity protected by PD `pd_id`: kind "vm", "vdisk" or "container" (`name` the
    container's: its vDisks of no VM, see protection.domain); `cg` "" = no group."""

    id: int
    pd_id: int
    kind: str
    name: str
    cg: str


@dataclass
class PDScheduleRow:
    """A PD schedule: `every` seconds; `keep_remote` JSON {site: count}; `next_due`
    is the slot the scheduler runs next (cluster clock); `last_run` 0 = never."""

    id: int
    pd_id: int
    every: float
    keep_local: int
    keep_remote: str
    app_consistent: bool
    enabled: bool
    next_due: float
    last_run: float
    created_at: float


@dataclass
class PDSnapshotRow:
    """A PD snapshot: one vDisk snapshot called `name` on every member vDisk.
    `schedule_id` 0 = ad hoc; `complete` False while being taken (cleaned up at open);
    `manifest` JSON of the entities (VM configuration included) at snapshot time;
    `hook_failures` JSON list."""

    id: int
    pd_id: int
    name: str
    created_at: float
    schedule_id: int
    consistency: str
    complete: bool
    manifest: str
    hook_failures: str


@dataclass
class PDSnapshotMemberRow:
    """One vDisk snapshot of a PD snapshot, with the entity (and CG) it protects."""

    id: int
    pd_snapshot_id: int
    snapshot_id: int
    vdisk_name: str
    entity_kind: str
    entity_name: str
    cg: str


@dataclass
class PDReplicationRow:
    """PD snapshot `pd_snapshot_id` was fully replicated to remote `site`."""

    id: int
    pd_snapshot_id: int
    site: str
    replicated_at: float


@dataclass
class PDMigrationRow:
    """A failover journal entry (nxstore.protection.failover): `kind` "migrate" |
    "activate" | "demote" | "failback", `step` the last step completed, `status`
    "running" | "failed" | "done" | "rolled_back" | "aborted" (a demotion closed it, the
    reason in `error`), `detail` JSON (what a resume or a rollback needs: prior power
    states, peer cluster, final snapshot...)."""

    id: int
    pd_id: int
    kind: str
    site: str
    step: int
    status: str
    epoch: int
    snapshot: str
    detail: str
    error: str
    started_at: float
    updated_at: float


register_table(VMRow, "vms", """
CREATE TABLE IF NOT EXISTS vms (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    vdisks TEXT, nics TEXT, categories TEXT, power TEXT, pre_freeze TEXT, post_thaw TEXT,
    hook_timeout REAL, created_at REAL, ck INTEGER NOT NULL)""")
register_table(ProtectionDomainRow, "protection_domains", """
CREATE TABLE IF NOT EXISTS protection_domains (id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL, state TEXT, owner_site TEXT, owner_cluster TEXT, epoch INTEGER,
    created_at REAL, ck INTEGER NOT NULL)""")
register_table(PDEntityRow, "pd_entities", """
CREATE TABLE IF NOT EXISTS pd_entities (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    kind TEXT, name TEXT, cg TEXT, ck INTEGER NOT NULL, UNIQUE (kind, name))""")
register_table(PDScheduleRow, "pd_schedules", """
CREATE TABLE IF NOT EXISTS pd_schedules (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    every REAL, keep_local INTEGER, keep_remote TEXT, app_consistent INTEGER, enabled INTEGER,
    next_due REAL, last_run REAL, created_at REAL, ck INTEGER NOT NULL)""")
register_table(PDSnapshotRow, "pd_snapshots", """
CREATE TABLE IF NOT EXISTS pd_snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    name TEXT, created_at REAL, schedule_id INTEGER, consistency TEXT, complete INTEGER,
    manifest TEXT, hook_failures TEXT, ck INTEGER NOT NULL, UNIQUE (pd_id, name))""")
register_table(PDSnapshotMemberRow, "pd_snapshot_members", """
CREATE TABLE IF NOT EXISTS pd_snapshot_members (id INTEGER PRIMARY KEY AUTOINCREMENT,
    pd_snapshot_id INTEGER, snapshot_id INTEGER, vdisk_name TEXT, entity_kind TEXT,
    entity_name TEXT, cg TEXT, ck INTEGER NOT NULL)""")
register_table(PDMigrationRow, "pd_migrations", """
CREATE TABLE IF NOT EXISTS pd_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    kind TEXT, site TEXT, step INTEGER, status TEXT, epoch INTEGER, snapshot TEXT, detail TEXT,
    error TEXT, started_at REAL, updated_at REAL, ck INTEGER NOT NULL)""")
register_table(PDReplicationRow, "pd_replications", """
CREATE TABLE IF NOT EXISTS pd_replications (id INTEGER PRIMARY KEY AUTOINCREMENT,
    pd_snapshot_id INTEGER, site TEXT, replicated_at REAL, ck INTEGER NOT NULL,
    UNIQUE (pd_snapshot_id, site))""")
register_table(CategoryRow, "categories", """
CREATE TABLE IF NOT EXISTS categories (id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL, category_values TEXT, description TEXT, created_at REAL,
    ck INTEGER NOT NULL)""")
