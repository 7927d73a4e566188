"""The NearSync layer's catalogue rows: per-(PD, site) NearSync state at the source and the
received LWS episodes at the target (the LWS rows themselves are the engine's, store/lws.py).

Registered with the catalogue (`store.catalog.register_table`) when this module is imported;
`nxstore.nearsync` imports it, so every use of the layer has its tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..store.catalog import register_table


@dataclass
class NearSyncRow:
    """NearSync of PD `pd_id` to remote `site`: `state` (nxstore.nearsync.state), the newest
    LWS fully shipped there (`shipped_seq`, its time `shipped_at`), the vDisk snapshot the
    remote's episode chain starts from (`base_snapshot`, taken with marker `base_seq`) and
    `history` JSON [[time, from, to, reason], ...]."""

    id: int
    pd_id: int
    site: str
    state: str
    since: float
    shipped_seq: int
    shipped_at: float
    base_snapshot: str
    base_seq: int
    history: str


@dataclass
class LWSEpisodeRow:
    """Target side: a received LWS episode of replica vDisk `vdisk_id` (data in `file`,
    under <cluster>/nearsync/). It applies on `base_snapshot` after the episode `prev_seq`
    (or directly on the snapshot when `first`); `compose_as` names the vDisk snapshot to
    compose at this point ("" = none); `group_name` / `members`: the LWS's PD and size."""

    id: int
    vdisk_id: int
    name: str
    group_name: str
    members: int
    seq: int
    prev_seq: int
    first: bool
    created_at: float
    base_snapshot: str
    compose_as: str
    size: int
    file: str


register_table(NearSyncRow, "nearsync", """
CREATE TABLE IF NOT EXISTS nearsync (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    site TEXT, state TEXT, since REAL, shipped_seq INTEGER, shipped_at REAL, base_snapshot TEXT,
    base_seq INTEGER, history TEXT, ck INTEGER NOT NULL, UNIQUE (pd_id, site))""")
register_table(LWSEpisodeRow, "lws_episodes", """
CREATE TABLE IF NOT EXISTS lws_episodes (id INTEGER PRIMARY KEY AUTOINCREMENT, vdisk_id INTEGER,
    name TEXT, group_name TEXT, members INTEGER, seq INTEGER, prev_seq INTEGER, first INTEGER,
    created_at REAL, base_snapshot TEXT, compose_as TEXT, size INTEGER, file TEXT,
    ck INTEGER NOT NULL, UNIQUE (vdisk_id, seq))""")
