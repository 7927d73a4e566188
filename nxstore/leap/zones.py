"""Availability zones: paired sites that policies and recovery plans name.

A zone is another site (one `nxstore serve` cluster) paired with this one in both
directions: `connect_zone` registers it here as a remote site and asks it (LEAP "pair") to
register this site back, at the address this site is served on and with the same secret
(which the peer's daemon checked during the handshake). Both then list each other. A zone's
name is its site name. This site is the local zone; it needs no entry.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..errors import InUse, InvalidArgument, NotFound, NxError
from ..names import check_name
from ..protection.manager import ProtectionManager
from ..replication.sites import RemoteSite, add_site, get_site, list_sites, remove_site
from .rows import ZoneRow


@dataclass(frozen=True)
class Endpoint:
    """How this site is served: the HOST:PORT peers reach it at and the secret it accepts
    (set by `nxstore serve`; pairing needs it)."""

    address: str
    secret: str


@dataclass(frozen=True)
class AvailabilityZone:
    name: str           # the zone's site name, also its remote-site entry here
    address: str        # HOST:PORT of its `nxstore serve`
    cluster: str        # its cluster id
    connected_at: float


def _zone(mgr: ProtectionManager, row: ZoneRow) -> AvailabilityZone:
    try:
        address = get_site(mgr.catalog, row.name).address
    except NotFound:
        address = ""
    return AvailabilityZone(row.name, address, row.cluster, row.connected_at)


def list_zones(mgr: ProtectionManager) -> list[AvailabilityZone]:
    """The paired zones, by name."""
    return sorted((_zone(mgr, r) for r in mgr.catalog.rows(ZoneRow)), key=lambda z: z.name)


def get_zone(mgr: ProtectionManager, name: str) -> AvailabilityZone:
    rows = mgr.catalog.rows(ZoneRow, "name = ?", (name,))
    if not rows:
        raise NotFound(f"no availability zone {name!r} (pair it with connect_zone)")
    return _zone(mgr, rows[0])


def check_zones(mgr: ProtectionManager, names: list[str], *, local_ok: bool) -> None:
    """NotFound naming the first of `names` that is neither a paired zone nor (when
    `local_ok`) this site."""
    known = {r.name for r in mgr.catalog.rows(ZoneRow)}
    for name in names:
        if name == mgr.cluster.site_name and local_ok:
            continue
        if name not in known:
            raise NotFound(f"no availability zone {name!r} at site {mgr.cluster.site_name!r}")


def connect_zone(mgr: ProtectionManager, name: str, address: str, secret: str,
                 local: Endpoint | None, tls_ca: str = "") -> AvailabilityZone:
    """Pair with the zone served at `address` (HOST:PORT) whose site is called `name`,
    sharing `secret`, in both directions; `local` says how it reaches this site back.
    Idempotent. Raises InvalidArgument (bad name, address or secret, no `local`, `name` is
    this site or is another site's name there), AuthenticationError, NxError (the zone
    cannot be reached: nothing is recorded here), AlreadyExists (a remote site `name`
    with another address: remove it first). Durable at both sites on return."""
    check_name("availability zone", name)
    if name == mgr.cluster.site_name:
        raise InvalidArgument(f"zone {name!r} is this site")
    if local is None:
        raise InvalidArgument("say how the zone reaches this site: local_address=HOST:PORT of "
                              "this site's `nxstore serve` (or pair from inside it)")
    existing = {s.name: s for s in list_sites(mgr.catalog)}
    added = False
    if name in existing:
        if existing[name].address != address:
            raise InvalidArgument(f"remote site {name!r} is registered at "
                                  f"{existing[name].address}, not {address}: remove it first")
    else:
        add_site(mgr.catalog, RemoteSite(name, address, secret, {}, {}, tls_ca))
        added = True
    from .remote import call

    try:
        out = call(mgr.cluster, name, "pair", {"address": local.address,
                                               "cluster": mgr.cluster.id, "zone": name})
    except BaseException:
        if added:
            with contextlib.suppress(NxError):
                remove_site(mgr.catalog, name)
        raise
    record_pair(mgr, name, str(out["cluster"]), None, None)
    return get_zone(mgr, name)


def record_pair(mgr: ProtectionManager, site: str, cluster: str, address: str | None,
                secret: str | None) -> None:
    """Record `site` as a paired zone (and, given an address and secret, as a remote site
    reached there when it is not one yet, or at its new address)."""
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
        rows = mgr.catalog.rows(ZoneRow, "name = ?", (site,))
        if rows:
            rows[0].cluster = cluster
            mgr.catalog.update(rows[0])
        else:
            mgr.catalog.insert(ZoneRow(0, site, cluster, mgr.now()))


def users(mgr: ProtectionManager, zone: str) -> list[str]:
    """The policies and plans that name `zone`, as "policy 'x'" / "recovery plan 'y'"."""
    from .definitions import all_definitions

    return [f"{'policy' if d.kind == 'policy' else 'recovery plan'} {d.name!r}"
            for d in all_definitions(mgr) if zone in d.zones]


def remove_zone(mgr: ProtectionManager, name: str) -> None:
    """Unpair zone `name` here and (best effort) there; the remote-site entries stay (PDs
    may still replicate to them). Raises NotFound, InUse (a policy or plan names it)."""
    get_zone(mgr, name)
    used = users(mgr, name)
    if used:
        raise InUse(f"availability zone {name!r} is used by {', '.join(used)}")
    from .remote import call

    with contextlib.suppress(NxError):
        call(mgr.cluster, name, "unpair", {})
    forget(mgr, name)


def forget(mgr: ProtectionManager, name: str) -> None:
    with mgr.lock, mgr.catalog.transaction():
        for row in mgr.catalog.rows(ZoneRow, "name = ?", (name,)):
            mgr.catalog.delete(ZoneRow, row.id)


def zone_up(mgr: ProtectionManager, name: str) -> str:
    """"" if zone `name` answers a status request, else why not."""
    from .remote import call

    try:
        call(mgr.cluster, name, "status", {})
    except NxError as exc:
        return str(exc)
    return ""
