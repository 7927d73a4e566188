"""The active site's write gate: what a write and a flush of a Metro vDisk do in each state.

One `WriteGate` per Metro pair is installed as the write mirror (`Engine.set_mirror`) of
every vDisk of the PD at the active site. Its mode decides:

- SYNC:    writes go to the mirror link as they come (pipelined); `flush` returns once the
           standby holds every earlier write durably (the link's group-committed barrier).
- HOLD:    the switch to synchronous: writes are queued in RAM (in order, bounded) until
           `start(link)` sends them ahead of every later write; flushes wait.
- TRACK:   the standby is behind (seeding, catching up, link lost): writes are only local
           (the resync finds them as changes since the checkpoint snapshot); flushes wait.
- ALONE:   this site won a break (or was promoted) and acknowledges alone in its epoch:
           flushes return after local durability.
- FENCED:  another site holds the epoch: flushes raise MetroFenced, writes too.

A waiting flush never returns success unless its writes are durable at both sites (SYNC)
or this site may acknowledge alone (ALONE). `waiting_since()` tells the controller how long
the oldest flush has waited (its break timeout counts from there).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from ..errors import InUse, LinkDown, MetroFenced

if TYPE_CHECKING:
    from ..store.vdisk import VDisk
    from .mirror import MirrorLink

SYNC, HOLD, TRACK, ALONE, FENCED = "sync", "hold", "track", "alone", "fenced"
HOLD_MAX_BYTES = 256 << 20  # bytes queued while switching before writers wait


class WriteGate:
    """The write mirror of one Metro pair's vDisks at the active site (module docstring)."""

    def __init__(self, pd_name: str, flush_timeout: float) -> None:
        self.pd_name = pd_name
        self.flush_timeout = flush_timeout
        self._cond = threading.Condition()
        self._mode = TRACK
        self._link: MirrorLink | None = None
        self._held: deque[tuple[VDisk, int, bytes | int, bool]] = deque()
        self._held_bytes = 0
        self._waiting: dict[int, float] = {}  # flush id -> monotonic start
        self._next_waiter = 0
        self.last_sync_flush = 0.0  # wall clock of the last flush acknowledged by both
        self.fence_reason = ""
        # Something brings the standby back (the Metro thread of `nxstore serve`): without
        # it a flush that must wait for the standby fails at once instead of hanging.
        self.controlled = False

    # -- the controller's side ------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str, reason: str = "") -> None:
        """TRACK, ALONE or FENCED (SYNC and HOLD: `hold` / `start`). Wakes waiting flushes."""
        with self._cond:
            if mode == FENCED:
                self.fence_reason = reason
            if self._mode in (SYNC, HOLD) and mode not in (SYNC, HOLD):
                self._held.clear()
                self._held_bytes = 0
                self._link = None
            self._mode = mode
            self._cond.notify_all()

    def hold(self) -> None:
        """Queue every later write until `start` (call with every member's lock held)."""
        with self._cond:
            self._mode = HOLD
            self._held.clear()
            self._held_bytes = 0

    def start(self, link: MirrorLink) -> None:
        """Send the queued writes over `link`, then mirror every write there (SYNC)."""
        with self._cond:
            while self._held:
                vd, offset, item, is_trim = self._held.popleft()
                if is_trim:
                    assert isinstance(item, int)
                    link.trim(vd, offset, item)
                else:
                    assert isinstance(item, bytes)
                    link.write(vd, offset, memoryview(item))
            self._held_bytes = 0
            self._link = link
            self._mode = SYNC
            self._cond.notify_all()

    def link_failed(self, link: MirrorLink) -> None:
        """The link died: back to TRACK unless the controller moved on already."""
        with self._cond:
            if self._link is link:
                self._link = None
                self._mode = TRACK
                self._cond.notify_all()

    def waiting_since(self) -> float | None:
        """Monotonic time the oldest waiting flush started (None: none waits)."""
        with self._cond:
            return min(self._waiting.values()) if self._waiting else None

    # -- WriteMirror ----------------------------------------------------------------------
    def write(self, vd: VDisk, offset: int, data: memoryview) -> None:
        self._mirror(vd, offset, data, None)

    def trim(self, vd: VDisk, offset: int, length: int) -> None:
        self._mirror(vd, offset, None, length)

    def _mirror(self, vd: VDisk, offset: int, data: memoryview | None,
                length: int | None) -> None:
        with self._cond:
            while self._mode == HOLD and self._held_bytes > HOLD_MAX_BYTES:
                self._cond.wait(1.0)
            if self._mode == FENCED:
                raise MetroFenced(self._fenced_text())
            if self._mode == HOLD:
                item: bytes | int = bytes(data) if data is not None else int(length or 0)
                self._held.append((vd, offset, item, data is None))
                self._held_bytes += len(item) if isinstance(item, bytes) else 0
                return
            link = self._link if self._mode == SYNC else None
            if link is None:
                return
            try:
                if data is not None:
                    link.write(vd, offset, data)
                else:
                    link.trim(vd, offset, int(length or 0))
            except LinkDown:
                self._link, self._mode = None, TRACK
                self._cond.notify_all()

    def prepare_flush(self, vd: VDisk) -> None:
        with self._cond:
            link = self._link if self._mode == SYNC else None
        if link is not None:
            link.start_flush()  # the barrier travels while the local sync runs

    def flush(self, vd: VDisk) -> None:
        with self._cond:
            me = self._next_waiter
            self._next_waiter += 1
            self._waiting[me] = time.monotonic()
        try:
            while True:
                with self._cond:
                    mode, link = self._mode, self._link
                    if mode == ALONE:
                        return
                    if mode == FENCED:
                        raise MetroFenced(self._fenced_text())
                    if mode != SYNC or link is None:
                        if not self.controlled and mode == TRACK:
                            raise LinkDown(f"protection domain {self.pd_name!r}: the Metro "
                                           "standby is not in step and no Metro thread runs "
                                           "here to bring it back (run `nxstore serve`)")
                        self._cond.wait(0.5)
                        continue
                try:
                    link.flush(timeout=self.flush_timeout)
                except LinkDown:
                    self.link_failed(link)
                    continue
                self.last_sync_flush = time.time()
                return
        finally:
            with self._cond:
                self._waiting.pop(me, None)

    def check_change(self, vd: VDisk, what: str) -> None:
        raise InUse(f"{what} of vDisk {vd.name!r} is refused while protection domain "
                    f"{self.pd_name!r} has Metro enabled (disable Metro first)")

    def _fenced_text(self) -> str:
        return (f"protection domain {self.pd_name!r}: this site may not acknowledge writes "
                f"(Metro: {self.fence_reason or 'another site holds the epoch'})")
