"""Light-weight snapshots: MARKER records in the OpLog and their catalogue rows.

An LWS of a set of vDisks is ONE marker record (vdisk id 0) appended while every member's lock
is held, in the order `take_snapshots` uses (vDisk id): every write of a member that was
appended before the marker precedes it in the one sequence space of the OpLog, and no member
write is half applied. A write acknowledged before the call therefore lies before the marker in
every member (crash consistency across the group, as `snapshot_group`), and one seq identifies
the point for all of them. O(1): no drain, no map change; replay skips markers.

The marker is made durable (`OpLog.sync`) before the catalogue row that names it commits,
because the OpLog hands out again the seqs of records lost before a sync.

An LWS may belong to a group (`pd_id`, 0 = ad hoc): the layers above attribute it (NearSync
ships the LWS of a protection domain, nxstore.nearsync.lws); the engine only records the id.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ..errors import InvalidArgument
from ..names import check_name
from .catalog import register_table

if TYPE_CHECKING:
    from .context import ClusterContext
    from .vdisk import VDisk

T = TypeVar("T")


@dataclass
class LWSRow:
    """A light-weight snapshot at the source: the MARKER record `seq` of the OpLog.
    `members` JSON {vDisk name: [vdisk id, size, head layer]} at the marker; `snapshot` the
    vDisk snapshot taken atomically with it ("" = none); `pd_id` the owning group, 0 = ad hoc
    (never shipped)."""

    id: int
    name: str
    pd_id: int
    seq: int
    created_at: float
    members: str
    snapshot: str


register_table(LWSRow, "lws", """
CREATE TABLE IF NOT EXISTS lws (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, pd_id INTEGER,
    seq INTEGER UNIQUE, created_at REAL, members TEXT, snapshot TEXT, ck INTEGER NOT NULL)""")


@dataclass(frozen=True)
class LWS:
    """A light-weight snapshot: marker `seq` of the OpLog, taken at `created_at` (cluster
    clock) over `vdisks`; `snapshot` names the vDisk snapshot taken atomically with it."""

    name: str
    seq: int
    created_at: float
    vdisks: tuple[str, ...]
    snapshot: str | None = None
    pd_id: int = 0

    @classmethod
    def from_row(cls, row: LWSRow) -> LWS:
        return cls(row.name, row.seq, row.created_at, tuple(json.loads(row.members)),
                   row.snapshot or None, row.pd_id)


def take(ctx: ClusterContext, vdisks: Sequence[VDisk], name: str | None = None, *,
         pd_id: int = 0,
         with_snapshot: Callable[[], tuple[T, str]] | None = None) -> tuple[LWS, T | None]:
    """Append one LWS marker over `vdisks` (see module docstring); return it and what
    `with_snapshot` returned. `with_snapshot` runs under the members' locks just before
    the marker and returns (anything, the name of the vDisk snapshot it took), so that
    snapshot and the LWS are one point. Raises InvalidArgument (no vDisks, a vDisk twice, bad name), ReadOnly (a
    replica), NotFound (a deleted vDisk). Durable on return; the row is in the catalogue."""
    from .vdisk import lock_group  # vdisk imports this module (VDisk.lws)

    if name is not None:
        check_name("LWS", name)
    error = "an LWS needs at least one vDisk, each named once"
    if not vdisks:
        raise InvalidArgument(error)
    with lock_group(vdisks, error) as members:
        extra, snapshot = with_snapshot() if with_snapshot is not None else (None, "")
        payload = json.dumps({"name": name, "pd": pd_id, "vdisks": [vd.id for vd in members]})
        seq = ctx.oplog.append_marker(0, payload.encode())
        info = {vd.name: [vd.id, vd.size, vd.head_layer] for vd in members}
        now = float(ctx.clock())
    ctx.oplog.sync(seq)
    row = LWSRow(0, name or f"lws-{seq}", pd_id, seq, now, json.dumps(info), snapshot)
    with ctx.catalog.transaction():
        ctx.catalog.insert(row)
    return LWS.from_row(row), extra
