"""The protection-domain metadata protocol: PD_REQUEST / PD_REPLY over a replication session.

One request type carries an `op` and a JSON body; the reply is a JSON body
(errors travel as ERROR, like every other request). Ops:

- "status"  {"pd"} -> the peer's view of the PD: {"exists", "state", "epoch",
  "owner_site", "owner_cluster", "site", "cluster", "has_site": [site names]}.
- "sync"    {"pd", "epoch", "owner_site", "snapshots": [...], "schedules": [...]}
  sent by the owner before and after every PD snapshot replication (and by
  failback): the peer records the metadata (ownership.record_sync), demoting
  itself first if the sender outranks it, re-linking its replicas if the owner
  changed. Schedules carry their `id` and `created_at` (which names a schedule on
  every site). Reply: the peer's view afterwards; a reply naming an owner that
  outranks the sender (ownership.outranks) means the sender must demote.
- "adopt"   {"pd", "epoch", "snapshot", "power_on", "check", "rename"}: migrate
  step 5 at the destination (ownership.adopt). Reply: what was adopted.

Client side: `call(cluster, site, op, body)` opens a session to a configured
remote site (the same authenticated transport as replication) and returns the
reply body. Server side: `register(protocols, manager)` makes the replication
target answer every PD_REQUEST with `handle(manager, peer_cluster, peer_site, msg)`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import ConnectionClosed, InvalidArgument, NxError, ProtocolError
from ..replication.messages import PdReply, PdRequest, dump_json_object, load_json_object
from ..replication.protocols import TargetProtocols
from ..replication.sites import list_sites
from .ownership import adopt, ownership, record_sync

if TYPE_CHECKING:
    from ..replication.source import Session
    from ..store.engine import Engine
    from .manager import ProtectionManager

log = logging.getLogger(__name__)

OPS = ("status", "sync", "adopt")


# -- client -------------------------------------------------------------------------------------

def call(cluster: Engine, site: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send one PD request to remote site `site`; return the reply body. Raises
    NotFound (site), NxError (connection: "replication connection failed: ..."),
    AuthenticationError, and what the peer reported (prefixed "peer: ")."""
    from ..replication import source
    from ..replication.sites import get_site

    remote = get_site(cluster._ctx.catalog, site)

    async def go() -> dict[str, Any]:
        s = await source.open_session(cluster, remote)
        try:
            return await request(s, site, op, body)
        finally:
            await s.close()

    return source.run(go())  # type: ignore[return-value]


async def request(s: Session, site: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
    """One PD request on session `s`, open to `site` (and maybe carrying other traffic:
    a NearSync shipping round asks first); the reply body. Raises like `call`."""
    fut = await s.ask(lambda r: PdRequest(op, dump_json_object(body), req_id=r))
    # The session's reader hands an ERROR reply to the OTHER waiters only (it pops
    # this request's waiter first), so wait for the reader ending too.
    await asyncio.wait([fut, s._reader], return_when=asyncio.FIRST_COMPLETED)
    if not fut.done():
        raise s.peer_error or ConnectionClosed(f"site {site!r} closed the connection")
    reply = fut.result()
    if not isinstance(reply, PdReply):
        raise ProtocolError(f"expected PdReply, got {type(reply).__name__}")
    return load_json_object(reply.body, "PD_REPLY")


def status(cluster: Engine, site: str, pd_name: str) -> dict[str, Any]:
    return call(cluster, site, "status", {"pd": pd_name})


# -- server -------------------------------------------------------------------------------------

def register(protocols: TargetProtocols, manager: Callable[[], ProtectionManager]) -> None:
    """Answer PD_REQUEST on the replication targets with `handle(manager, ...)`."""
    protocols.add_query(PdRequest, partial(handle, manager))


def handle(manager: Callable[[], ProtectionManager], peer_cluster: str, peer_site: str,
           msg: PdRequest) -> PdReply:
    """Serve one PD_REQUEST from authenticated peer (peer_cluster, peer_site); `manager`
    returns the cluster's ProtectionManager (called once the request is checked, so it
    may make it on first use). Raises NxError subclasses (sent back as ERROR)."""
    body = load_json_object(msg.body, "PD_REQUEST")
    if msg.op not in OPS:
        raise ProtocolError(f"unknown PD request {msg.op!r} from {peer_site}")
    name = body.get("pd")
    if not isinstance(name, str):
        raise InvalidArgument("PD request without a protection domain name")
    mgr = manager()
    cluster = mgr.cluster
    if msg.op == "status":
        out = ownership(mgr, name).to_json()
        out.update(site=cluster.site_name, cluster=cluster.id,
                   has_site=sorted(s.name for s in list_sites(cluster.ctx.catalog)))
    elif msg.op == "sync":
        if body.get("owner_site") != peer_site:
            raise ProtocolError(f"peer {peer_site!r} syncs a PD it says {body.get('owner_site')!r} owns")
        out = record_sync(mgr, peer_cluster, body).to_json()
    else:
        try:
            out = adopt(mgr, name, snapshot=body.get("snapshot"), epoch=int(body["epoch"]),
                        power_on=body.get("power_on"), peer_site=peer_site,
                        check_only=bool(body.get("check")), keep_remote_rename=body.get("rename"))
        except NxError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"bad adopt request: {exc}") from exc
    log.info("PD request %s %s from %s: %s", msg.op, name, peer_site, out)
    return PdReply(dump_json_object(out), req_id=msg.req_id)
