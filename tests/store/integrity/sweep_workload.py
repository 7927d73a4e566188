"""The cluster the mutation sweep damages, and the truth it must read back.

    python sweep_workload.py CLUSTER_PATH clean|kill TRUTH_JSON

builds a small but representative cluster at CLUSTER_PATH (block size 4096): vDisks in
a deduplicating/compressing container and in a plain one, small OpLog writes, bypass
writes of 1 MiB and more (some unaligned), trims, drained and undrained data,
snapshots, a clone that is written to, a restore, two snapshot deletes (one folds a
frozen layer into its child, one folds into a vDisk head), a chain deep enough to be
collapsed into a shortcut, gc with compaction, and an OpLog long enough for several
segments. Then:

* `clean`: close() the cluster; every image is exact.
* `kill`: flush, then write more without flushing (an OpLog tail written after the
  last sync, a bypass write whose extents sit past the last checkpoint), write the
  truth file, print READY and wait to be SIGKILLed: catalog.db-wal, catalog.db-shm,
  the OpLog tail and extent group tails are left as a crash leaves them.

The truth file (JSON) lists every vDisk and snapshot with its size and, per block, the
XXH3-64 digests the block may have: one for acknowledged data; for a block an
unflushed write touched, the state after each op that touched it (old or new, never a
mix), and which map layers are vDisk heads. Runs in its own process because it shrinks
the OpLog segment and extent group sizes (module globals) so that a small cluster still
has older segments and sealed groups.
"""

from __future__ import annotations

import json
import random
import sys
from contextlib import contextmanager

import xxhash
from crash_child import SECTOR, write_payload

BS = 4096
MiB = 1024 * 1024
SEGMENT_BYTES = 2 * MiB      # OpLog segment size while building: an older segment
GROUP_BYTES = 1 * MiB        # extent group size while building: several sealed groups


def block_digests(image: bytes | bytearray | memoryview) -> list[str]:
    """XXH3-64 (hex) of each BS block of `image`."""
    view = memoryview(image)
    return [xxhash.xxh3_64_hexdigest(view[i : i + BS]) for i in range(0, len(view), BS)]


