"""Light-weight snapshots of protection domains: which LWS a PD owns, and their source rows.

The primitive (one OpLog MARKER under the members' locks + its `lws` row) is the engine's,
nxstore.store.lws; `LWS` is re-exported here (nxstore.nearsync.LWS).

An LWS belongs to a protection domain (`pd_id`) when it is taken for the PD or over vDisks
that one PD active here protects; it then covers all of that PD's vDisks (a NearSync chain
moves one point for all of them), the PD's next NearSync round ships it, and the remotes list
it among the restore points under its name. Any other LWS is ad hoc (pd_id 0): local only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import InvalidArgument
from ..protection.domain import ACTIVE, get_protection_domain, list_protection_domains
from ..store.context import ClusterContext
from ..store.lws import LWS, LWSRow, take

if TYPE_CHECKING:
    from ..protection.domain import ProtectionDomain
    from ..protection.manager import ProtectionManager
    from ..store.vdisk import VDisk

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
