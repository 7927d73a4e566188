"""Undrained vDisk blocks: the in-memory side of the OpLog.

Every write that goes through the OpLog is also applied here, block by block,
so reads see it at once and the drain can move whole blocks to the extent
store. An entry is a block image (`None` for an all-zero block) plus the
sequence numbers of the first and last OpLog records folded into it; the first
one bounds how far the vDisk's persisted map may claim to be up to date.

A partial write does not read the block it lands in: the entry keeps a byte
mask of what was written, and the old bytes are merged in only when the block
is read or drained. That keeps reads off the write path.

Not thread-safe on its own: the owning VDisk serialises access under its lock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DirtyBlock:
    data: bytearray | None  # None: the block reads as zeros
    first_seq: int
    last_seq: int
    mask: np.ndarray | None = None  # bytes written so far (bool); None: the whole block


class DirtyBlocks:
    """Block index -> DirtyBlock for one vDisk."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._blocks: dict[int, DirtyBlock] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: int) -> bool:
        return block in self._blocks

    @property
    def nbytes(self) -> int:
        """RAM held, bounded above: a partial block also keeps a byte mask."""
        return len(self._blocks) * 2 * self.block_size

    def keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted dirty block indices, mask of those that may hold nonzero data)."""
        blocks = sorted(self._blocks)
        nonzero = [self._blocks[b].data is not None for b in blocks]
        return np.asarray(blocks, dtype=np.uint64), np.asarray(nonzero, dtype=bool)

    def first_seq(self) -> int | None:
        """Smallest first_seq of any entry (None when clean)."""
        if not self._blocks:
            return None
        return min(entry.first_seq for entry in self._blocks.values())

    def write(self, offset: int, data: memoryview, seq: int) -> None:
        """Fold a write at byte `offset` into the blocks it touches."""
        bs = self.block_size
        pos = 0
        while pos < len(data):
            block, inner = divmod(offset + pos, bs)
            take = min(bs - inner, len(data) - pos)
            entry = self._blocks.get(block)
            fresh = entry is None
            if fresh:
                entry = self._blocks[block] = DirtyBlock(bytearray(bs), seq, seq)
                if take < bs:
                    entry.mask = np.zeros(bs, dtype=bool)
            elif entry.data is None:
                entry.data = bytearray(bs)
            entry.data[inner : inner + take] = data[pos : pos + take]
            if entry.mask is not None:
                entry.mask[inner : inner + take] = True
                # A block's first (partial) write cannot cover it: no scan on the hot path.
                if not fresh and (take == bs or entry.mask.all()):
                    entry.mask = None
            entry.last_seq = seq
            pos += take

    def zero(self, block: int, seq: int) -> None:
        """Mark a whole block as zeros (trim)."""
        entry = self._blocks.get(block)
        if entry is None:
            self._blocks[block] = DirtyBlock(None, seq, seq)
        else:
            entry.data, entry.mask, entry.last_seq = None, None, seq

    def discard(self, blocks: np.ndarray) -> None:
        """Forget entries superseded by a whole-block map update (or drained)."""
        for block in blocks.tolist():
            self._blocks.pop(block, None)

    def clear(self) -> None:
        self._blocks.clear()

    def overlay(
        self, first_block: int, nblocks: int, out: np.ndarray
    ) -> tuple[np.ndarray | None, list[tuple[int, DirtyBlock]]]:
        """Copy whole dirty blocks of [first_block, first_block+nblocks) into `out`
        (uint8, nblocks*block_size). Returns the mask of blocks copied (None when
        nothing is dirty: no mask to build and test on the common read path), and
        the partially written entries (position, entry), which `patch` applies once
        the caller has filled those positions with the blocks' older content."""
        partial: list[tuple[int, DirtyBlock]] = []
        if not self._blocks:
            return None, partial
        bs = self.block_size
        full = np.zeros(nblocks, dtype=bool)
        if nblocks <= len(self._blocks):
            candidates = range(first_block, first_block + nblocks)
        else:
            last = first_block + nblocks
            candidates = (b for b in self._blocks if first_block <= b < last)
        for block in candidates:
            entry = self._blocks.get(block)
            if entry is None:
                continue
            i = block - first_block
            if entry.mask is not None:
                partial.append((i, entry))
                continue
            full[i] = True
            if entry.data is None:
                out[i * bs : (i + 1) * bs] = 0
            else:
                out[i * bs : (i + 1) * bs] = np.frombuffer(entry.data, dtype=np.uint8)
        return full, partial

    def mark_allocated(self, first_block: int, allocated: np.ndarray) -> None:
        """Lay the dirty blocks of [first_block, first_block+len(allocated)) over a block
        map's answer: a dirty block holding data is allocated, a dirty all-zero block (a
        trim not yet drained) is not, whatever the map below says (reads see it so too)."""
        if not self._blocks:
            return
        n = len(allocated)
        if n <= len(self._blocks):
            candidates = range(first_block, first_block + n)
        else:  # fewer dirty blocks than asked for: walk those, not the range
            candidates = (b for b in self._blocks if first_block <= b < first_block + n)
        for block in candidates:
            entry = self._blocks.get(block)
            if entry is not None:
                allocated[block - first_block] = entry.data is not None

    def patch(self, partial: list[tuple[int, DirtyBlock]], out: np.ndarray) -> None:
        """Lay the written bytes of partial entries over the older content in `out`."""
        bs = self.block_size
        for i, entry in partial:
            assert entry.data is not None and entry.mask is not None
            np.copyto(out[i * bs : (i + 1) * bs], np.frombuffer(entry.data, dtype=np.uint8),
                      where=entry.mask)

    def take_batch(self, max_blocks: int) -> tuple[np.ndarray, list[DirtyBlock]]:
        """Up to `max_blocks` entries (sorted block indices, entries) for the drain;
        they stay in place until the drain `discard`s them."""
        blocks = sorted(self._blocks)[:max_blocks]
        return np.asarray(blocks, dtype=np.uint64), [self._blocks[b] for b in blocks]
