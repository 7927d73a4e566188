"""Light-weight snapshots (source side): MARKER records in the OpLog and their catalogue rows.

An LWS of a set of vDisks is ONE marker record (vdisk id 0) appended while every member's lock
is held, in the order `take_snapshots` uses (vDisk id): every write of a member that was
appended before the marker precedes it in the one sequence space of the OpLog, and no member
write is half applied. A write acknowledged before the call therefore lies before the marker in
every member (crash consistency across the group, as `snapshot_group`), and one seq identifies
the point for all of them. O(1): no drain, no map change.

The marker is made durable (`OpLog.sync`) before the catalogue row that names it commits,
because the OpLog hands out again the seqs of records lost before a sync.

An LWS belongs to a protection domain (`pd_id`) when it is taken for the PD or over vDisks
that one PD active here protects; it then covers all of that PD's vDisks (a NearSync chain
moves one point for all of them), the PD's next NearSync round ships it, and the remotes list
it among the restore points under its name. Any other LWS is ad hoc (pd_id 0): local only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ..errors import InvalidArgument
from ..names import check_name
from ..protection.domain import ACTIVE, get_protection_domain, list_protection_domains
from ..store.catalog import LWSRow
from ..store.context import ClusterContext
from ..store.vdisk import lock_group

if TYPE_CHECKING:
    from ..protection.domain import ProtectionDomain
    from ..protection.manager import ProtectionManager
    from ..store.vdisk import VDisk

T = TypeVar("T")


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


def take_group(mgr: ProtectionManager, vdisks: Sequence[VDisk], name: str | None,
               pd: str | None) -> LWS:
    """`Cluster.lws_group`: an LWS of `vdisks` or of protection domain `pd`'s vDisks,
    attributed to a PD as the module docstring says. Raises as `take`, and NotFound (PD)."""
    cluster = mgr.cluster
    if pd is not None:
        if vdisks:
            raise InvalidArgument("lws_group takes vdisks or pd, not both")
        domain = get_protection_domain(mgr, pd)
    else:
        domain = _protecting(mgr, [vd.name for vd in vdisks])
    if domain is not None:
        vdisks = [cluster.vdisk(n) for n in domain.vdisk_names()]
    members = [cluster.vdisk(vd.name) for vd in vdisks]
    return take(cluster._ctx, members, name, pd_id=domain.id if domain else 0)[0]


def _protecting(mgr: ProtectionManager, names: list[str]) -> ProtectionDomain | None:
    """The PD active here that protects every vDisk of `names` (None: there is no one such
    PD, or a name repeats, which `take` reports)."""
    if not names or len(set(names)) != len(names):
        return None
    for domain in list_protection_domains(mgr):
        if domain.state == ACTIVE and set(names) <= set(domain.vdisk_names()):
            return domain
    return None


def rows(ctx: ClusterContext, pd_id: int, after_seq: int = 0) -> list[LWSRow]:
    """The LWS rows of PD `pd_id` with seq > after_seq, oldest first."""
    found = ctx.catalog.rows(LWSRow, "pd_id = ? AND seq > ?", (pd_id, after_seq))
    return sorted(found, key=lambda r: r.seq)


def members(row: LWSRow) -> dict[str, tuple[int, int, int]]:
    """{vDisk name: (vdisk id, size, head layer)} of an LWS row."""
    return {k: tuple(v) for k, v in json.loads(row.members).items()}  # type: ignore[misc]


def forget(ctx: ClusterContext, pd_id: int, upto_seq: int) -> int:
    """Delete the PD's LWS rows with seq <= upto_seq (every remote holds them); return how many."""
    doomed = ctx.catalog.rows(LWSRow, "pd_id = ? AND seq <= ?", (pd_id, upto_seq))
    if doomed:
        with ctx.catalog.transaction():
            for row in doomed:
                ctx.catalog.delete(LWSRow, row.id)
    return len(doomed)
