"""The NearSync state of one protection domain towards one remote site, and its settings.

```
            NearSync schedule added
   (none) ─────────────────────────► seeding ──── seed snapshot + LWS marker replicated ───┐
                                       ▲  (first a plain snapshot; again while it takes      │
                                       │   longer than the lag threshold)                   ▼
            a snapshot replicated      │                                                 nearsync
            within the lag threshold   │                                            (LWS shipped
   fallback ◄──────────────────────────┘                                             every run)
       ▲                                                                                    │
       └──── shipping behind by more than the lag threshold, episodes released (OpLog ──────┘
             pressure), or the chain broken (vDisk restored, membership changed)
```

In `fallback` the schedule replicates vDisk snapshots (async mode) every run; the first one
that gets through within the lag threshold re-enters `seeding`, which at once takes the seed
snapshot atomically with a marker and, when that replicated, is `nearsync` again. Every
transition is logged (INFO, logger nxstore.nearsync.state) and appended to the row's history
(the newest NEARSYNC_HISTORY kept); the row lives in the catalogue (table `nearsync`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from ..constants import (
    NEARSYNC_COMPOSE_EVERY_S,
    NEARSYNC_HISTORY,
    NEARSYNC_LAG_THRESHOLD_S,
    NEARSYNC_MAX_INTERVAL_S,
    NEARSYNC_MIN_INTERVAL_S,
    NEARSYNC_SHIP_TIMEOUT_S,
)
from ..errors import Corruption, InvalidArgument
from ..protection.modes import ReplicationState, Transition
from ..store.catalog import SettingRow
from ..store.context import ClusterContext
from .rows import NearSyncRow

if TYPE_CHECKING:
    from ..store.engine import Engine

log = logging.getLogger(__name__)

NONE, SEEDING, NEARSYNC, FALLBACK = "none", "seeding", "nearsync", "fallback"
SETTINGS_NAME = "nearsync"  # the catalogue `settings` row holding NearSyncConfig as JSON


@dataclass(frozen=True)
class NearSyncConfig:
    """NearSync settings of a cluster (seconds; kept in the catalogue, `Cluster.configure_nearsync`).

    max_interval: a schedule this frequent or more runs in NearSync mode; lag_threshold:
    shipping further behind than this falls back; compose_every: how often the source takes a
    vDisk snapshot with a marker that remotes compose; ship_timeout: one shipping round."""

    max_interval: float = NEARSYNC_MAX_INTERVAL_S
    lag_threshold: float = NEARSYNC_LAG_THRESHOLD_S
    compose_every: float = NEARSYNC_COMPOSE_EVERY_S
    ship_timeout: float = NEARSYNC_SHIP_TIMEOUT_S

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise InvalidArgument(f"NearSync {f.name} must be a positive number of seconds, "
                                      f"not {v!r}")
        if self.max_interval < NEARSYNC_MIN_INTERVAL_S:
            raise InvalidArgument(f"NearSync max_interval must be at least "
                                  f"{NEARSYNC_MIN_INTERVAL_S:g} s")


def config(cluster: Engine) -> NearSyncConfig:
    """The cluster's settings (loaded from the catalogue once, then kept as a part of the
    engine: `Engine.attach`)."""
    cfg = cluster.part(NearSyncConfig)
    return cfg if cfg is not None else load(cluster)


def load(cluster: Engine) -> NearSyncConfig:
    """Read the settings from the catalogue (row `settings` "nearsync"; defaults for those
    never set). Raises Corruption if the row fails its checksum or holds bad values."""
    rows = cluster._ctx.catalog.rows(SettingRow, "name = ?", (SETTINGS_NAME,))
    stored = json.loads(rows[0].value) if rows else {}
    known = {f.name for f in fields(NearSyncConfig)}
    try:
        cfg = NearSyncConfig(**{k: v for k, v in stored.items() if k in known})
    except InvalidArgument as exc:
        raise Corruption(f"catalogue {cluster._ctx.catalog.path}: settings {SETTINGS_NAME!r}: "
                         f"{exc}") from exc
    cluster.attach(cfg)
    return cfg


def configure(cluster: Engine, **settings: float) -> NearSyncConfig:
    """Replace some settings; the whole set is durable in the catalogue on return and used
    by every later open (the `nxstore serve` daemon included). InvalidArgument for unknown
    names or bad values (nothing is changed then)."""
    known = {f.name for f in fields(NearSyncConfig)}
    if set(settings) - known:
        raise InvalidArgument(f"unknown NearSync settings {sorted(set(settings) - known)}")
    cfg = NearSyncConfig(**{**config(cluster).__dict__, **settings})
    cat = cluster._ctx.catalog
    value = json.dumps(cfg.__dict__, sort_keys=True)
    with cat.transaction():
        rows = cat.rows(SettingRow, "name = ?", (SETTINGS_NAME,))
        if rows:
            rows[0].value = value
            cat.update(rows[0])
        else:
            cat.insert(SettingRow(0, SETTINGS_NAME, value))
    cluster.attach(cfg)
    log.info("NearSync settings: %s", value)
    return cfg


def get(ctx: ClusterContext, pd_id: int, site: str) -> NearSyncRow | None:
    rows = ctx.catalog.rows(NearSyncRow, "pd_id = ? AND site = ?", (pd_id, site))
    return rows[0] if rows else None


def ensure(ctx: ClusterContext, pd_id: int, site: str, now: float) -> NearSyncRow:
    """The row of (PD, site), created in `seeding` (a logged transition) when missing."""
    row = get(ctx, pd_id, site)
    if row is None:
        row = NearSyncRow(0, pd_id, site, NONE, now, 0, 0.0, "", 0, "[]")
        with ctx.catalog.transaction():
            ctx.catalog.insert(row)
        move(ctx, row, SEEDING, now, "NearSync schedule")
    return row


def save(ctx: ClusterContext, row: NearSyncRow) -> None:
    with ctx.catalog.transaction():
        ctx.catalog.update(row)


def move(ctx: ClusterContext, row: NearSyncRow, new: str, now: float, reason: str) -> None:
    """Transition `row` to `new` (durable, logged, kept in the history)."""
    history = json.loads(row.history)
    history.append([now, row.state, new, reason])
    row.history = json.dumps(history[-NEARSYNC_HISTORY:])
    log.info("NearSync of PD id %d to %s: %s -> %s (%s)", row.pd_id, row.site, row.state, new,
             reason)
    row.state, row.since = new, now
    if new == FALLBACK:
        row.shipped_seq = 0  # drop the release floor: the chain is abandoned
    save(ctx, row)


def forget(ctx: ClusterContext, pd_id: int) -> None:
    """The PD stopped being owned here (demoted, migrated away): drop its NearSync and LWS
    rows, and with them the OpLog release floor they held. Durable on return; if the PD
    comes back its NearSync schedule starts over in `seeding`."""
    from ..store.lws import LWSRow

    cat = ctx.catalog
    with cat.transaction():
        for table in (NearSyncRow, LWSRow):
            for row in cat.rows(table, "pd_id = ?", (pd_id,)):
                cat.delete(table, row.id)


def report(row: NearSyncRow) -> ReplicationState:
    return ReplicationState(row.site, row.state, row.since, row.shipped_seq, row.shipped_at,
                            row.base_snapshot,
                            tuple(Transition(*h) for h in json.loads(row.history)))


def rows_of(ctx: ClusterContext, pd_id: int) -> list[NearSyncRow]:
    return ctx.catalog.rows(NearSyncRow, "pd_id = ?", (pd_id,))


def replication_states(ctx: ClusterContext, pd_id: int) -> dict[str, ReplicationState]:
    """{site: its NearSync state and transition history} of a PD (empty: never NearSync)."""
    return {row.site: report(row) for row in rows_of(ctx, pd_id)}


def shipped_at(ctx: ClusterContext, pd_id: int) -> dict[str, float]:
    """{site: source time of the newest LWS shipped there} for a PD (0: none yet)."""
    return {row.site: row.shipped_at for row in rows_of(ctx, pd_id)}

