"""Verifying an image: re-read every allocated block of a vDisk or snapshot and check it.

Reads go through `ExtentStore.read_blocks`, which checks every record's header and the
fingerprint of its payload; a batch that fails is narrowed down (the failing extent is
noted, the rest of the batch read again) so that every damaged block is found, not just
the first. Each distinct extent of a window of the image is read once (a deduplicated
image reads its shared extents once per window) and its verdict applies to every block
that maps to it.

Also the block-fingerprint queries that replica verification and incremental import
compare against: the fingerprints the extent table holds for a range of blocks, read and
verified first on request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np

from .context import ClusterContext
from .extent_group import ExtentCorruption
from .extent_store import ExtentStore

VERIFY_WINDOW_BYTES = 64 << 20  # bytes of the image looked up (and held locked) at a time
VERIFY_READ_BYTES = 8 << 20  # bytes of extents read and verified per read_blocks call

Progress = Callable[[int, int], None]  # (bytes of the image done, bytes in all)


@dataclass(frozen=True)
class DamagedBlock:
    """A block of the image whose stored extent failed verification."""

    offset: int  # byte offset of the block in the image
    extent_id: int
    problem: str  # what the extent store found (names the group file and offset)


@dataclass(frozen=True)
class VerifyResult:
    """What `verify_image` checked and found."""

    name: str  # "vDisk NAME" or "snapshot VDISK@SNAP"
    size: int  # bytes of the image
    blocks_checked: int  # allocated blocks read and verified
    bytes_checked: int  # their bytes (the last block clipped to the size)
    damaged: tuple[DamagedBlock, ...]  # every damaged block, by offset
    seconds: float

    @property
    def clean(self) -> bool:
        return not self.damaged


@dataclass(frozen=True)
class RangeFingerprints:
    """Fingerprints of blocks first .. first + count - 1 of an image (`block_fingerprints`)."""

    first: int
    ids: np.ndarray  # uint64 (count,): extent ids, 0 = unallocated (reads as zeros)
    # uint8 (count, 16): each block's content fingerprint as the extent table holds it (the
    # zero block's where unallocated, so a written zero block and a hole compare equal)
    fps: np.ndarray
    damaged: dict[int, str]  # {block index: problem} of blocks that failed a verified read


def damaged_extents(store: ExtentStore, ids: np.ndarray,
                    read_bytes: int = VERIFY_READ_BYTES) -> dict[int, str]:
    """Read and verify each distinct nonzero extent of `ids`; {extent id: problem} of every
    one that fails (bad header, payload, fingerprint, or missing from the store)."""
    uniq = np.unique(np.asarray(ids, np.uint64))
    uniq = uniq[uniq != 0]
    bs = store.block_size
    per = max(1, read_bytes // bs)
    buf = np.empty(min(per, max(1, uniq.size)) * bs, np.uint8)
    bad: dict[int, str] = {}
    for lo in range(0, uniq.size, per):
        part = uniq[lo : lo + per]
        while part.size:
            try:
                store.read_blocks(part, buf[: part.size * bs])
                break
            except ExtentCorruption as exc:
                i = exc.batch_index
                if i is None or not 0 <= i < part.size or int(part[i]) != exc.extent_id:
                    bad.update(_one_by_one(store, part, buf[:bs]))
                    break
                bad[exc.extent_id] = str(exc)
                part = part[i + 1 :]
    return bad


def _one_by_one(store: ExtentStore, ids: np.ndarray, out: np.ndarray) -> dict[int, str]:
    """The slow path when a failure cannot be placed in its batch."""
    bad = {}
    for eid in ids.tolist():
        try:
            store.read_blocks(np.array([eid], np.uint64), out)
        except ExtentCorruption as exc:
            bad[eid] = str(exc)
    return bad


def _windows(size: int, block_size: int, window: int) -> Iterator[tuple[int, int]]:
    nblocks = -(-size // block_size)
    for first in range(0, nblocks, window):
        yield first, min(window, nblocks - first)


def verify_image(ctx: ClusterContext, top_layer: int, name: str, size: int, *,
                 progress: Progress | None = None,
                 lock: Callable[[], AbstractContextManager[object]] = nullcontext,
                 window_bytes: int = VERIFY_WINDOW_BYTES) -> VerifyResult:
    """Read and verify every allocated block of the image seen from `top_layer` (`size`
    bytes, called `name` in the result). `lock()` is held around each window's map lookup
    and reads (a live vDisk's lock: no write replaces a block between the two). Reports
    progress after each window. Raises what reading raises other than damage (OSError,
    ClosedError); damage is in the result."""
    started = time.perf_counter()
    bs = ctx.block_size
    checked = 0
    damaged: list[DamagedBlock] = []
    for first, count in _windows(size, bs, max(1, window_bytes // bs)):
        with lock():
            with ctx.map_lock:
                ids = ctx.tree.lookup_range(top_layer, first, count)
            bad = damaged_extents(ctx.store, ids)
        allocated = np.flatnonzero(ids)
        checked += int(allocated.size)
        if bad:
            hit = np.flatnonzero(np.isin(ids, np.fromiter(bad, np.uint64, len(bad))))
            damaged += [DamagedBlock((first + int(i)) * bs, int(ids[i]), bad[int(ids[i])])
                        for i in hit.tolist()]
        if progress is not None:
            progress(min((first + count) * bs, size), size)
    nbytes = checked * bs
    nblocks = -(-size // bs)
    if size % bs and checked:  # the last block is clipped to the size when it is allocated
        with ctx.map_lock:
            last = ctx.tree.lookup_range(top_layer, nblocks - 1, 1)
        if last[0]:
            nbytes -= nblocks * bs - size
    return VerifyResult(name, size, checked, nbytes, tuple(damaged),
                        time.perf_counter() - started)


def block_fingerprints(ctx: ClusterContext, top_layer: int, first: int, count: int, *,
                       reread: bool = False) -> RangeFingerprints:
    """Extent ids and fingerprints of blocks first .. first + count - 1 of the image seen
    from `top_layer` (the caller checked the range and holds what keeps the map still, a
    live vDisk's lock). No data is read unless `reread`: then every allocated block is read
    and verified, and those that fail are in `.damaged`. Raises ExtentCorruption for an
    extent the store lacks (without `reread`; with it that block is damaged)."""
    with ctx.map_lock:
        ids = ctx.tree.lookup_range(top_layer, first, count)
    damaged: dict[int, str] = {}
    present = ids
    if reread:
        bad = damaged_extents(ctx.store, ids)
        if bad:
            hit = np.isin(ids, np.fromiter(bad, np.uint64, len(bad)))
            damaged = {int(i): bad[int(ids[i])] for i in np.flatnonzero(hit).tolist()}
            present = np.where(hit, np.uint64(0), ids)
    return RangeFingerprints(first, ids, ctx.store.fingerprints(present), damaged)
