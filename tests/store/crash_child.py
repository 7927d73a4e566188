"""The child process of the crash tests (tests/store/test_crash.py), and the op generator
both sides share.

    python crash_child.py CLUSTER_PATH SEED ROUND BACKGROUND STATE_JSON

The child opens the cluster and runs the ops `gen_ops` derives from
(SEED, ROUND, STATE) — writes (small ones through the OpLog, large aligned ones
that bypass it), trims, flushes, drains, gc, snapshots, clones, restores and
deletes — printing to stdout (flushed at once):

    OPEN                 the cluster is open (recovery done)
    BEGIN <i> <kind>     op i is about to run
    ACK <n>              ops[:n] are acknowledged: a flush() of every written vDisk returned

until the parent SIGKILLs it. Every 512-byte sector a write stores starts with a
header (magic, disk, write id, sector) followed by bytes derived from the write id,
so a torn or mixed block can never look like a valid state.
"""

from __future__ import annotations

import json
import random
import struct
import sys

BS = 4096                      # bytes: cluster block size
SECTOR = 512                   # bytes: unit of the crash writes
DISK_BLOCKS = 80               # blocks per vDisk (320 KiB: room for 256 KiB bypass writes)
DISK_SIZE = DISK_BLOCKS * BS
DISKS = ["a", "b"]
BIG = 256 * 1024               # bytes: OPLOG_BYPASS_BYTES
MAX_SNAPS = 10                 # per disk: deep enough for chain collapse (depth 8)
MAX_CLONES = 3
OPS_PER_ROUND = 400
_HDR = struct.Struct("<4sIQQ")  # magic, disk index, write id, sector


def write_payload(disk: str, wid: int, offset: int, length: int) -> bytes:
    """The bytes write `wid` stores at [offset, offset+length) of `disk`."""
    rng = random.Random(wid)
    if wid % 3 == 0:  # compressible
        body = bytearray((b"crash test %d " % wid) * (length // 12 + 1))[:length]
    else:
        body = bytearray(rng.randbytes(length))
    d = DISKS.index(disk) if disk in DISKS else 99
    for p in range(0, length, SECTOR):
        _HDR.pack_into(body, p, b"NXCT", d, wid, (offset + p) // SECTOR)
    return bytes(body)


def gen_ops(seed: int, rnd: int, state: dict) -> list[tuple]:
    """The op list of one child run. `state`: {"snaps": {disk: [names]}, "clones":
    {name: [disk, snap]}} as it stands when the child starts."""
    rng = random.Random(seed * 1000 + rnd)
    snaps = {d: list(state["snaps"].get(d, [])) for d in DISKS}
    clones = sorted(state["clones"])
    ops: list[tuple] = []
    n_snap = n_clone = 0
    for i in range(OPS_PER_ROUND):
        wid = rnd * 100_000 + i + 1
        disk = rng.choice(DISKS)
        r = rng.random()
        if r < 0.45:  # small write through the OpLog (sector aligned, often not block aligned)
            length = rng.randint(1, 24) * SECTOR
            off = rng.randrange(0, DISK_SIZE - length + 1, SECTOR)
            ops.append(("write", disk, off, length, wid))
        elif r < 0.53:  # large write: the aligned part bypasses the OpLog
            nblk = rng.randint(BIG // BS, DISK_BLOCKS)
            if rng.random() < 0.7:
                off = rng.randrange(0, DISK_BLOCKS - nblk + 1) * BS
                ops.append(("write", disk, off, nblk * BS, wid))
            else:
                length = BIG + rng.randint(1, 15) * SECTOR
                off = rng.randrange(0, DISK_SIZE - length + 1, SECTOR)
                ops.append(("write", disk, off, length, wid))
        elif r < 0.60:
            length = rng.randint(1, 40) * SECTOR
            off = rng.randrange(0, DISK_SIZE - length + 1, SECTOR)
            ops.append(("trim", disk, off, length))
        elif r < 0.74:
            ops.append(("flush",))
        elif r < 0.80:
            ops.append(("drain",))
        elif r < 0.83:
            ops.append(("gc",))
        elif r < 0.88:
            if len(snaps[disk]) < MAX_SNAPS:
                n_snap += 1
                name = f"r{rnd}s{n_snap}"
                snaps[disk].append(name)
                ops.append(("snap", disk, name))
        elif r < 0.91:
            if snaps[disk] and len(clones) < MAX_CLONES:
                n_clone += 1
                name = f"r{rnd}k{n_clone}"
                clones.append(name)
                ops.append(("clone", disk, rng.choice(snaps[disk]), name))
        elif r < 0.94:
            if snaps[disk]:
                ops.append(("restore", disk, rng.choice(snaps[disk])))
        elif r < 0.98:
            if snaps[disk]:
                name = snaps[disk].pop(rng.randrange(len(snaps[disk])))
                ops.append(("delsnap", disk, name))
        elif clones:
            ops.append(("delclone", clones.pop(rng.randrange(len(clones)))))
    return ops


def kind_of(op: tuple) -> str:
    if op[0] == "write":
        return "bigwrite" if op[3] >= BIG else "write"
    return op[0]


def main() -> None:
    path, seed, rnd, background, state = sys.argv[1:6]
    seed, rnd = int(seed), int(rnd)
    ops = gen_ops(seed, rnd, json.loads(state))
    import nxstore

    out = sys.stdout
    c = nxstore.Cluster.open(path, background=background == "1")
    out.write("OPEN\n")
    out.flush()
    for i, op in enumerate(ops):
        out.write(f"BEGIN {i} {kind_of(op)}\n")
        out.flush()
        kind = op[0]
        if kind == "write":
            _, disk, off, length, wid = op
            c.vdisk(disk).write(off, write_payload(disk, wid, off, length))
        elif kind == "trim":
            c.vdisk(op[1]).trim(op[2], op[3])
        elif kind == "flush":
            for d in DISKS:
                c.vdisk(d).flush()
            out.write(f"ACK {i + 1}\n")
            out.flush()
        elif kind == "drain":
            c.drain()
        elif kind == "gc":
            c.gc()
        elif kind == "snap":
            c.vdisk(op[1]).snapshot(op[2])
        elif kind == "clone":
            c.clone(c.snapshot(op[1], op[2]), op[3])
        elif kind == "restore":
            c.vdisk(op[1]).restore(c.snapshot(op[1], op[2]))
        elif kind == "delsnap":
            c.snapshot(op[1], op[2]).delete()
        elif kind == "delclone":
            c.delete_vdisk(op[1])
    out.write("DONE\n")
    out.flush()
    c.close()


if __name__ == "__main__":
    main()
