"""Requests between the two sites of a Metro pair (METRO_REQUEST / METRO_REPLY).

One request carries an `op` and a JSON body; the reply is a JSON body (errors travel as
ERROR). Ops, all naming the pair by `pair` and the PD by `pd`:

- "setup"    {pd, pair, epoch, peer_site, witness, witness_secret, break_mode,
              break_timeout, rtt_limit}: the active site asks the peer to be (or stay) its
              standby; the peer records its MetroRow (role standby). Refused if the peer is
              active for the pair at a higher epoch. Reply: the peer's `status`.
- "status"   {pd, pair}: the peer's view {role, state, epoch, checkpoint, pd_epoch,
              cluster, site}; {"exists": false} when it has no such pair.
- "teardown" {pd, pair}: Metro is disabled: the peer drops its MetroRow (its replica
              vDisks stay, as after async replication).

Client side: `call(engine, site, op, body, timeout)` (one short authenticated session,
bounded by `timeout` seconds in all). Server side: `register(protocols, handle)` makes the
replication target answer METRO_REQUEST with `handle(peer_cluster, peer_site, op, body)`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import ProtocolError
from ..replication.messages import MetroReply, MetroRequest, dump_json_object, load_json_object
from ..replication.protocols import TargetProtocols
from ..replication.requests import call_json

if TYPE_CHECKING:
    from ..store.engine import Engine

OPS = ("setup", "status", "teardown")
Handler = Callable[[str, str, str, dict[str, Any]], dict[str, Any]]


def call(engine: Engine, site: str, op: str, body: dict[str, Any],
         timeout: float) -> dict[str, Any]:
    """Send one Metro request to remote site `site` and return the reply body, all within
    `timeout` seconds. Raises NotFound (site), NxError (connection, timeout),
    AuthenticationError, and what the peer reported."""
    return call_json(engine, site, MetroRequest, MetroReply, op, body, timeout)


def register(protocols: TargetProtocols, handle: Handler) -> None:
    """Answer METRO_REQUEST on the replication targets with `handle`."""
    protocols.add_query(MetroRequest, partial(_serve, handle))


def _serve(handle: Handler, peer_cluster: str, peer_site: str, msg: MetroRequest) -> MetroReply:
    if msg.op not in OPS:
        raise ProtocolError(f"unknown Metro request {msg.op!r} from {peer_site}")
    out = handle(peer_cluster, peer_site, msg.op, load_json_object(msg.body, "METRO_REQUEST"))
    return MetroReply(dump_json_object(out), req_id=msg.req_id)
