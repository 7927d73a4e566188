"""Pipelining: the sender's credit window and the receiver's batched acknowledgements.

One synchronous round trip costs 15-30 µs on loopback, more between sites, so the source
never waits for a reply before sending the next batch. Rules (docs/format.md):

- Data requests are HAVE_FINGERPRINTS, BLOCKS and MAP_ENTRIES. The sender numbers every
  request (req_id 1, 2, 3… per connection) and keeps at most `window` of them unanswered
  (READY.window, default WIRE_DEFAULT_WINDOW).
- HAVE_FINGERPRINTS is answered by its own MISSING. BLOCKS and MAP_ENTRIES are answered
  by a cumulative ACK(upto): every request with req_id <= upto is done. A failed request
  is answered by ERROR(req_id) and ends the transfer.
- The receiver processes requests in order and sends ACK after every `every` data
  requests (WIRE_ACK_EVERY, must be <= window) and before it answers any other request
  (COMMIT, PING, …). With every <= window a blocked sender always gets an ACK: no
  deadlock, no per-batch round trip.
"""

from __future__ import annotations

import asyncio

from ..constants import WIRE_ACK_EVERY, WIRE_DEFAULT_WINDOW
from ..errors import InvalidArgument
from .messages import Ack


class SendWindow:
    """Sender side: request ids and at most `window` unanswered requests.

    `await acquire()` returns the next req_id once a credit is free; `complete(req_id)`
    (a reply such as MISSING arrived), `ack(upto)` (a cumulative ACK arrived) free credits;
    `fail(exc)` makes every waiter raise `exc`; `await wait_idle()` returns when nothing is
    unanswered. Single event loop; not thread-safe.
    """

    def __init__(self, window: int = WIRE_DEFAULT_WINDOW, first_id: int = 1) -> None:
        if window < 1:
            raise InvalidArgument(f"window must be >= 1, got {window}")
        self.window = window
        self._next = first_id
        self._outstanding: set[int] = set()
        self._changed = asyncio.Event()
        self._error: BaseException | None = None

    @property
    def in_flight(self) -> int:
        return len(self._outstanding)

    async def _wait(self, ready) -> None:
        while True:
            if self._error is not None:
                raise self._error
            if ready():
                return
            self._changed.clear()
            await self._changed.wait()

    async def acquire(self) -> int:
        await self._wait(lambda: len(self._outstanding) < self.window)
        rid = self._next
        self._next += 1
        self._outstanding.add(rid)
        return rid

    def complete(self, req_id: int) -> None:
        self._outstanding.discard(req_id)
        self._changed.set()

    def ack(self, upto: int, window: int = 0) -> None:
        self._outstanding = {r for r in self._outstanding if r > upto}
        if window:
            self.window = window
        self._changed.set()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._changed.set()

    async def wait_idle(self) -> None:
        await self._wait(lambda: not self._outstanding)


class AckBatcher:
    """Receiver side: `done(req_id)` after processing a BLOCKS / MAP_ENTRIES request returns
    the ACK to send when one is due (every `every` requests), else None; `flush()` returns
    the pending ACK (or None) — call it before answering any other request."""

    def __init__(self, every: int = WIRE_ACK_EVERY) -> None:
        if every < 1:
            raise InvalidArgument(f"every must be >= 1, got {every}")
        self.every = every
        self._last = 0
        self._pending = 0

    def done(self, req_id: int) -> Ack | None:
        self._last = max(self._last, req_id)
        self._pending += 1
        return self.flush() if self._pending >= self.every else None

    def flush(self) -> Ack | None:
        if not self._pending:
            return None
        self._pending = 0
        return Ack(self._last)
