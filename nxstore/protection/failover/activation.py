"""Unplanned failover: activate a PD at a surviving site (from which restore point, and
how the old owner learns it: the package docstring, nxstore.protection.failover)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import AuthenticationError, InUse, NotFound, NxError
from ...replication.sites import list_sites
from .. import remote
from ..domain import INACTIVE
from ..modes import RestorePoint, find_point
from ..ownership import Ownership, ownership
from ..rows import PDSnapshotRow
from .journals import _record

if TYPE_CHECKING:
    from ..manager import ProtectionManager

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActivateResult:
    pd: str
    snapshot: str               # the PD snapshot the PD came up from
    snapshot_created_at: float  # cluster-clock seconds: writes after it were lost
    epoch: int
    vms: tuple[str, ...]
    vdisks: tuple[str, ...]
    previous_owner: str
    dropped_sites: tuple[str, ...] = ()
    lws: str = ""               # the LWS `snapshot` was composed at ("" = a replicated one)


def activate(mgr: ProtectionManager, name: str, force: bool = False,
             point: RestorePoint | str | int | None = None,
             power_on: bool = True, gone: Collection[str] = ()) -> ActivateResult:
    """Unplanned failover at this (surviving) site; see the package docstring.

    First every remote site is asked, the owner first: if one answers that it owns the
    PD (the owner is alive, or another survivor activated it already) or names a newer
    owner, activating here would make two owners, so InUse is raised unless `force`.
    A site that cannot be reached is taken as gone. `point`: the restore point to come
    up at (a RestorePoint, its name, an LWS seq; None: the newest, see the package
    docstring). `power_on`: the VMs that were on come up on (False: all stay off, for a
    recovery plan to start them by stage). `gone`: sites the caller just found unreachable
    (taken as gone without asking again: a blackholed site costs a connect timeout per
    ask). Raises NotFound (no PD metadata, no such
    point, no complete PD snapshot here), InvalidArgument (an ambiguous point), InUse
    (active here; an owner answers), AuthenticationError (a site answers but refuses the
    secret)."""
    with mgr.lock:
        mine = ownership(mgr, name)
        if not mine.exists:
            raise NotFound(f"no protection domain {name!r} at site {mgr.cluster.site_name!r}")
        if mine.state != INACTIVE:
            raise InUse(f"protection domain {name!r} is {mine.state} on this site already "
                        "(activate is for a PD owned by a site that is gone)")
        prev = mine.owner_site
        if not force:
            _check_no_owner_answers(mgr, name, mine, gone)
        from ..ownership import adopt

        mode = next(iter(mgr.modes), None)  # the one mode with restore points: NearSync
        target = (mode.choose_point(mgr, name, point) if mode is not None
                  else _choose_snapshot(mgr, name, point))
        lws = target.name if target is not None and target.kind == "lws" else ""
        snapshot = None if target is None else target.name
        if lws:
            # names free here? (checked before composing, so a refusal leaves the replicas be)
            adopt(mgr, name, snapshot=None, epoch=mine.epoch + 1, power_on=None,
                  peer_site=prev, check_only=True)
            assert mode is not None  # only a mode offers LWS points
            snapshot = mode.materialize(mgr, name, target)
        out = adopt(mgr, name, snapshot=snapshot, epoch=mine.epoch + 1,
                    power_on=None if power_on else [], peer_site=prev,
                    keep_remote_rename={mgr.cluster.site_name: prev})
        row = mgr.pd_row(name)
        snap = mgr.catalog.rows(PDSnapshotRow, "pd_id = ? AND name = ?", (row.id, out["snapshot"]))
        created = snap[0].created_at if snap else 0.0
        _record(mgr, row.id, "activate", prev, row.epoch, out["snapshot"],
                {"previous_owner": prev, "previous_cluster": mine.owner_cluster, "lws": lws})
        log.warning("PD %s activated at site %s from %s%s (epoch %d): writes at %s after it "
                    "are lost", name, mgr.cluster.site_name, out["snapshot"],
                    f" (LWS {lws})" if lws else "", row.epoch, prev)
        return ActivateResult(name, out["snapshot"], created, row.epoch, tuple(out["vms"]),
                              tuple(out["vdisks"]), prev, tuple(out["dropped_sites"]), lws)


def _choose_snapshot(mgr: ProtectionManager, pd_name: str,
                     point: RestorePoint | str | int | None) -> RestorePoint | None:
    """Where to activate without a replication mode: None (the newest complete PD
    snapshot here) or the PD snapshot `point` names. Raises NotFound, InvalidArgument."""
    if point is None:
        return None
    from ..ownership import usable_snapshots

    points = [RestorePoint("snapshot", r.name, r.created_at, 0, ())
              for r in usable_snapshots(mgr, pd_name)]
    return find_point(points, point, pd_name)


def _check_no_owner_answers(mgr: ProtectionManager, name: str, mine: Ownership,
                            gone: Collection[str] = ()) -> None:
    """InUse if a remote site answers that it owns the PD (the owner still alive, or a
    peer that activated it already) or knows a newer owner than this site does. Sites in
    `gone` are not asked."""
    others = [s.name for s in list_sites(mgr.catalog) if s.name not in gone]
    fence = "or activate with force=True to fence that site off"
    for site in sorted(others, key=lambda s: s != mine.owner_site):  # the owner first
        try:
            view = Ownership.from_json(remote.status(mgr.cluster, site, name))
        except AuthenticationError as exc:  # it answers but will not say whether it owns it
            raise AuthenticationError(f"cannot ask site {site!r} whether it owns protection "
                                      f"domain {name!r}: {exc}; fix the secret, {fence}") from exc
        except NxError as exc:
            log.warning("PD %s: site %s unreachable (%s): taken as gone", name, site, exc)
            continue
        if view.exists and view.state != INACTIVE:
            raise InUse(f"site {site!r} answers and owns protection domain {name!r} "
                        f"({view.state}, epoch {view.epoch}): activating here would make two "
                        f"owners; migrate it instead, {fence}")
        if view.exists and view.epoch > mine.epoch:
            raise InUse(f"site {site!r} answers: protection domain {name!r} moved to "
                        f"{view.owner_site!r} at epoch {view.epoch} (this site knows epoch "
                        f"{mine.epoch}); ask that site, {fence}")
