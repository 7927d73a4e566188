"""One JSON request to a remote site on its own short session (the shape of METRO_REQUEST
and LEAP_REQUEST; nxstore.protection.remote's PD requests may also ride a session already
open for other traffic, so they keep their own client)."""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import NxError
from ..store.engine import Engine
from . import source
from .messages import JsonReply, JsonRequest, dump_json_object, load_json_object
from .sites import get_site


def call_json(engine: Engine, site: str, request: type[JsonRequest], reply: type[JsonReply],
              op: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send `request(op, body)` to remote site `site` on a new authenticated session and
    return the `reply` body, all within `timeout` seconds. Raises NotFound (site), NxError
    (connection, timeout: "site X did not answer ..."), AuthenticationError, and what the
    peer reported (its ERROR as the matching nxstore error)."""
    remote = get_site(engine.ctx.catalog, site)
    payload = dump_json_object(body)
    what = request.TYPE.name

    async def go() -> dict[str, Any]:
        s = await source.open_session(engine, remote)
        try:
            answer = await s.request(lambda r: request(op, payload, req_id=r), reply)
        finally:
            await s.close()
        assert isinstance(answer, reply)
        return load_json_object(answer.body, reply.TYPE.name)

    async def bounded() -> dict[str, Any]:
        try:
            return await asyncio.wait_for(go(), timeout)
        except asyncio.TimeoutError:
            raise NxError(f"site {site!r} did not answer a {what} {op!r} in {timeout:g} s"
                          ) from None

    out = source.run(bounded())
    assert isinstance(out, dict)
    return out
