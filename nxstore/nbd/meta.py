"""Meta contexts in the handshake: NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.

nxstore serves one context, `base:allocation` (doc/proto.md, "Metadata querying"). Queries
are matched as the spec asks of the `base:` namespace: in LIST, `base:` is a wildcard for
every base context and no query at all lists everything; in SET, only the full name selects
it and no query selects nothing. A query of an unknown namespace or an unknown `base:` leaf
is ignored, never an error; a query without a namespace (no colon) is NBD_REP_ERR_INVALID,
as is option data whose lengths do not add up.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import protocol as p

BASE_ALLOCATION_ID = 1  # the id SET hands out for base:allocation (any nonzero id would do)
LIST_ID = 0  # LIST replies carry a reserved id, zero

_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class MetaQuery:
    """The data of a LIST/SET_META_CONTEXT option."""

    export_name: str
    queries: tuple[str, ...]


def parse(data: bytes) -> MetaQuery | None:
    """The option's export name and queries; None if the data is malformed (a length that
    runs past the end, bytes left over, text that is not UTF-8, a query with no colon)."""
    try:
        pos, name = _string(data, 0)
        (count,) = _U32.unpack_from(data, pos)
        pos += 4
        queries = []
        for _ in range(count):
            pos, query = _string(data, pos)
            if ":" not in query or query.startswith(":"):
                return None  # no namespace: the spec lets a server refuse it
            queries.append(query)
    except (struct.error, ValueError):
        return None
    if pos != len(data):
        return None
    return MetaQuery(name, tuple(queries))


def selected(query: MetaQuery, *, listing: bool) -> list[str]:
    """The context names this server answers `query` with: [] or [base:allocation]."""
    if not query.queries:
        return [p.BASE_ALLOCATION] if listing else []
    wanted = {p.BASE_ALLOCATION, "base:"} if listing else {p.BASE_ALLOCATION}
    return [p.BASE_ALLOCATION] if wanted.intersection(query.queries) else []


def context_reply(option: int, context_id: int, name: str) -> bytes:
    """One NBD_REP_META_CONTEXT reply: the context's id, then its name."""
    return p.option_reply(option, p.REP_META_CONTEXT, _U32.pack(context_id) + name.encode())


def _string(data: bytes, pos: int) -> tuple[int, str]:
    """(position after, text) of a u32-length-prefixed UTF-8 string at `pos`."""
    (n,) = _U32.unpack_from(data, pos)
    end = pos + 4 + n
    if end > len(data):
        raise ValueError("string runs past the option's data")
    return end, data[pos + 4:end].decode()
