"""One run of a NearSync schedule (called by nxstore.protection.schedule for a schedule whose
interval is at most `NearSyncConfig.max_interval`).

Per run: if any remote is in `nearsync`, ONE marker is taken over every vDisk of the PD (all
its consistency groups at one point) — together with a PD snapshot when `compose_every` has
passed since the last one, which the remotes then compose instead of receiving it. Then each
remote advances its state (nxstore.nearsync.state): `nearsync` ships every LWS it lacks,
`seeding`/`fallback` replicate PD snapshots until one gets through in time and the chain
(re)starts on a seed snapshot taken atomically with a marker. LWS rows every live chain holds
are forgotten; PD snapshots follow the schedule's local and remote retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

from ..constants import NEARSYNC_MIN_INTERVAL_S
from ..errors import NotFound, NxError
from ..protection.domain import ACTIVE, INACTIVE
from ..protection.rows import PDReplicationRow, PDScheduleRow
from ..replication import sites as site_rows
from ..store.lws import LWS, LWSRow
from ..store.lws import take as take_lws
from . import lws, shipping, state
from .episode import EpisodeGone

if TYPE_CHECKING:
    from ..protection.domain import ProtectionDomain
    from ..protection.manager import ProtectionManager
    from ..protection.pdsnapshot import PDSnapshot
    from ..protection.schedule import ScheduleRun
    from ..replication.source import Session
    from .rows import NearSyncRow

log = logging.getLogger(__name__)


def is_nearsync(pd: ProtectionDomain, row: PDScheduleRow) -> bool:
    """Does this schedule run in NearSync mode (interval at or below the threshold, remotes)?"""
    return row.every <= state.config(pd._mgr.cluster).max_interval and bool(
        json.loads(row.keep_remote))


def nearsync_interval(pd: ProtectionDomain, seconds: float) -> bool:
    """May a schedule run every `seconds` (whole seconds, within the NearSync range)?"""
    limit = state.config(pd._mgr.cluster).max_interval
    return NEARSYNC_MIN_INTERVAL_S <= seconds <= limit and seconds == int(seconds)


def run(pd: ProtectionDomain, row: PDScheduleRow, now: float, due: float,
        missed: int) -> ScheduleRun:
    """Run one due NearSync schedule (see module docstring); never raises for one site."""
    from ..protection.schedule import ScheduleRun, prune_remote_copies, retain_local

    mgr = pd._mgr
    ctx = mgr.cluster._ctx
    sites = json.loads(row.keep_remote)
    rows = {site: state.ensure(ctx, pd.id, site, now) for site in sites}
    errors: dict[str, str] = {}
    replicated: list[str] = []
    pruned: dict[str, tuple[str, ...]] = {}
    mark: LWS | None = None
    taken: PDSnapshot | None = None  # this run's PD snapshot: composed remotely, or a seed
    try:
        if any(r.state == state.NEARSYNC for r in rows.values()):
            with mgr.lock:
                mark, taken = _mark(pd, row, now)
    except NxError as exc:
        log.error("PD %s: LWS failed: %s", pd.name, exc)
        return ScheduleRun(pd.name, row.id, due, now, missed, None, None, error=str(exc))
    for site, ns in rows.items():
        try:
            # Either way: the newest PD snapshot the site got (remote retention follows it).
            if ns.state == state.NEARSYNC:
                newest = _ship(pd, ns, now)
            else:
                newest = taken = _seed(pd, row, ns)
        except NxError as exc:
            log.error("PD %s: NearSync to %s: %s", pd.name, site, exc)
            errors[site] = str(exc)
            if pd.state == INACTIVE:  # demoted: another site owns the PD, its rows are gone
                break
            continue
        replicated.append(site)
        if newest:
            try:
                pruned[site] = prune_remote_copies(mgr, newest, site, sites[site])
            except NxError as exc:
                errors[site] = f"shipped, but remote retention failed: {exc}"
    live = [r.shipped_seq for r in state.rows_of(ctx, pd.id) if r.shipped_seq > 0]
    # Keep the newest row every chain holds: the next round checks continuity against it.
    lws.forget(ctx, pd.id, min(live) - 1 if live else ctx.oplog.last_seq)
    with mgr.lock:
        pruned_local = retain_local(pd, row, list(errors)) if pd.state == ACTIVE else ()
    return ScheduleRun(pd.name, row.id, due, now, missed, taken.name if taken else None,
                       taken.consistency if taken else None, (), tuple(replicated), errors,
                       pruned_local, pruned, lws=mark.name if mark else None)


def _mark(pd: ProtectionDomain, row: PDScheduleRow, now: float
          ) -> tuple[LWS, PDSnapshot | None]:
    """Take this run's LWS, with a PD snapshot when one is due for composing."""
    from ..protection.pdsnapshot import take_pd_snapshot

    mgr = pd._mgr
    cfg = state.config(mgr.cluster)
    vdisks = [mgr.vdisk(n) for n in pd.vdisk_names()]
    mine = [s for s in pd.snapshots() if s.schedule_id == row.id]
    if mine and now - mine[-1].created_at < cfg.compose_every:
        return take_lws(mgr.cluster._ctx, vdisks, pd_id=pd.id)

    def snap() -> tuple[PDSnapshot, str]:
        s = take_pd_snapshot(pd, name=None, schedule_id=row.id, app_consistent=row.app_consistent)
        return s, s.name

    return take_lws(mgr.cluster._ctx, vdisks, pd_id=pd.id, with_snapshot=snap)


