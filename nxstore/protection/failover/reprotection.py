"""After activate, at the new owner: reprotect (replicate the PD back to the previous
owner) and failback (reprotect, then migrate the PD home)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import InvalidArgument
from ..domain import ProtectionDomain, _check_sites
from .journals import journal
from .migration import MigrateResult, migrate
from .sync import sync_peer

if TYPE_CHECKING:
    from ...replication.source import ReplicationResult


@dataclass(frozen=True)
class FailbackResult:
    pd: str
    site: str
    reprotect: ReplicationResult
    migrate: MigrateResult | None = None


def _failback_site(pd: ProtectionDomain, site: str | None) -> str:
    if site is not None:
        _check_sites(pd._mgr, [site])
        return site
    j = journal(pd._mgr, pd.id, "activate", open_only=False)
    if j is not None:
        return j.site
    raise InvalidArgument(f"protection domain {pd.name!r} was not activated here: name the site")


def reprotect(pd: ProtectionDomain, site: str | None = None) -> ReplicationResult:
    """At the owner after activate: make `site` (default: the previous owner) a replica
    site again: it is told the PD's epoch (and demotes itself if it still claims the
    PD), then a PD snapshot is taken and replicated, incremental on the newest snapshot
    both sides hold. Returns the transfer. Raises NxError if `site` is down."""
    from ..pdsnapshot import replicate_pd_snapshot, take_pd_snapshot

    mgr = pd._mgr
    site = _failback_site(pd, site)
    with mgr.lock:
        pd.require_active(f"reprotect to {site!r}")
        sync_peer(mgr, pd.name, site)
        snap = take_pd_snapshot(pd, name=None, schedule_id=0, app_consistent=False)
        return replicate_pd_snapshot(mgr, snap, site)


def failback(pd: ProtectionDomain, site: str | None = None, migrate_back: bool = True,
             power_on: bool = False) -> FailbackResult:
    """reprotect(site), then (unless migrate_back=False) migrate(site, power_on): the PD
    and its VMs go home with only the deltas since the newest common snapshot on the
    wire; the VMs are left powered off there unless `power_on`."""
    site = _failback_site(pd, site)
    result = reprotect(pd, site)
    moved = migrate(pd, site, power_on) if migrate_back else None
    return FailbackResult(pd.name, site, result, moved)
