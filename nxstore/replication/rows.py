"""The replication layer's catalogue rows: remote sites and replica markers.

Registered with the catalogue (`store.catalog.register_table`) when this module is imported;
`nxstore.replication` imports it, so every use of the layer has its tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..store.catalog import register_table


@dataclass
class RemoteSiteRow:
    """A peer cluster. Mappings are JSON objects (local name -> remote name)."""

    id: int
    name: str
    address: str
    secret: str
    network_mapping: str
    vstore_mapping: str
    tls_ca: str  # "" = plain TCP; else a PEM file of CAs that must have signed the site's cert


@dataclass
class ReplicaRow:
    """Marks a vDisk as the replica of `source_vdisk` at cluster `source_cluster`."""

    id: int
    vdisk_id: int
    source_cluster: str
    source_site: str
    source_vdisk: str


register_table(RemoteSiteRow, "remote_sites", """
CREATE TABLE IF NOT EXISTS remote_sites (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    address TEXT, secret TEXT, network_mapping TEXT, vstore_mapping TEXT, tls_ca TEXT,
    ck INTEGER NOT NULL)""")
register_table(ReplicaRow, "replicas", """
CREATE TABLE IF NOT EXISTS replicas (id INTEGER PRIMARY KEY AUTOINCREMENT, vdisk_id INTEGER UNIQUE,
    source_cluster TEXT, source_site TEXT, source_vdisk TEXT, ck INTEGER NOT NULL,
    UNIQUE (source_cluster, source_vdisk))""")
