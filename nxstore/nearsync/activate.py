"""Activating a protection domain at a NearSync restore point (unplanned failover).

A remote of a NearSync PD holds, besides the vDisk snapshots replicated and composed there,
the LWS episodes shipped since the newest of them. `failover.activate` asks `choose` where
to bring the PD up: by default at the newest LWS every member holds when it is newer than
the newest complete PD snapshot here (the RPO becomes the LWS interval), else at that PD
snapshot as without NearSync; or at the restore point the operator names.

An LWS point is first made a PD snapshot here (`materialize`): every member replica gets a
vDisk snapshot `<pd>.lws-<seq>`, composed from its chain's snapshot plus the episodes up to
the marker (`compose.compose`: metadata only, one catalogue transaction per vDisk, byte-
identical to what the source held at the marker) and timed as the LWS, and the PD gets a
crash-consistent PD snapshot record of that name carrying the VM manifest of the newest PD
snapshot at or before the point. `ownership.adopt` then runs on it unchanged. Re-running
after a failure composes nothing twice.

Failback afterwards: the old owner never took a vDisk snapshot at the marker, so the
composed snapshot is not a common base. reprotect replicates incrementally on the newest
snapshot both sites hold: the chain's snapshot (the seed or the last composed snapshot, which
the old owner took itself). The blocks the episodes changed after it travel back again,
with the writes made here since the activation; nothing else does.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from ..errors import InvalidArgument, NotFound
from ..protection.modes import RestorePoint, find_point
from ..protection.rows import PDSnapshotRow
from ..replication.replica import find_replica
from .compose import compose, restore_points
from .rows import LWSEpisodeRow

if TYPE_CHECKING:
    from ..protection.manager import ProtectionManager

log = logging.getLogger(__name__)


def snapshot_name(pd_name: str, point: RestorePoint) -> str:
    """The PD snapshot an LWS point is composed into at activation."""
    return f"{pd_name}.lws-{point.seq}"


def choose(mgr: ProtectionManager, pd_name: str,
           point: RestorePoint | str | int | None) -> RestorePoint | None:
    """The restore point to activate `pd_name` at (see module docstring); None: the newest
    complete PD snapshot. `point`: a RestorePoint, a restore point's or PD snapshot's name,
    or an LWS's seq. Raises NotFound (no such point here), InvalidArgument (ambiguous name,
    an LWS that does not cover the PD's vDisks)."""
    from ..protection.ownership import usable_snapshots

    try:
        points = restore_points(mgr.cluster, pd_name)
    except NotFound:
        points = []  # not NearSync-protected here: PD snapshots only
    usable = usable_snapshots(mgr, pd_name)
    if point is None:
        newest = usable[-1].created_at if usable else float("-inf")
        newer = [p for p in points if p.kind == "lws" and p.created_at > newest
                 and _manifest_of(mgr, pd_name, p, usable) is not None]
        return newer[-1] if newer else None
    names = {p.name for p in points}
    points += [RestorePoint("snapshot", r.name, r.created_at, 0, ()) for r in usable
               if r.name not in names]
    found = find_point(points, point, pd_name)
    if found.kind == "lws" and _manifest_of(mgr, pd_name, found, usable) is None:
        raise InvalidArgument(f"LWS {found.name} does not cover the vDisks of protection domain "
                              f"{pd_name!r} as of its newest complete PD snapshot before it")
    return found


def _manifest_of(mgr: ProtectionManager, pd_name: str, point: RestorePoint,
                 usable: list[PDSnapshotRow]) -> PDSnapshotRow | None:
    """The newest complete PD snapshot at or before `point` whose member vDisks are exactly
    the ones the LWS covers (its manifest describes the VMs then), or None."""
    owner = mgr.pd_row(pd_name).owner_cluster
    for snap in reversed(usable):
        if snap.created_at > point.created_at:
            continue
        members = {m["vdisk"] for e in json.loads(snap.manifest) for m in e["members"]}
        replicas = [find_replica(mgr.cluster, owner, name) for name in members]
        if None not in replicas and {r.name for r in replicas} == set(point.vdisks):
            return snap
        return None  # membership changed after the newest snapshot before the point
    return None


def materialize(mgr: ProtectionManager, pd_name: str, point: RestorePoint) -> str:
    """Compose LWS `point` into a PD snapshot here (see module docstring) and return its
    name. Idempotent. Raises NotFound (an episode or the chain's snapshot is gone),
    InvalidArgument (the LWS does not cover the PD's vDisks)."""
    from ..protection.ownership import usable_snapshots

    cluster, cat = mgr.cluster, mgr.catalog
    manifest = _manifest_of(mgr, pd_name, point, usable_snapshots(mgr, pd_name))
    if manifest is None:
        raise InvalidArgument(f"LWS {point.name} does not cover the vDisks of protection domain "
                              f"{pd_name!r}")
    name = snapshot_name(pd_name, point)
    for vd_name in point.vdisks:
        rows = cat.rows(LWSEpisodeRow, "vdisk_id = ? AND seq = ?",
                        (cluster.vdisk(vd_name).id, point.seq))
        if not rows or compose(cluster, rows[0], name) is None:
            raise NotFound(f"{vd_name}: the episodes of LWS {point.name} are incomplete here")
    pd_id = mgr.pd_row(pd_name).id
    with cat.transaction():
        if not cat.rows(PDSnapshotRow, "pd_id = ? AND name = ?", (pd_id, name)):
            cat.insert(PDSnapshotRow(0, pd_id, name, point.created_at, 0, "crash", True,
                                     manifest.manifest, "[]"))
    log.info("PD %s: LWS %s (seq %d) composed into PD snapshot %s", pd_name, point.name,
             point.seq, name)
    return name


__all__ = ["choose", "materialize", "snapshot_name"]
