"""Availability zones: groups of paired clusters that policies and recovery plans name.

A zone is one or more clusters (sites, each one `nxstore serve`) acting as one. A cluster
is named by its site name; a location in a policy is a zone and one of its clusters
("ZONE/CLUSTER", or just ZONE when the zone has one cluster). This site belongs to the
local zone: called like this site until a peer pairs with it as a member of a named zone.

`connect_zone(zone, address, secret, cluster)` adds cluster `cluster` (default: called
like the zone, a one-cluster zone) served at `address` to zone `zone`, paired in both
directions: it is registered here as a remote site and asked (LEAP "pair") to register this
site back, at the address this site is served on and with the same secret (which the
peer's daemon checked during the handshake), and to take `zone` as its own zone. Naming the
local zone adds a fellow member of this site's zone. Each member added later also gets the
definitions that name its zone. Zones stored before zones grouped clusters (`leap_zones`,
one site per zone) are moved into `leap_zone_clusters` at first use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InUse, InvalidArgument, NotFound, NxError
from ..names import check_name
from ..protection.manager import ProtectionManager
from ..replication.sites import RemoteSite, add_site, get_site, list_sites, remove_site
from .rows import ZoneClusterRow, ZoneRow


@dataclass(frozen=True)
class Endpoint:
    """How this site is served: the HOST:PORT peers reach it at and the secret it accepts
    (set by `nxstore serve`; pairing needs it)."""

    address: str
    secret: str


@dataclass(frozen=True)
class ZoneCluster:
    """A member cluster of a zone."""

    name: str           # its site name: what locations name, its remote-site entry here
    id: str             # its cluster id
    address: str        # HOST:PORT of its `nxstore serve` ("" for this site)
    connected_at: float


@dataclass(frozen=True)
class AvailabilityZone:
    name: str
    clusters: tuple[ZoneCluster, ...]  # by name
    local: bool = False                # this site's own zone (this site is a member)

    @property
    def cluster_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clusters)


def _rows(mgr: ProtectionManager) -> list[ZoneClusterRow]:
    """Every member row (the zones of an older version moved in first)."""
    if mgr.catalog.rows(ZoneRow):
        with mgr.lock, mgr.catalog.transaction():
            for old in mgr.catalog.rows(ZoneRow):
                if not mgr.catalog.rows(ZoneClusterRow, "site = ?", (old.name,)):
                    mgr.catalog.insert(ZoneClusterRow(0, old.name, old.name, old.cluster,
                                                      old.connected_at))
                mgr.catalog.delete(ZoneRow, old.id)
    return mgr.catalog.rows(ZoneClusterRow)


def local_zone_name(mgr: ProtectionManager) -> str:
    """The name of this site's own zone (this site's name unless it joined a named zone)."""
    me = mgr.cluster.site_name
    return next((r.zone for r in _rows(mgr) if r.site == me), me)


def _all_zones(mgr: ProtectionManager) -> dict[str, AvailabilityZone]:
    me = mgr.cluster.site_name
    rows = _rows(mgr)
    local = next((r.zone for r in rows if r.site == me), me)
    grouped: dict[str, list[ZoneCluster]] = {local: [ZoneCluster(me, mgr.cluster.id, "", 0.0)]}
    for row in rows:
        if row.site == me:
            continue
        try:
            address = get_site(mgr.catalog, row.site).address
        except NotFound:
            address = ""
        grouped.setdefault(row.zone, []).append(
            ZoneCluster(row.site, row.cluster, address, row.connected_at))
    return {name: AvailabilityZone(name, tuple(sorted(members, key=lambda c: c.name)),
                                   name == local)
            for name, members in grouped.items()}


def list_zones(mgr: ProtectionManager) -> list[AvailabilityZone]:
    """The paired zones (not the local zone), by name."""
    return sorted((z for z in _all_zones(mgr).values() if not z.local), key=lambda z: z.name)


def local_zone(mgr: ProtectionManager) -> AvailabilityZone:
    """This site's own zone: this site and the fellow members paired into it."""
    return next(z for z in _all_zones(mgr).values() if z.local)


def get_zone(mgr: ProtectionManager, name: str) -> AvailabilityZone:
    """Zone `name` (paired, or the local zone); NotFound otherwise."""
    found = _all_zones(mgr).get(name)
    if found is None:
        raise NotFound(f"no availability zone {name!r} at site {mgr.cluster.site_name!r} "
                       "(pair it with connect_zone)")
    return found


def zone_sites(mgr: ProtectionManager, name: str) -> tuple[str, ...]:
    """The member clusters of zone `name` as known here (() if it is not)."""
    found = _all_zones(mgr).get(name)
    return found.cluster_names if found else ()


