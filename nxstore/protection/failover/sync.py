"""Ownership sync with peer sites: the PD metadata sent around every PD snapshot
replication (sync_peer), the ownership check of a NearSync shipping round
(confirm_owner) and sync_ownership. A peer that knows a newer owner demotes this site."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...errors import InUse, NxError
from ...replication.sites import list_sites
from .. import remote
from ..domain import INACTIVE, ProtectionDomain, _check_sites
from ..ownership import (
    Ownership,
    demote,
    outranks,
    ownership,
    schedule_records,
    snapshot_record,
)
from ..rows import PDReplicationRow, PDSnapshotRow

if TYPE_CHECKING:
    from ..manager import ProtectionManager


@dataclass(frozen=True)
class SyncResult:
    """What sync_ownership found: this site's view after it, and per site the peer's
    view (None: unreachable, with the error)."""

    state: str
    epoch: int
    owner_site: str
    demoted: bool
    peers: dict[str, Ownership | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)



def _learn(mgr: ProtectionManager, pd_name: str, site: str, view: Ownership) -> None:
    """Peer `site` answered `view`: if the owner it knows (itself or another site)
    outranks the one this site knows (ownership.outranks), demote here (or, at a
    non-owner, just learn the new owner) and raise InUse."""
    mine = ownership(mgr, pd_name)
    owner = site if view.state != INACTIVE else view.owner_site
    if (not view.exists or owner == mgr.cluster.site_name
            or not outranks(view.epoch, view.owner_cluster, mine.epoch, mine.owner_cluster)):
        return
    demote(mgr, pd_name, view.epoch, owner, view.owner_cluster,
           reason=f"site {site!r} says {owner!r} owns it at epoch {view.epoch} "
                  f"(here: epoch {mine.epoch})")
    raise InUse(f"protection domain {pd_name!r} is owned by site {owner!r} (epoch "
                f"{view.epoch}, this site knew {mine.epoch}; it was activated or moved "
                f"there): demoted here, nothing replicated")


def sync_peer(mgr: ProtectionManager, pd_name: str, site: str) -> Ownership:
    """Send the PD metadata (owner, epoch, the PD snapshots replicated to `site`, the
    schedules) to `site`; demote here (InUse) if it answers with a higher epoch.
    InUse without asking if this site does not own the PD (any more): a demoted site's
    sync would claim the new owner's epoch for itself."""
    row = mgr.pd_row(pd_name)
    if row.state == INACTIVE:
        raise InUse(f"protection domain {pd_name!r} is owned by site {row.owner_site!r} "
                    f"(epoch {row.epoch}), not by this site: nothing sent to {site!r}")
    peer = next((s for s in list_sites(mgr.catalog) if s.name == site), None)
    net, vstore = (peer.network_mapping, peer.vstore_mapping) if peer else ({}, {})
    snaps = []
    for s in mgr.catalog.rows(PDSnapshotRow, "pd_id = ? AND complete = 1", (row.id,)):
        if mgr.catalog.rows(PDReplicationRow, "pd_snapshot_id = ? AND site = ?", (s.id, site)):
            snaps.append(snapshot_record(s, net, vstore))
    body = {"pd": pd_name, "epoch": row.epoch, "owner_site": mgr.cluster.site_name,
            "snapshots": snaps, "schedules": schedule_records(mgr, row.id)}
    view = Ownership.from_json(remote.call(mgr.cluster, site, "sync", body))
    _learn(mgr, pd_name, site, view)
    return view


def confirm_owner(mgr: ProtectionManager, pd_name: str, site: str, view: Ownership) -> None:
    """The ownership check of a NearSync shipping round, given `site`'s answer to a
    status request (`view`; read-only there, so cheap at the LWS rate, and asked on the
    shipping connection). Nothing to do if `site` knows this site as the owner at this
    epoch; any other answer is settled as before a snapshot replication, by sync_peer:
    it demotes this site (InUse) if `site` knows an owner that outranks it. NxError if
    `site` cannot be reached for that sync."""
    mine = ownership(mgr, pd_name)
    if view.exists and view.state == INACTIVE and (view.epoch, view.owner_cluster) == (
            mine.epoch, mgr.cluster.id):
        return
    sync_peer(mgr, pd_name, site)


def sync_ownership(pd: ProtectionDomain, sites: list[str] | None = None) -> SyncResult:
    """Ask every configured remote site (or `sites`) who owns the PD; if one owns it at a
    higher epoch, demote here (state inactive, schedules disabled, VMs unregistered,
    vDisks kept as replicas of the owner's). If this site owns it, the peers get the
    metadata (a sync). Unreachable sites are reported, not raised."""
    mgr = pd._mgr
    targets = sites if sites is not None else [s.name for s in list_sites(mgr.catalog)]
    _check_sites(mgr, targets)
    peers: dict[str, Ownership | None] = {}
    errors: dict[str, str] = {}
    demoted = False
    for site in targets:
        try:
            view = Ownership.from_json(remote.status(mgr.cluster, site, pd.name))
            peers[site] = view
            try:
                _learn(mgr, pd.name, site, view)
            except InUse:
                demoted = True
        except NxError as exc:
            peers[site], errors[site] = None, str(exc)
    row = pd._row()
    return SyncResult(row.state, row.epoch, row.owner_site, demoted, peers, errors)

