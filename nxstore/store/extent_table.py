"""The extent table: extent id -> where and what, as dense numpy columns.

Row i describes extent id i (row 0 is unused: id 0 means "zero block"):
group (u32), offset in the group (u32), stored length (u32), container (u32),
flags (u8: record flags + PRESENT), fingerprint (16 bytes). 33 bytes per id.
Ids are never reused, so rows of freed extents stay (flags 0) until the table
is rebuilt; that is the price of O(1) id -> location lookups with no hashing.

The checkpoint (`EXTENT_TABLE_FILE`) is a `fileutil.write_checksummed` file,
magic b"NXEXTTAB", version EXTENT_FORMAT_VERSION; payload, little-endian:

    offset size     field
    0      4        block size (bytes)
    4      4        number of groups G
    8      8        next extent id N (rows 0..N-1 follow)
    16     8        token: random, repeated in the index file it was saved with
    24     4        next group number
    28     4        reserved (0)
    32     16*G     per group: u32 group number, u32 reserved, u64 bytes covered
    ...    16*N     fingerprints
    ...    4*N each group, offset, stored length, container (u32 columns)
    ...    N        flags
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from ..constants import EXTENT_FORMAT_VERSION, FINGERPRINT_BYTES
from ..errors import Corruption
from .fileutil import read_checksummed, write_checksummed

TABLE_MAGIC = b"NXEXTTAB"
PRESENT = 0x80  # table-only flag: the row describes a live extent
_HEAD = struct.Struct("<IIQQII")
_GROUP = np.dtype([("group", "<u4"), ("reserved", "<u4"), ("covered", "<u8")])
_U32_COLUMNS = ("group", "offset", "slen", "container")


class ExtentTable:
    """Dense columns indexed by extent id; grows by doubling. Not thread-safe
    (the ExtentStore lock guards it)."""

    def __init__(self, capacity: int = 1024) -> None:
        capacity = max(capacity, 16)
        self.group = np.zeros(capacity, np.uint32)
        self.offset = np.zeros(capacity, np.uint32)
        self.slen = np.zeros(capacity, np.uint32)
        self.container = np.zeros(capacity, np.uint32)
        self.flags = np.zeros(capacity, np.uint8)
        self.fp = np.zeros((capacity, FINGERPRINT_BYTES), np.uint8)
        self.next_id = 1  # ids 1.. are assigned in order

    def reserve(self, n: int) -> None:
        """Make rows 0..n-1 addressable."""
        cap = len(self.flags)
        if n <= cap:
            return
        new = max(n, cap * 2)
        for name in (*_U32_COLUMNS, "flags", "fp"):
            old = getattr(self, name)
            arr = np.zeros((new, *old.shape[1:]), old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    def memory_bytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in (*_U32_COLUMNS, "flags", "fp"))

    def present_ids(self) -> np.ndarray:
        return np.flatnonzero(self.flags[: self.next_id] & PRESENT).astype(np.uint64)

    def is_present(self, ids: np.ndarray) -> np.ndarray:
        """Mask: id is a live extent (0 and ids never assigned are not)."""
        ok = ids < self.next_id
        safe = np.where(ok, ids, 0).astype(np.int64)
        return ok & ((self.flags[safe] & PRESENT) != 0) & (ids != 0)

    # -- checkpoint -------------------------------------------------------------
    def save(
        self, path: str, block_size: int, groups: dict[int, int], next_group: int, token: int
    ) -> None:
        """Atomically write the checkpoint (durable on return)."""
        n = self.next_id
        garr = np.zeros(len(groups), _GROUP)
        garr["group"] = list(groups.keys())
        garr["covered"] = list(groups.values())
        head = _HEAD.pack(block_size, len(groups), n, token, next_group, 0)
        cols = [
            np.ascontiguousarray(getattr(self, c)[:n]).astype("<u4", copy=False)
            for c in _U32_COLUMNS
        ]
        parts = [head, garr.tobytes(), memoryview(self.fp[:n]).cast("B")]
        parts += [memoryview(c).cast("B") for c in cols]
        parts.append(memoryview(self.flags[:n]))
        write_checksummed(path, TABLE_MAGIC, EXTENT_FORMAT_VERSION, parts)


@dataclass
class Checkpoint:
    table: ExtentTable
    block_size: int
    groups: dict[int, int]  # group -> bytes covered
    next_group: int
    token: int


def load_checkpoint(path: str) -> Checkpoint | None:
    """The checkpoint at `path`, None if there is none.

    Raises Corruption (checksum, length or content) or FormatError (magic, version)."""
    if not os.path.exists(path):
        return None
    _, payload = read_checksummed(path, TABLE_MAGIC, EXTENT_FORMAT_VERSION)
    if len(payload) < _HEAD.size:
        raise Corruption(f"{path}: payload too short")
    block_size, ngroups, n, token, next_group, _ = _HEAD.unpack_from(payload)
    want = _HEAD.size + ngroups * _GROUP.itemsize + n * (FINGERPRINT_BYTES + 4 * 4 + 1)
    if len(payload) != want or n < 1:
        raise Corruption(f"{path}: payload is {len(payload)} bytes, expected {want}")
    pos = _HEAD.size
    garr = np.frombuffer(payload, _GROUP, ngroups, pos)
    pos += garr.nbytes
    t = ExtentTable(n)
    t.next_id = n
    t.fp[:n] = np.frombuffer(payload, np.uint8, n * FINGERPRINT_BYTES, pos).reshape(n, -1)
    pos += n * FINGERPRINT_BYTES
    for c in _U32_COLUMNS:
        getattr(t, c)[:n] = np.frombuffer(payload, "<u4", n, pos)
        pos += 4 * n
    t.flags[:n] = np.frombuffer(payload, np.uint8, n, pos)
    groups = {int(g): int(c) for g, c in zip(garr["group"], garr["covered"], strict=True)}
    bad = t.present_ids()
    bad = bad[~np.isin(t.group[bad], np.fromiter(groups, np.uint32, len(groups)))]
    if bad.size:
        raise Corruption(
            f"{path}: extent {int(bad[0])} names group {int(t.group[bad[0]])}, not listed"
        )
    return Checkpoint(t, block_size, groups, next_group, token)
