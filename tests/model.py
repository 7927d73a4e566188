"""A deliberately simple model of a cluster's data: one bytearray per vDisk,
one frozen bytes object per snapshot. The state machines and property tests
compare every read of the engine against it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def pattern(seed: int, n: int, kind: str = "random") -> bytes:
    """Deterministic test data of `n` bytes.

    kind: "random" (incompressible, unique per seed), "text" (compressible),
    "zeros", "dup" (the same 4 KiB over and over: dedups), "byte" (one repeated byte).
    """
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(n)
    if kind == "text":
        words = [b"alpha ", b"beta ", b"gamma ", b"delta ", b"%d " % (seed % 1000)]
        out = bytearray()
        while len(out) < n:
            out += rng.choice(words)
        return bytes(out[:n])
    if kind == "zeros":
        return bytes(n)
    if kind == "dup":
        unit = random.Random(seed % 3).randbytes(4096)
        return (unit * (n // 4096 + 1))[:n]
    if kind == "byte":
        return bytes([1 + seed % 255]) * n
    raise ValueError(kind)


@dataclass
class DiskModel:
    data: bytearray

    @property
    def size(self) -> int:
        return len(self.data)

    def write(self, offset: int, payload: bytes) -> None:
        assert offset >= 0 and offset + len(payload) <= self.size
        self.data[offset : offset + len(payload)] = payload

    def trim(self, offset: int, length: int) -> None:
        assert offset >= 0 and offset + length <= self.size
        self.data[offset : offset + length] = bytes(length)

    def resize(self, new_size: int) -> None:
        assert new_size >= self.size
        self.data.extend(bytes(new_size - self.size))

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])


@dataclass
class ClusterModel:
    """vDisks by name; snapshots by (vDisk name, snapshot name) -> frozen bytes."""

    disks: dict[str, DiskModel] = field(default_factory=dict)
    snaps: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def create(self, name: str, size: int) -> None:
        assert name not in self.disks
        self.disks[name] = DiskModel(bytearray(size))

    def snapshot(self, disk: str, snap: str) -> None:
        self.snaps[(disk, snap)] = bytes(self.disks[disk].data)

    def clone(self, disk: str, snap: str, name: str) -> None:
        assert name not in self.disks
        self.disks[name] = DiskModel(bytearray(self.snaps[(disk, snap)]))

    def restore(self, disk: str, snap_key: tuple[str, str]) -> None:
        self.disks[disk] = DiskModel(bytearray(self.snaps[snap_key]))

    def delete_snapshot(self, disk: str, snap: str) -> None:
        del self.snaps[(disk, snap)]

    def delete_disk(self, name: str) -> None:
        del self.disks[name]
        for key in [k for k in self.snaps if k[0] == name]:
            del self.snaps[key]

    def snapshots_of(self, disk: str) -> list[str]:
        return sorted(s for d, s in self.snaps if d == disk)


def differing_blocks(a: bytes, b: bytes, block_size: int) -> list[int]:
    """Indices of the blocks in which `a` and `b` differ (the shorter one is zero-padded)."""
    n = max(len(a), len(b))
    a = a + bytes(n - len(a))
    b = b + bytes(n - len(b))
    return [
        i
        for i in range((n + block_size - 1) // block_size)
        if a[i * block_size : (i + 1) * block_size] != b[i * block_size : (i + 1) * block_size]
    ]


def ranges_to_blocks(ranges: list[tuple[int, int]], block_size: int) -> list[int]:
    """Expand (offset, length) ranges into block indices (asserting block granularity)."""
    out = []
    for off, length in ranges:
        assert off % block_size == 0, f"range {off},{length} does not start on a block"
        assert length > 0, f"empty range {off},{length}"
        out.extend(range(off // block_size, (off + length + block_size - 1) // block_size))
    return out