def split_location(item: object) -> tuple[str, str | None]:
    """(zone, cluster or None) from "ZONE", "ZONE/CLUSTER" or a (zone, cluster) pair;
    InvalidArgument otherwise."""
    if isinstance(item, str):
        zone, has_cluster, cluster = item.partition("/")
        return zone, (cluster if has_cluster else None)
    if (isinstance(item, (tuple, list)) and len(item) == 2
            and all(isinstance(x, str) for x in item)):
        return item[0], item[1]
    raise InvalidArgument(f"a location is ZONE, ZONE/CLUSTER or (zone, cluster), not {item!r}")


def resolve(mgr: ProtectionManager, zone: str, cluster: str | None) -> str:
    """The cluster (site name) location (zone, cluster) names: `cluster`, which must be a
    member of `zone`, or (None) the zone's one cluster. Raises NotFound (no such zone),
    InvalidArgument (not a member; None for a zone of several: the message lists them)."""
    names = get_zone(mgr, zone).cluster_names
    if cluster is None:
        if len(names) == 1:
            return names[0]
        raise InvalidArgument(f"zone {zone!r} has clusters {', '.join(names)}: say which one "
                              f"as {zone}/CLUSTER")
    if cluster not in names:
        raise InvalidArgument(f"cluster {cluster!r} is not a member of zone {zone!r} "
                              f"(members: {', '.join(names)})")
    return cluster


def connect_zone(mgr: ProtectionManager, name: str, address: str, secret: str,
                 local: Endpoint | None, tls_ca: str = "",
                 cluster: str | None = None) -> AvailabilityZone:
    """Add cluster `cluster` (its site name; default `name`) served at `address` (HOST:PORT)
    to zone `name`, paired in both directions and sharing `secret`; `local` says how it
    reaches this site back (module docstring). Idempotent. Raises InvalidArgument (bad name,
    address or secret, no `local`, the cluster is this site, is a member of another zone,
    is another site's name there, or is in another zone there), AuthenticationError,
    NxError (the zone cannot be reached: nothing is recorded here), AlreadyExists (a
    remote site `cluster` with another address: remove it first). Durable at both sites on
    return."""
    check_name("availability zone", name)
    site = check_name("cluster", cluster) if cluster is not None else name
    if site == mgr.cluster.site_name:
        raise InvalidArgument(f"zone {name!r} is this site" if site == name else
                              f"cluster {site!r} of zone {name!r} is this site")
    if local is None:
        raise InvalidArgument("say how the zone reaches this site: local_address=HOST:PORT of "
                              "this site's `nxstore serve` (or pair from inside it)")
    other = next((r.zone for r in _rows(mgr) if r.site == site and r.zone != name), None)
    if other is not None:
        raise InvalidArgument(f"cluster {site!r} is a member of zone {other!r}: remove it "
                              "first")
    existing = {s.name: s for s in list_sites(mgr.catalog)}
    added = False
    if site in existing:
        if existing[site].address != address:
            raise InvalidArgument(f"remote site {site!r} is registered at "
                                  f"{existing[site].address}, not {address}: remove it first")
    else:
        add_site(mgr.catalog, RemoteSite(site, address, secret, {}, {}, tls_ca))
        added = True
    from .remote import call

    try:
        out = call(mgr.cluster, site, "pair", {
            "address": local.address, "cluster": mgr.cluster.id, "zone": site,
            "member_of": name, "from_zone": local_zone_name(mgr)})
    except BaseException:
        if added:
            with contextlib.suppress(NxError):
                remove_site(mgr.catalog, site)
        raise
    record_pair(mgr, name, site, str(out["cluster"]), None, None)
    from .definitions import owe_zone

    owe_zone(mgr, name, site)
    return get_zone(mgr, name)


def join(mgr: ProtectionManager, zone: str) -> None:
    """Make `zone` this site's own zone (a peer paired with it as a member of `zone`).
    Raises InvalidArgument if this site is in another zone already: one with another name
    or other members, or one a policy or plan names."""
    me = mgr.cluster.site_name
    current = local_zone(mgr)
    if zone == current.name:
        return
    check_name("availability zone", zone)
    if current.name != me or len(current.clusters) > 1:
        raise InvalidArgument(f"site {me!r} is a member of zone {current.name!r}, not "
                              f"{zone!r}")
    used = users(mgr, me)
    if used:
        raise InvalidArgument(f"site {me!r} is zone {me!r} of {', '.join(used)}: it cannot "
                              f"join zone {zone!r}")
    with mgr.lock, mgr.catalog.transaction():
        mgr.catalog.insert(ZoneClusterRow(0, zone, me, mgr.cluster.id, mgr.now()))


