"""The Metro layer's catalogue rows (registered with `store.catalog.register_table` when
this module is imported; `nxstore.metro` imports it).

One MetroRow per Metro-protected PD at each of the two sites. `role` is "active" (owns the
PD and acknowledges writes) or "standby" (holds the read-only replicas); `epoch` is the
newest Metro epoch this site has seen decided (by the witness, or locally by a forced manual
promote); `acked_epoch` the epoch in which this site last acknowledged writes alone (a
legitimate break: its writes are kept on a `<pd>.diverged-<epoch>` snapshot if it is later
demoted); `checkpoint` the name of the vDisk snapshot both sites hold and agree on (the base
of the next delta resync); `state` one of controller.STATES; `note` the last event an
operator must know of (unacknowledged writes discarded, say).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..store.catalog import register_table


@dataclass
class MetroRow:
    id: int
    pd_id: int
    pd_name: str
    pair_id: str
    peer_site: str
    role: str
    state: str
    epoch: int
    acked_epoch: int
    witness: str
    witness_secret: str
    break_mode: str
    break_timeout: float
    rtt_limit: float
    checkpoint: str
    changed_at: float
    note: str


register_table(MetroRow, "metro", """
CREATE TABLE IF NOT EXISTS metro (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    pd_name TEXT, pair_id TEXT, peer_site TEXT, role TEXT, state TEXT, epoch INTEGER,
    acked_epoch INTEGER, witness TEXT, witness_secret TEXT, break_mode TEXT, break_timeout REAL,
    rtt_limit REAL, checkpoint TEXT, changed_at REAL, note TEXT, ck INTEGER NOT NULL,
    UNIQUE (pd_id))""")