def _broken(pd: ProtectionDomain, prev: LWSRow | None, rows: list[LWSRow]) -> str | None:
    """Why the episodes of `rows` cannot follow `prev` (None: they can)."""
    ctx = pd._mgr.cluster._ctx
    for row in rows:
        if prev is not None:
            a, b = lws.members(prev), lws.members(row)
            if a.keys() != b.keys():
                return "the PD's vDisks changed"
            with ctx.map_lock:
                for name, (_, _, head) in b.items():
                    old = a[name][2]
                    if old != head and (head not in ctx.tree.rows or old not in ctx.tree.path(head)):
                        return f"vDisk {name} was restored or replaced"
        prev = row
    return None


def _ship(pd: ProtectionDomain, ns: NearSyncRow, now: float) -> PDSnapshot | None:
    """Ship every LWS the site lacks; fall back when that is hopeless. Returns the newest PD
    snapshot the site composed, if any. First, on the shipping connection, the ownership
    check a snapshot replication makes too (failover.confirm_owner): if the PD was
    activated elsewhere while this site was away, it demotes itself now (InUse, nothing
    shipped) instead of failing to ship until it falls back and a seeding sync tells it."""
    from ..protection import remote as pd_requests
    from ..protection.failover import confirm_owner, sync_peer
    from ..protection.ownership import Ownership

    mgr = pd._mgr
    cluster = mgr.cluster
    ctx = cluster._ctx
    cfg = state.config(cluster)
    prev = next(iter(ctx.catalog.rows(LWSRow, "pd_id = ? AND seq = ?", (pd.id, ns.shipped_seq))),
                None)
    rows = lws.rows(ctx, pd.id, ns.shipped_seq)
    why = _broken(pd, prev, rows)
    if why:
        state.move(ctx, ns, state.FALLBACK, now, why)
        raise NxError(f"NearSync chain broken: {why}")
    composed: list[PDSnapshot] = []

    def shipped(done: shipping.Shipped, chain: shipping.Chain) -> None:
        ns.shipped_seq, ns.shipped_at = chain.prev_seq, done.lws.created_at
        ns.base_snapshot, ns.base_seq = chain.base_snapshot, chain.base_seq
        state.save(ctx, ns)
        if done.lws.snapshot:
            with contextlib.suppress(NotFound):  # local retention may have deleted it since
                snap = pd.get_snapshot(done.lws.snapshot)
                _record(mgr, snap, ns.site)
                composed.append(snap)

    async def check_owner(s: Session) -> None:
        view = await pd_requests.request(s, ns.site, "status", {"pd": pd.name})
        # In a worker thread: a demotion is blocking catalogue work, and a sync opens a
        # connection of its own (source.run starts an event loop).
        await asyncio.get_running_loop().run_in_executor(
            None, confirm_owner, mgr, pd.name, ns.site, Ownership.from_json(view))

    remote = site_rows.get_site(ctx.catalog, ns.site)
    try:
        shipping.ship(cluster, remote, pd.name, rows,
                      shipping.Chain(ns.shipped_seq, ns.base_snapshot, ns.base_seq), shipped,
                      cfg.ship_timeout, check_owner)
    except EpisodeGone as exc:
        state.move(ctx, ns, state.FALLBACK, float(ctx.clock()), str(exc))
        raise
    except NxError as exc:
        if pd.state == INACTIVE:  # demoted by the check: the PD's NearSync rows are gone
            raise
        pending = lws.rows(ctx, pd.id, ns.shipped_seq)
        lag = float(ctx.clock()) - pending[0].created_at if pending else 0.0
        if lag > cfg.lag_threshold:
            state.move(ctx, ns, state.FALLBACK, float(ctx.clock()),
                       f"shipping {lag:.0f} s behind ({exc})")
        raise
    if not composed:
        return None
    # The remote records the composed PD snapshots (with their VM manifests): activating
    # there can then start from them, and an LWS after them finds its manifest.
    sync_peer(mgr, pd.name, ns.site)
    return composed[-1]


