"""The Leap layer's catalogue rows: zones and their member clusters, policy and plan
definitions, the PDs a policy manages here, plan runs and what a test failover created.

Registered with the catalogue when this module is imported (`nxstore.leap` imports it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..store.catalog import register_table


@dataclass
class ZoneRow:
    """A paired availability zone as nxstore wrote it before zones could group clusters:
    `name` is its one site's name, `cluster` its cluster id. Read once and moved into
    ZoneClusterRow (nxstore.leap.zones)."""

    id: int
    name: str
    cluster: str
    connected_at: float


@dataclass
class ZoneClusterRow:
    """Cluster (site) `site` is a member of availability zone `zone`: `site` is also its
    remote-site entry here, `cluster` its cluster id. The row whose `site` is this site's
    own name names the local zone (none: the local zone is called like this site)."""

    id: int
    zone: str
    site: str
    cluster: str
    connected_at: float


@dataclass
class DefinitionRow:
    """A policy (`kind` "policy") or recovery plan ("plan") as JSON `spec`, at `version`
    (every change increments it; a cluster keeps the highest it has seen). `owed`: JSON list
    of clusters (sites) the current version has not reached yet (retried by the Leap
    tick)."""

    id: int
    kind: str
    name: str
    spec: str
    version: int
    owed: str
    updated_at: float


@dataclass
class MemberRow:
    """Protection domain `pd` is managed here by policy `policy` (its schedules follow the
    policy's)."""

    id: int
    policy: str
    pd: str
    created_at: float


@dataclass
class PlanRunRow:
    """One run of a plan action here: `status` "Running", "Succeeded" or "Failed: <step>";
    `report` the JSON list of its steps."""

    id: int
    plan: str
    action: str
    status: str
    report: str
    started_at: float


@dataclass
class TestItemRow:
    """A VM or vDisk (`kind`) a test failover of `plan` created here (cleanup_test removes
    exactly these)."""

    id: int
    plan: str
    kind: str
    name: str


register_table(ZoneRow, "leap_zones", """
CREATE TABLE IF NOT EXISTS leap_zones (id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL, cluster TEXT, connected_at REAL, ck INTEGER NOT NULL)""")
register_table(ZoneClusterRow, "leap_zone_clusters", """
CREATE TABLE IF NOT EXISTS leap_zone_clusters (id INTEGER PRIMARY KEY AUTOINCREMENT,
    zone TEXT NOT NULL, site TEXT UNIQUE NOT NULL, cluster TEXT, connected_at REAL,
    ck INTEGER NOT NULL)""")
register_table(DefinitionRow, "leap_definitions", """
CREATE TABLE IF NOT EXISTS leap_definitions (id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, name TEXT NOT NULL, spec TEXT, version INTEGER, owed TEXT,
    updated_at REAL, ck INTEGER NOT NULL, UNIQUE (kind, name))""")
register_table(MemberRow, "leap_members", """
CREATE TABLE IF NOT EXISTS leap_members (id INTEGER PRIMARY KEY AUTOINCREMENT,
    policy TEXT NOT NULL, pd TEXT UNIQUE NOT NULL, created_at REAL, ck INTEGER NOT NULL)""")
register_table(PlanRunRow, "leap_plan_runs", """
CREATE TABLE IF NOT EXISTS leap_plan_runs (id INTEGER PRIMARY KEY AUTOINCREMENT,
    plan TEXT NOT NULL, action TEXT, status TEXT, report TEXT, started_at REAL,
    ck INTEGER NOT NULL)""")
register_table(TestItemRow, "leap_test_items", """
CREATE TABLE IF NOT EXISTS leap_test_items (id INTEGER PRIMARY KEY AUTOINCREMENT,
    plan TEXT NOT NULL, kind TEXT, name TEXT, ck INTEGER NOT NULL, UNIQUE (kind, name))""")
