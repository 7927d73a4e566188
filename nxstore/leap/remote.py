"""Requests between availability zones (LEAP_REQUEST / LEAP_REPLY).

One request carries an `op` and a JSON body; the reply is a JSON body (errors travel as
ERROR). The sender is the authenticated peer site. Ops:

- "pair"    {address, cluster, zone, member_of, from_zone}: the sender paired with this
            site (`connect_zone`), which it calls `zone` (refused unless that is this
            site's name) as a cluster of its zone `member_of` (default `zone`): this site
            joins that zone (refused if it is in another one already), records the sender
            as a cluster of zone `from_zone` (default: the sender's site name) and as a
            remote site reached at `address` with the secret this site serves with (the
            one the sender just proved it knows). Reply {site, cluster, zone}.
- "unpair"  {}: forget the sender as a zone's cluster (its remote-site entry stays).
- "status"  {}: {site, cluster, zones}; a zone that answers is up.
- "put"     {kind, name, spec, version}: a policy or plan definition; kept if `version`
            is newer than the one held. Reply {version}: the one held afterwards.
- "drop"    {kind, name, version}: delete the definition unless a newer one is held.
- "migrate" {pds}: planned failover of a recovery plan, run at its primary zone: migrate
            each named protection domain that is active here to the sender (VMs stay off:
            the plan powers them on by stage). Reply {results: [{pd, snapshot, epoch,
            vms}]} for the PDs it moved (already moved ones are skipped).

Client side: `call(engine, zone, op, body, timeout)`. Server side: `register(protocols,
manager, endpoint)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgument, NotFound, ProtocolError
from ..protection.domain import INACTIVE, get_protection_domain
from ..replication.messages import LeapReply, LeapRequest, dump_json_object, load_json_object
from ..replication.protocols import TargetProtocols
from ..replication.requests import call_json
from . import definitions, zones

if TYPE_CHECKING:
    from ..protection.manager import ProtectionManager
    from ..store.engine import Engine

log = logging.getLogger(__name__)

OPS = ("pair", "unpair", "status", "put", "drop", "migrate")
QUICK_TIMEOUT_S = 10.0    # seconds: pairing, status, definitions
MIGRATE_TIMEOUT_S = 3600.0  # seconds: a planned failover moves every PD's last changes


def call(engine: Engine, zone: str, op: str, body: dict[str, Any],
         timeout: float = QUICK_TIMEOUT_S) -> dict[str, Any]:
    """Send one Leap request to zone (remote site) `zone`; the reply body. Raises NotFound
    (no such site), NxError (connection, timeout), AuthenticationError, the peer's error."""
    return call_json(engine, zone, LeapRequest, LeapReply, op, body, timeout)


def register(protocols: TargetProtocols, manager: Callable[[], ProtectionManager],
             endpoint: Callable[[], zones.Endpoint | None]) -> None:
    """Answer LEAP_REQUEST on the replication targets (in a thread: a planned failover's
    "migrate" ships snapshots back to the sender). `manager` returns the cluster's
    ProtectionManager, `endpoint` how this site is served (None when it is not)."""
    protocols.add_query(LeapRequest, partial(_serve, manager, endpoint), blocking=True)


def _serve(manager: Callable[[], ProtectionManager], endpoint: Callable[[], zones.Endpoint | None],
           peer_cluster: str, peer_site: str, msg: LeapRequest) -> LeapReply:
    if msg.op not in OPS:
        raise ProtocolError(f"unknown Leap request {msg.op!r} from {peer_site}")
    body = load_json_object(msg.body, "LEAP_REQUEST")
    mgr = manager()
    try:
        out = _handle(mgr, endpoint, peer_cluster, peer_site, msg.op, body)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"bad Leap {msg.op} request: {exc}") from exc
    log.info("Leap request %s from %s: %s", msg.op, peer_site, out)
    return LeapReply(dump_json_object(out), req_id=msg.req_id)


def _handle(mgr: ProtectionManager, endpoint: Callable[[], zones.Endpoint | None],
            peer_cluster: str, peer_site: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
    cluster = mgr.cluster
    if op == "pair":
        served = endpoint()
        if served is None:
            raise InvalidArgument(f"site {cluster.site_name!r} is not served here: pair zones "
                                  "through a running `nxstore serve`")
        if body["zone"] != cluster.site_name:
            raise InvalidArgument(f"the site at that address is called {cluster.site_name!r}, "
                                  f"not {body['zone']!r}")
        zones.join(mgr, str(body.get("member_of", cluster.site_name)))
        zones.record_pair(mgr, str(body.get("from_zone", peer_site)), peer_site, peer_cluster,
                          str(body["address"]), served.secret)
        return {"site": cluster.site_name, "cluster": cluster.id,
                "zone": zones.local_zone_name(mgr)}
    if op == "unpair":
        zones.forget(mgr, peer_site)
        return {}
    if op == "status":
        return {"site": cluster.site_name, "cluster": cluster.id,
                "zones": [z.name for z in zones.list_zones(mgr)]}
    if op in ("put", "drop"):
        kind, name, version = str(body["kind"]), str(body["name"]), int(body["version"])
        if kind not in definitions.KINDS:
            raise InvalidArgument(f"unknown definition kind {kind!r}")
        if op == "put":
            held = definitions.receive(mgr, kind, name, dict(body["spec"]), version)
        else:
            held = definitions.receive_drop(mgr, kind, name, version)
        return {"version": held}
    return {"results": _migrate_to(mgr, peer_site, [str(p) for p in body["pds"]])}


def _migrate_to(mgr: ProtectionManager, site: str, pds: list[str]) -> list[dict[str, Any]]:
    results = []
    for name in pds:
        try:
            pd = get_protection_domain(mgr, name)
        except NotFound:
            continue
        if pd.state == INACTIVE:
            continue  # moved already (a re-run of the plan)
        if not pd.journal() or pd.journal()[-1].status == "done":
            # After an unplanned failover the sender may still think it owns the PD: tell
            # it who does first (it demotes itself), or migrate would find two owners.
            pd.sync_ownership([site])
        res = pd.migrate(site)
        results.append({"pd": name, "snapshot": res.snapshot, "epoch": res.epoch,
                        "vms": list(res.vms)})
    return results