class Model:
    """What every vDisk and snapshot holds, kept in plain bytes next to the cluster."""

    def __init__(self) -> None:
        self.disks: dict[str, bytearray] = {}
        self.snaps: dict[tuple[str, str], bytes] = {}
        # per disk, per block: digests the block may read as (the acknowledged one first)
        self.loose: dict[str, dict[int, list[str]]] = {}
        self.acked = True

    def touch(self, disk: str, lo: int, hi: int) -> None:
        if self.acked:
            return
        img = self.disks[disk]
        for b in range(lo // BS, (hi + BS - 1) // BS):
            self.loose.setdefault(disk, {}).setdefault(b, []).append(
                xxhash.xxh3_64_hexdigest(memoryview(img)[b * BS : (b + 1) * BS]))

    def unacked(self) -> None:
        """From here on writes are not flushed: keep each touched block's old state too."""
        self.acked = False
        self.loose = {}
        self._before = {d: bytes(img) for d, img in self.disks.items()}

    def truth(self, layers: dict[int, str]) -> dict:
        images = {}
        for disk, img in self.disks.items():
            digests = [[d] for d in block_digests(img)]
            if not self.acked:
                old = block_digests(self._before[disk])
                for b, later in self.loose.get(disk, {}).items():
                    digests[b] = sorted({old[b], *later})
            images[disk] = {"size": len(img), "blocks": digests}
        for (disk, snap), img in self.snaps.items():
            images[f"{disk}@{snap}"] = {"size": len(img),
                                        "blocks": [[d] for d in block_digests(img)]}
        return {"images": images, "layers": {str(k): v for k, v in layers.items()}}


class Builder:
    """Runs the workload against a Cluster and the Model together."""

    def __init__(self, cluster, seed: int = 7) -> None:
        self.c = cluster
        self.m = Model()
        self.rng = random.Random(seed)
        self.wid = 0

    def create(self, name: str, size: int, container: str = "default") -> None:
        self.c.create_vdisk(name, size, container)
        self.m.disks[name] = bytearray(size)

    def write(self, disk: str, off: int, n: int, data: bytes | None = None) -> None:
        self.wid += 1
        data = write_payload(disk, self.wid, off, n) if data is None else data
        self.c.vdisk(disk).write(off, data)
        self.m.disks[disk][off : off + n] = data
        self.m.touch(disk, off, off + n)

    def small_writes(self, disk: str, count: int, max_sectors: int = 48) -> None:
        size = len(self.m.disks[disk])
        for _ in range(count):
            n = self.rng.randint(1, max_sectors) * SECTOR
            off = self.rng.randrange(0, size - n)  # often not sector or block aligned
            self.write(disk, off, n)

    def trim(self, disk: str, off: int, n: int) -> None:
        self.c.vdisk(disk).trim(off, n)
        self.m.disks[disk][off : off + n] = bytes(n)
        self.m.touch(disk, off, off + n)

    def snapshot(self, disk: str, name: str) -> None:
        self.c.vdisk(disk).snapshot(name)
        self.m.snaps[(disk, name)] = bytes(self.m.disks[disk])

    def clone(self, disk: str, snap: str, name: str) -> None:
        self.c.clone(self.c.snapshot(disk, snap), name)
        self.m.disks[name] = bytearray(self.m.snaps[(disk, snap)])

    def restore(self, disk: str, snap: str) -> None:
        self.c.vdisk(disk).restore(self.c.snapshot(disk, snap))
        self.m.disks[disk][:] = self.m.snaps[(disk, snap)]

    def delete_snapshot(self, disk: str, snap: str) -> None:
        self.c.snapshot(disk, snap).delete()
        del self.m.snaps[(disk, snap)]

    def flush(self) -> None:
        for disk in self.m.disks:
            self.c.vdisk(disk).flush()

    def layer_kinds(self) -> dict[int, str]:
        """Map layer id -> "head" (a vDisk's mutable head) or "frozen" (everything else
        the catalogue names: snapshot layers, unnamed parents, shortcuts)."""
        kinds = {s.layer_id: "frozen" for vd in self.c.vdisks() for s in vd.snapshots()}
        kinds.update({vd.head_layer: "head" for vd in self.c.vdisks()})
        return kinds


def build(b: Builder) -> None:
    """The workload, acknowledged up to its last flush."""
    c = b.c
    c.create_container("plain", dedup=False, compression=False)
    b.create("alpha", 4 * MiB)
    b.create("beta", 4 * MiB)
    b.create("gamma", 2 * MiB, "plain")
    b.write("alpha", 0, MiB)                          # bypass, block aligned
    b.write("alpha", 2 * MiB + 512, MiB + 256 * 1024)  # bypass with OpLog head and tail
    b.small_writes("alpha", 20)
    b.write("beta", MiB, 2 * MiB)                     # bypass (every third payload compresses)
    b.write("beta", 3 * MiB, 256 * 1024, bytes(b.m.disks["alpha"][: 256 * 1024]))  # dedup
    b.small_writes("beta", 15)
    b.small_writes("gamma", 30)
    b.write("gamma", MiB, MiB)
    b.flush()
    c.drain()
    for disk, snap in (("alpha", "a1"), ("beta", "b1"), ("gamma", "g1")):
        b.snapshot(disk, snap)
    b.small_writes("alpha", 15)
    b.trim("alpha", 64 * 1024, 64 * 1024)
    b.trim("alpha", 3 * MiB + 100, 9000)
    b.write("alpha", MiB // 2, MiB)                   # overwrites: garbage for gc
    b.flush()
    c.drain()
    b.snapshot("alpha", "a2")
    b.small_writes("alpha", 10)
    b.snapshot("alpha", "a3")
    b.small_writes("alpha", 10)
    b.snapshot("alpha", "a4")
    b.clone("beta", "b1", "beta-clone")
    b.small_writes("beta-clone", 10)
    b.write("beta-clone", 2 * MiB, MiB // 2)
    b.small_writes("beta", 8)
    b.snapshot("beta", "b2")
    b.small_writes("beta", 8)
    b.restore("beta", "b1")
    b.small_writes("beta", 6)
    b.delete_snapshot("alpha", "a2")   # a2's layer folds into a3's (a frozen base file)
    b.delete_snapshot("alpha", "a4")   # a4's layer folds into alpha's head (a head base file)
    for i in range(10):                # deeper than CHAIN_COLLAPSE_DEPTH: a shortcut
        b.small_writes("gamma", 3)
        b.snapshot("gamma", f"deep{i}")
    b.flush()
    c.drain()
    c.gc()
    # After gc's checkpoint: an acknowledged bypass write whose extents lie past the
    # checkpoint's covered length of their group and whose MAP record is only in the
    # OpLog (undrained), with a partial write on top.
    b.write("alpha", 3 * MiB, MiB)
    b.write("alpha", 3 * MiB + 8192 + 1024, 1536)
    for disk in ("alpha", "beta", "beta-clone"):  # undrained: replayed from the OpLog
        b.small_writes(disk, 6)
    b.small_writes("gamma", 420, max_sectors=16)   # ~2.5 MiB: more than one OpLog segment
    b.flush()


def unflushed(b: Builder) -> None:
    """Writes after the last flush (may survive a kill or not, block by block)."""
    b.m.unacked()
    b.small_writes("alpha", 8)
    b.write("beta", 0, MiB)                           # bypass: extents past the checkpoint
    b.small_writes("gamma", 280, max_sectors=16)     # > 1 MiB: the buffer goes to the file


@contextmanager
def small_files():
    """Shrink the OpLog segment and extent group sizes in this process."""
    from nxstore.store import extent_store
    from nxstore.store.oplog import OpLog

    defaults = OpLog.__init__.__kwdefaults__
    old = defaults["segment_bytes"], extent_store.EXTENT_GROUP_BYTES
    defaults["segment_bytes"], extent_store.EXTENT_GROUP_BYTES = SEGMENT_BYTES, GROUP_BYTES
    try:
        yield
    finally:
        defaults["segment_bytes"], extent_store.EXTENT_GROUP_BYTES = old


def main() -> None:
    path, mode, truth_path = sys.argv[1:4]
    import nxstore

    with small_files():
        c = nxstore.Cluster.create(path, block_size=BS, background=False)
        b = Builder(c)
        build(b)
        if mode == "kill":
            unflushed(b)
        truth = b.m.truth(b.layer_kinds())
        if mode == "clean":
            c.close()
        with open(truth_path, "w") as f:
            json.dump(truth, f)
    print("READY", flush=True)
    if mode == "kill":
        sys.stdin.read()  # the parent SIGKILLs us; EOF means it died first: exit


if __name__ == "__main__":
    main()
