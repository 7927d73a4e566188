"""The lock hierarchy of an open cluster, and its debug-mode check.

Every lock the engine (and the protection layer above it) takes has a level.
A thread may take a lock only while every lock it already holds has a lower
level: no two threads can then wait for each other. Outer to inner:

    PROTECTION         ProtectionManager.lock (VM, PD, schedule and failover state)
    REGISTRY           Engine._registry_lock: changes of the vDisk namespace
                       (create, clone, replica creation, delete, promote)
    VDISK              VDisk._lock; several at once only in ascending vDisk id
                       (vdisk.lock_group: snapshot groups, LWS)
    MAP                ClusterContext.map_lock: block maps, the layer tree, ingest
                       into the extent store, and the set of vDisks (below)
    CATALOG            Catalog._lock, held for a whole transaction()
    OPLOG_RELEASE      OpLog._release_lock (segment deletion)
    OPLOG              OpLog._lock / its condition (appends, group commit)
    EXTENT_STORE       ExtentStore._lock
    MAP_STORE          MapStore._lock
    FINGERPRINT_INDEX  the native index's lock (taken under EXTENT_STORE)

Re-taking a reentrant lock one already holds is always allowed. The levels
below CATALOG are leaves: the OpLog, extent store and map store never call out
while holding their lock, so they do not nest among themselves (except the two
pairs listed in order above). Consequences for callers:

* The vDisk registry (`Engine._vdisks`) is replaced, never mutated, and only
  while holding REGISTRY and MAP; readers take a reference without a lock. So
  code holding MAP (prune, gc) sees the vDisks and the layer tree in one state
  and never needs REGISTRY.
* `Engine.close`, `Engine._throttle` and `Drainer.stop` wait for the drain
  thread while holding no lock; the drain thread takes locks like any caller.
* Callbacks (`ctx.prune`, `ctx.release_floor`, `ctx.gc_roots`, OpLog
  `on_pressure`) are called with at most the locks their contract names.
* OpLog `before_sync` (ExtentStore.sync: a MAP record's extents are durable
  before the record) runs outside the OpLog lock in a group commit, but under it
  at rotation: OPLOG before EXTENT_STORE, never the other way round.

The check: with NXSTORE_DEBUG_LOCKS=1 in the environment, or after `enable()`
(the test suite calls it), a lock made by `ordered_lock` records the locks each
thread holds and raises LockOrderError (and remembers the violation, see
`violations`) when one is taken out of order, before it could block. Otherwise
`ordered_lock` returns a plain threading lock: no cost in production. Checked
locks are Python code, so a KeyboardInterrupt landing inside one can leave it
taken: they are for test and debug runs, not for processes that are meant to
survive Ctrl-C.
"""

from __future__ import annotations

import os
import threading
import traceback
from enum import IntEnum
from typing import Any, Protocol

ENV_VAR = "NXSTORE_DEBUG_LOCKS"


class Level(IntEnum):
    """Lock levels, outer (taken first) to inner; see the module docstring."""

    PROTECTION = 10
    REGISTRY = 20
    VDISK = 30
    MAP = 40
    CATALOG = 50
    OPLOG_RELEASE = 60
    OPLOG = 61
    EXTENT_STORE = 62
    MAP_STORE = 63
    FINGERPRINT_INDEX = 70


class LockOrderError(AssertionError):
    """A lock was taken against the hierarchy (debug mode only): a potential deadlock."""


class OrderedLock(Protocol):
    """What the engine uses of a lock (threading.Lock, RLock and CheckedLock all fit)."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> Any: ...


_enabled = False


def enable(on: bool = True) -> None:
    """Check the locks made from now on in this process, whatever the environment
    says (child processes are not affected)."""
    global _enabled
    _enabled = on


def checking() -> bool:
    """Whether locks made now are checked: `enable()`d, or NXSTORE_DEBUG_LOCKS set and not 0."""
    return _enabled or os.environ.get(ENV_VAR, "") not in ("", "0")


def ordered_lock(level: Level, name: str, *, rank: int = 0, reentrant: bool = False) -> Any:
    """A lock at `level` of the hierarchy: a plain threading.Lock/RLock, or a
    CheckedLock when `checking()`. Locks of one level are taken in ascending
    `rank` (the vDisk id for VDISK)."""
    if not checking():
        return threading.RLock() if reentrant else threading.Lock()
    return CheckedLock(level, name, rank, reentrant)


_violations: list[str] = []
_local = threading.local()


def violations() -> list[str]:
    """Messages (with the offending stack) of every violation seen in this process."""
    return list(_violations)


def clear_violations() -> None:
    _violations.clear()


def _held() -> list[CheckedLock]:
    stack = getattr(_local, "held", None)
    if stack is None:
        stack = _local.held = []
    return stack


class CheckedLock:
    """A lock that enforces the hierarchy for the thread taking it. Works as the
    lock of a threading.Condition (it has the hooks Condition looks for)."""

    def __init__(self, level: Level, name: str, rank: int, reentrant: bool) -> None:
        self.level = level
        self.name = name
        self.key = (int(level), rank)
        self._reentrant = reentrant
        self._inner = threading.Lock()
        self._owner: int | None = None
        self._count = 0

    def __repr__(self) -> str:
        return f"<{self.name} ({self.level.name})>"

    def _check_order(self) -> None:
        for other in _held():
            if other.key >= self.key:
                text = (f"lock order violated: taking {self!r} while holding {other!r} "
                        f"(thread {threading.current_thread().name})\n"
                        + "".join(traceback.format_stack(limit=12)))
                _violations.append(text)
                raise LockOrderError(text)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        if self._owner == me:
            if self._reentrant:
                self._count += 1
                return True
            if not blocking:
                return False
            raise LockOrderError(f"{self!r} taken twice by one thread (not reentrant)")
        if blocking:  # a try-lock cannot deadlock
            self._check_order()
        if not self._inner.acquire(blocking, timeout):
            return False
        self._owner, self._count = me, 1
        _held().append(self)
        return True

    def release(self) -> None:
        if self._owner != threading.get_ident():
            raise RuntimeError(f"{self!r} released by a thread that does not hold it")
        self._count -= 1
        if not self._count:
            self._drop()

    def _drop(self) -> None:
        self._owner = None
        held = _held()
        for i in range(len(held) - 1, -1, -1):
            if held[i] is self:
                del held[i]
                break
        self._inner.release()

    def locked(self) -> bool:
        return self._inner.locked()

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- threading.Condition hooks: wait() releases the lock fully, then retakes it
    def _is_owned(self) -> bool:
        return self._owner == threading.get_ident()

    def _release_save(self) -> int:
        count, self._count = self._count, 0
        self._drop()
        return count

    def _acquire_restore(self, count: int) -> None:
        self._check_order()
        self._inner.acquire()
        self._owner, self._count = threading.get_ident(), count
        _held().append(self)