def _seed(pd: ProtectionDomain, row: PDScheduleRow, ns: NearSyncRow) -> PDSnapshot:
    """Seeding / fallback: a PD snapshot replicated as in async mode; once one takes no longer
    than the lag threshold, the seed snapshot + marker, whose replication starts the chain."""
    from ..protection.pdsnapshot import replicate_pd_snapshot, take_pd_snapshot

    mgr = pd._mgr
    ctx = mgr.cluster._ctx
    cfg = state.config(mgr.cluster)
    started = float(ctx.clock())
    with mgr.lock:
        snap = take_pd_snapshot(pd, name=None, schedule_id=row.id,
                                app_consistent=row.app_consistent)
    replicate_pd_snapshot(mgr, snap, ns.site)
    took = float(ctx.clock()) - started
    if took > cfg.lag_threshold:
        log.info("PD %s: snapshot replication to %s took %.0f s: seeding again", pd.name,
                 ns.site, took)
        return snap
    if ns.state == state.FALLBACK:
        state.move(ctx, ns, state.SEEDING, float(ctx.clock()),
                   f"snapshot {snap.name} replicated in {took:.0f} s")
    vdisks = [mgr.vdisk(n) for n in pd.vdisk_names()]

    def seed() -> tuple[PDSnapshot, str]:
        s = take_pd_snapshot(pd, name=None, schedule_id=row.id, app_consistent=row.app_consistent)
        return s, s.name

    with mgr.lock:
        mark, seed_snap = take_lws(ctx, vdisks, pd_id=pd.id, with_snapshot=seed)
    assert seed_snap is not None
    # The floor holds from the seed marker on, while the seed itself is on its way.
    ns.shipped_seq, ns.base_seq, ns.base_snapshot = mark.seq, mark.seq, seed_snap.name
    state.save(ctx, ns)
    try:
        replicate_pd_snapshot(mgr, seed_snap, ns.site)
    except NxError:
        ns.shipped_seq = 0
        state.save(ctx, ns)
        raise
    ns.shipped_at = mark.created_at
    state.move(ctx, ns, state.NEARSYNC, float(ctx.clock()),
               f"seed snapshot {seed_snap.name} replicated")
    return seed_snap


def _record(mgr: ProtectionManager, snap: PDSnapshot, site: str) -> None:
    """Record that `site` holds PD snapshot `snap` (it composes it from the episodes)."""
    with mgr.catalog.transaction():
        if not mgr.catalog.rows(PDReplicationRow, "pd_snapshot_id = ? AND site = ?",
                                (snap.id, site)):
            mgr.catalog.insert(PDReplicationRow(0, snap.id, site, mgr.now()))
