"""Undrained vDisk blocks: the in-memory side of the OpLog.

Every write that goes through the OpLog is also applied here, block by block,
so reads see it at once and the drain can move whole blocks to the extent
store. An entry is a full block image (`None` for an all-zero block) plus the
sequence numbers of the first and last OpLog records folded into it; the first
one bounds how far the vDisk's persisted map may claim to be up to date.

Not thread-safe on its own: the owning VDisk serialises access under its lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class DirtyBlock:
    data: bytearray | None  # None: the block reads as zeros
    first_seq: int
    last_seq: int


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
        return len(self._blocks) * self.block_size

    def keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted dirty block indices, mask of those holding nonzero data)."""
        blocks = sorted(self._blocks)
        nonzero = [self._blocks[b].data is not None for b in blocks]
        return np.asarray(blocks, dtype=np.uint64), np.asarray(nonzero, dtype=bool)

    def first_seq(self) -> int | None:
        """Smallest first_seq of any entry (None when clean)."""
        if not self._blocks:
            return None
        return min(entry.first_seq for entry in self._blocks.values())

    def write(
        self, offset: int, data: memoryview, seq: int, base: Callable[[int], bytes]
    ) -> None:
        """Fold a write at byte `offset` into the blocks it touches.

        `base(block)` returns the block's current content below the OpLog; it
        is called only for blocks partially covered and not yet dirty.
        """
        bs = self.block_size
        pos = 0
        while pos < len(data):
            block, inner = divmod(offset + pos, bs)
            take = min(bs - inner, len(data) - pos)
            entry = self._blocks.get(block)
            if entry is None:
                image = bytearray(bs) if take == bs else bytearray(base(block))
                entry = self._blocks[block] = DirtyBlock(image, seq, seq)
            elif entry.data is None:
                entry.data = bytearray(bs)
            entry.data[inner : inner + take] = data[pos : pos + take]
            entry.last_seq = seq
            pos += take

    def zero(self, block: int, seq: int) -> None:
        """Mark a whole block as zeros (trim)."""
        entry = self._blocks.get(block)
        if entry is None:
            self._blocks[block] = DirtyBlock(None, seq, seq)
        else:
            entry.data, entry.last_seq = None, seq

    def discard(self, blocks: np.ndarray) -> None:
        """Forget entries superseded by a whole-block map update."""
        for block in blocks.tolist():
            self._blocks.pop(block, None)

    def clear(self) -> None:
        self._blocks.clear()

    def overlay(self, first_block: int, nblocks: int, out: np.ndarray) -> np.ndarray:
        """Copy dirty blocks of [first_block, first_block+nblocks) into `out`
        (uint8, nblocks*block_size); return the mask of blocks that were dirty."""
        bs = self.block_size
        mask = np.zeros(nblocks, dtype=bool)
        if not self._blocks:
            return mask
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
            mask[i] = True
            if entry.data is None:
                out[i * bs : (i + 1) * bs] = 0
            else:
                out[i * bs : (i + 1) * bs] = np.frombuffer(entry.data, dtype=np.uint8)
        return mask

    def take_batch(self, max_blocks: int) -> tuple[np.ndarray, list[DirtyBlock]]:
        """Up to `max_blocks` entries (sorted block indices, entries) for the drain;
        they stay in place until the drain `discard`s them."""
        blocks = sorted(self._blocks)[:max_blocks]
        return np.asarray(blocks, dtype=np.uint64), [self._blocks[b] for b in blocks]
