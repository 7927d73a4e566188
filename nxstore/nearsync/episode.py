"""Episodes: a vDisk's OpLog records between two LWS markers, coalesced into block changes.

The records of one vDisk with prev_seq < seq < marker_seq are replayed, in seq order, onto a
scratch image of the blocks they touch, noting the bytes each one defined (an interval, merged
afterwards: the cost follows the records, not the bytes of the blocks). Touched blocks are
kept sorted, so a run of consecutive blocks is a run of consecutive rows: every record is
one numpy slice assignment, whatever its length (no per-block Python). What comes out:

* full blocks (every byte defined by the episode): block index + bytes, later shipped as
  whole blocks with their fingerprints (dedup over the wire, like snapshot replication);
* partial blocks: byte ranges (vDisk offset, length, bytes), each within one block, applied
  on top of the block as it was at the previous point.

A block overwritten several times inside an episode therefore ships once, with its final
bytes. MAP records (bypass writes) are read back from the extent store: gc keeps their extents
while an unshipped episode needs them (nxstore.nearsync.retention).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import NotFound
from ..store import native
from ..store.context import ClusterContext
from ..store.oplog import Record, RecordType

_U64 = np.uint64


class EpisodeGone(NotFound):
    """The OpLog no longer holds every record of an episode (released before shipping)."""


@dataclass(frozen=True)
class Episode:
    """The changes of one vDisk between two points (see module docstring)."""

    block_size: int
    indices: np.ndarray       # (n,) uint64, sorted: blocks the episode defines completely
    data: np.ndarray          # (n, block_size) uint8: their bytes
    offsets: np.ndarray       # (m,) uint64: vDisk byte offsets of partial ranges
    lengths: np.ndarray       # (m,) uint64
    range_data: np.ndarray    # (sum(lengths),) uint8: the ranges' bytes, back to back
    written: int              # bytes the records wrote or trimmed (before coalescing)

    @property
    def empty(self) -> bool:
        return not self.indices.size and not self.offsets.size

    def fingerprints(self) -> np.ndarray:
        """(n, 16) XXH3-128 of the full blocks; all-zero blocks get the zero fingerprint."""
        fps, zero = native.fingerprint_blocks(self.data, self.block_size)
        fps[zero] = 0
        return fps


def _extent(rec: Record, bs: int) -> tuple[int, int]:
    """(first block, block count) a record touches."""
    if rec.type == RecordType.MAP:
        return rec.offset, rec.length
    first = rec.offset // bs
    return first, (rec.offset + rec.length - 1) // bs - first + 1


def coalesce(ctx: ClusterContext, records: list[Record]) -> Episode:
    """Replay one vDisk's records (seq order) onto the blocks they touch; see module docstring."""
    bs = ctx.block_size
    spans = np.array([_extent(r, bs) for r in records if r.length], dtype=np.int64).reshape(-1, 2)
    blocks = np.unique(_expand(spans[:, 0], spans[:, 1])).astype(_U64)
    image = np.zeros(blocks.size * bs, dtype=np.uint8)
    defined: list[tuple[int, int]] = []  # [lo, hi) of the image each record wrote
    for rec in records:
        if not rec.length:
            continue
        first, count = _extent(rec, bs)
        row = int(np.searchsorted(blocks, first))
        if rec.type == RecordType.MAP:
            lo, hi = row * bs, (row + count) * bs
            ctx.store.read_blocks(rec.extent_ids(), image[lo:hi])
        else:
            lo = row * bs + rec.offset % bs
            hi = lo + rec.length
            if rec.type == RecordType.WRITE:
                image[lo:hi] = np.frombuffer(rec.payload, dtype=np.uint8)
            else:
                image[lo:hi] = 0
        defined.append((lo, hi))
    span = np.array(defined, dtype=np.int64).reshape(-1, 2)
    return _split(blocks, image, span[:, 0], span[:, 1], bs)


def _split(blocks: np.ndarray, image: np.ndarray, lo: np.ndarray, hi: np.ndarray,
           bs: int) -> Episode:
    """Full blocks and per-block byte ranges of a coalesced image whose defined bytes are the
    union of the intervals [lo, hi). Works on the intervals, not on a byte mask: the cost
    follows the records, not the bytes of the touched blocks."""
    if not lo.size:
        none = np.zeros(0, dtype=_U64)
        return Episode(bs, none, np.zeros((0, bs), np.uint8), none, none,
                       np.zeros(0, np.uint8), 0)
    written = int((hi - lo).sum())
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    reach = np.maximum.accumulate(hi)
    # Merge overlapping and adjacent intervals into runs of defined bytes...
    starts = np.flatnonzero(np.r_[True, lo[1:] > reach[:-1]])
    run_lo, run_hi = lo[starts], reach[np.r_[starts[1:] - 1, lo.size - 1]]
    # ...then cut them at block edges: each piece lies within one row (block) of the image.
    first = run_lo // bs
    pieces = (run_hi - 1) // bs - first + 1
    rows = _expand(first, pieces)
    piece_lo = np.maximum(rows * bs, np.repeat(run_lo, pieces))
    piece_hi = np.minimum((rows + 1) * bs, np.repeat(run_hi, pieces))
    full = piece_hi - piece_lo == bs
    data = image.reshape(-1, bs)[rows[full]]
    part_lo, part_hi, part_rows = piece_lo[~full], piece_hi[~full], rows[~full]
    offsets = blocks[part_rows] * _U64(bs) + (part_lo - part_rows * bs).astype(_U64)
    # One slice per range (at most two per record), not an index per byte.
    range_data = np.concatenate([image[:0], *(
        image[a:b] for a, b in zip(part_lo.tolist(), part_hi.tolist(), strict=True))])
    return Episode(bs, blocks[rows[full]], np.ascontiguousarray(data), offsets,
                   (part_hi - part_lo).astype(_U64), range_data, written)


def _expand(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [s, s + n) for each (s, n), as one index array."""
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return shift + np.arange(total, dtype=np.int64)


def range_positions(offsets: np.ndarray, lengths: np.ndarray, blocks: np.ndarray,
                    block_size: int) -> np.ndarray:
    """Positions, in a buffer of the sorted `blocks` back to back, of every byte of the ranges
    (each range within one block of `blocks`): where `range_data` goes when patching."""
    offs = offsets.astype(np.int64)
    rows = np.searchsorted(blocks.astype(np.int64), offs // block_size)
    return _expand(rows * block_size + offs % block_size, lengths.astype(np.int64))


def read_episodes(ctx: ClusterContext, vdisk_ids: Iterable[int], prev_seq: int,
                  marker_seq: int) -> dict[int, Episode]:
    """{vdisk id: Episode} of the records strictly between `prev_seq` and `marker_seq`, read
    in one pass over the OpLog. Raises EpisodeGone if part of the range was released."""
    wanted = {int(v): [] for v in vdisk_ids}
    if ctx.oplog.first_retained_seq > prev_seq + 1 and marker_seq > prev_seq + 1:
        raise EpisodeGone(f"OpLog records after seq {prev_seq} were released before shipping")
    it = ctx.oplog.records(prev_seq + 1, marker_seq - 1)
    try:
        for rec in it:
            bucket = wanted.get(rec.vdisk_id)
            if bucket is not None and rec.type != RecordType.MARKER:
                bucket.append(rec)
    finally:
        it.close()
    return {vid: coalesce(ctx, recs) for vid, recs in wanted.items()}
