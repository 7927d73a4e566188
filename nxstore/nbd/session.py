"""What one connection's handshake settled, which its transmission phase obeys."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Session:
    """`structured`: the client negotiated NBD_OPT_STRUCTURED_REPLY, so every reply is a
    structured one. `contexts`: meta context id -> name selected by the last
    NBD_OPT_SET_META_CONTEXT (empty: BLOCK_STATUS is refused with EINVAL)."""

    structured: bool = False
    contexts: dict[int, str] = field(default_factory=dict)