def record_pair(mgr: ProtectionManager, zone: str, site: str, cluster: str,
                address: str | None, secret: str | None) -> None:
    """Record `site` as a member of `zone` (and, given an address and secret, as a remote
    site reached there when it is not one yet, or at its new address)."""
    _rows(mgr)
    with mgr.lock, mgr.catalog.transaction():
        if address is not None and secret is not None:
            sites = {s.name: s for s in list_sites(mgr.catalog)}
            if site in sites and sites[site].address != address:
                old = sites[site]
                remove_site(mgr.catalog, site)
                add_site(mgr.catalog, RemoteSite(site, address, old.secret,
                                                 old.network_mapping, old.vstore_mapping,
                                                 old.tls_ca))
            elif site not in sites:
                add_site(mgr.catalog, RemoteSite(site, address, secret, {}, {}, ""))
        rows = mgr.catalog.rows(ZoneClusterRow, "site = ?", (site,))
        if rows:
            rows[0].zone, rows[0].cluster = zone, cluster
            mgr.catalog.update(rows[0])
        else:
            mgr.catalog.insert(ZoneClusterRow(0, zone, site, cluster, mgr.now()))


def users(mgr: ProtectionManager, zone: str, cluster: str | None = None) -> list[str]:
    """The policies and plans that name `zone` (only the policies that name its cluster
    `cluster`, if given), as "policy 'x'" / "recovery plan 'y'"."""
    from .definitions import all_definitions

    return [f"{'policy' if d.kind == 'policy' else 'recovery plan'} {d.name!r}"
            for d in all_definitions(mgr) if zone in d.zones
            and (cluster is None or (d.kind == "policy" and d.cluster(zone) == cluster))]


def remove_zone(mgr: ProtectionManager, name: str, cluster: str | None = None) -> None:
    """Unpair zone `name` (every cluster of it), or only its member `cluster`, here and (best
    effort) there; the remote-site entries stay (PDs may still replicate to them). Raises
    NotFound, InvalidArgument (`cluster` is not a member or is this site; the whole local
    zone), InUse (a policy names the cluster, or a policy or plan names the zone and
    nothing of it would be left)."""
    zone = get_zone(mgr, name)
    me = mgr.cluster.site_name
    if cluster is None:
        if zone.local:
            raise InvalidArgument(f"zone {name!r} is this site's own zone: remove its other "
                                  "clusters one at a time")
        removed: Sequence[str] = zone.cluster_names
    else:
        resolve(mgr, name, cluster)
        if cluster == me:
            raise InvalidArgument(f"cluster {cluster!r} is this site")
        removed = (cluster,)
    whole = set(removed) == set(zone.cluster_names)
    used = users(mgr, name) if whole else users(mgr, name, cluster)
    if used:
        what = (f"availability zone {name!r}" if cluster is None
                else f"cluster {cluster!r} of zone {name!r}")
        raise InUse(f"{what} is used by {', '.join(used)}")
    from .remote import call

    for site in removed:
        with contextlib.suppress(NxError):
            call(mgr.cluster, site, "unpair", {})
        forget(mgr, site)


def forget(mgr: ProtectionManager, site: str) -> None:
    """Drop cluster `site` from its zone here."""
    _rows(mgr)
    with mgr.lock, mgr.catalog.transaction():
        for row in mgr.catalog.rows(ZoneClusterRow, "site = ?", (site,)):
            mgr.catalog.delete(ZoneClusterRow, row.id)


def site_up(mgr: ProtectionManager, site: str) -> str:
    """"" if cluster (remote site) `site` answers a status request, else why not."""
    from .remote import call

    try:
        call(mgr.cluster, site, "status", {})
    except NxError as exc:
        return str(exc)
    return ""


def zone_up(mgr: ProtectionManager, name: str, cluster: str | None = None) -> str:
    """"" if every other cluster of zone `name` (or just `cluster`) answers a status
    request, else why not, per cluster. Raises NotFound, InvalidArgument (not a member)."""
    zone = get_zone(mgr, name)
    sites = [resolve(mgr, name, cluster)] if cluster is not None else list(zone.cluster_names)
    down = [(s, why) for s in sites if s != mgr.cluster.site_name and (why := site_up(mgr, s))]
    if len(zone.clusters) == 1:
        return "; ".join(why for _, why in down)
    return "; ".join(f"cluster {s!r}: {why}" for s, why in down)
