"""Ops, child process and model of the SIGKILL trials (test_kill_trials.py).

    python kill_workload.py CLUSTER_PATH OPS_JSON [BEGIN|END:<op index>:<delay s>]

The child opens the cluster and runs the ops in OPS_JSON (a list of lists) in order,
printing to stdout, flushed before the next step:

    OPEN              recovery is done (the parent's readiness signal)
    BEGIN <i> <kind>  op i starts
    ACK <n>           ops[:n] are acknowledged: flush() of every vDisk returned
    END <i>           op i returned
    DONE              every op ran (then the cluster is closed; exit status 0 once closed)

With a kill point, the child SIGKILLs itself `delay` seconds after printing that line
(at once for 0, else from a timer thread while the ops go on): a parent watching the
lines would land its kill milliseconds and many ops later.

Ops: ["write", disk, offset, length, wid] (small ones go through the OpLog, aligned
ones of 256 KiB and more bypass it; some are 1 MiB and more), ["trim", disk, offset,
length], ["flush"], ["drain"], ["gc"], ["snap", disk, name], ["clone", disk, snap,
name], ["restore", disk, snap], ["delsnap", disk, snap] (a snapshot delete: the fold
behind it), ["delclone", name]. Every 512-byte sector a write stores starts with a
header naming the write and the sector (crash_child.write_payload), so a block mixed
from two writes, or torn, never equals a state the ops allow.

The parent keeps a `World` (what the cluster holds between trials), generates ops from
it (`gen_ops`, or `gen_fold_ops` aimed at snapshot deletes with unflushed writes around
them) and checks the reopened cluster with `verify`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
from dataclasses import dataclass, field

import xxhash
from crash_child import SECTOR, write_payload

BS = 4096
DISK_SIZE = 2 * 1024 * 1024
BLOCKS = DISK_SIZE // BS
BASE_DISKS = ("p", "q")
BYPASS = 256 * 1024      # OPLOG_BYPASS_BYTES: aligned writes this large skip the OpLog
MAX_SNAPS = 6            # per base disk
MAX_CLONES = 2


def digest(block: bytes | bytearray | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(block)


def kind_of(op: list) -> str:
    if op[0] == "write":
        return "bigwrite" if op[3] >= BYPASS else "write"
    return op[0]


@dataclass
class World:
    """What the cluster holds, as far as the parent knows for sure."""

    disks: dict[str, bytes] = field(default_factory=lambda: {d: bytes(DISK_SIZE)
                                                              for d in BASE_DISKS})
    snaps: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def snap_names(self, disk: str) -> list[str]:
        return sorted(s for d, s in self.snaps if d == disk)

    def clones(self) -> list[str]:
        return sorted(set(self.disks) - set(BASE_DISKS))


# -- op generators -------------------------------------------------------------------

class _Gen:
    """Op list builder that tracks names as the ops would change them."""

    def __init__(self, world: World, trial: int, rng: random.Random) -> None:
        self.rng = rng
        self.trial = trial
        self.ops: list[list] = []
        self.snaps = {d: world.snap_names(d) for d in BASE_DISKS}
        self.clones = world.clones()
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"t{self.trial}{prefix}{self.n}"

    def disk(self) -> str:
        return self.rng.choice([*BASE_DISKS, *self.clones])

    def small_write(self, disk: str, block: int | None = None) -> None:
        n = self.rng.randint(1, 16) * SECTOR
        if block is None:
            off = self.rng.randrange(0, DISK_SIZE - n + 1, SECTOR)
        else:  # a partial write inside `block`
            n = min(n, BS - SECTOR)
            off = block * BS + self.rng.randrange(0, BS - n + 1, SECTOR)
        self.ops.append(["write", disk, off, n, self.wid()])

    def big_write(self, disk: str, nblk: int | None = None) -> None:
        nblk = nblk or self.rng.choice([BYPASS // BS, BYPASS // BS * 2, BLOCKS // 2, BLOCKS])
        if self.rng.random() < 0.75:  # aligned: all of it bypasses the OpLog
            off, n = self.rng.randrange(0, BLOCKS - nblk + 1) * BS, nblk * BS
        else:  # unaligned: head and tail through the OpLog, the middle bypasses it
            n = min(nblk * BS, DISK_SIZE - BS) + self.rng.randint(1, 7) * SECTOR
            off = self.rng.randrange(0, DISK_SIZE - n + 1, SECTOR)
        self.ops.append(["write", disk, off, n, self.wid()])

    def wid(self) -> int:
        return self.trial * 1_000_000 + len(self.ops) + 1

    def snap(self, disk: str) -> str | None:
        if len(self.snaps[disk]) >= MAX_SNAPS:
            return None
        name = self.name("s")
        self.snaps[disk].append(name)
        self.ops.append(["snap", disk, name])
        return name

    def delsnap(self, disk: str, name: str | None = None) -> None:
        if not self.snaps[disk]:
            return
        name = name or self.rng.choice(self.snaps[disk])
        self.snaps[disk].remove(name)
        self.ops.append(["delsnap", disk, name])


def gen_ops(world: World, trial: int, count: int, rng: random.Random) -> list[list]:
    """A random workload of `count` ops over every kind."""
    g = _Gen(world, trial, rng)
    while len(g.ops) < count:
        r = rng.random()
        disk = g.disk()
        base = rng.choice(BASE_DISKS)
        if r < 0.40:
            g.small_write(disk)
        elif r < 0.48:
            g.big_write(disk)
        elif r < 0.52:
            n = rng.randint(1, 64) * SECTOR
            g.ops.append(["trim", disk, rng.randrange(0, DISK_SIZE - n + 1, SECTOR), n])
        elif r < 0.66:
            g.ops.append(["flush"])
        elif r < 0.72:
            g.ops.append(["drain"])
        elif r < 0.75:
            g.ops.append(["gc"])
        elif r < 0.82:
            g.snap(base)
        elif r < 0.85:
            if g.snaps[base] and len(g.clones) < MAX_CLONES:
                name = g.name("c")
                g.ops.append(["clone", base, rng.choice(g.snaps[base]), name])
                g.clones.append(name)
        elif r < 0.89:
            if g.snaps[base]:
                g.ops.append(["restore", base, rng.choice(g.snaps[base])])
        elif r < 0.97:
            g.delsnap(base)
        elif g.clones:
            g.ops.append(["delclone", g.clones.pop(rng.randrange(len(g.clones)))])
    return g.ops


def gen_fold_ops(world: World, trial: int, episodes: int, rng: random.Random) -> list[list]:
    """Episodes aimed at the fold behind a snapshot delete (issue 11 item 5): partial
    writes left undrained and acknowledged, then unflushed writes over them (bypass
    and small), then the delete of the head's parent snapshot (a fold into the head),
    then more unflushed writes."""
    g = _Gen(world, trial, rng)
    for _ in range(episodes):
        disk = rng.choice(BASE_DISKS)
        while len(g.snaps[disk]) >= MAX_SNAPS:
            g.delsnap(disk)
        name = g.snap(disk)
        blocks = rng.sample(range(BLOCKS), rng.randint(2, 12))
        for b in blocks:
            g.small_write(disk, b)
        g.ops.append(["flush"])
        if rng.random() < 0.8:
            g.big_write(disk, rng.choice([BYPASS // BS, BLOCKS // 4, BLOCKS // 2]))
        for b in rng.sample(blocks, min(len(blocks), rng.randint(0, 4))):
            g.small_write(disk, b)
        g.delsnap(disk, name)
        for _ in range(rng.randint(0, 3)):
            g.small_write(disk, rng.choice(blocks))
        if rng.random() < 0.5:
            g.ops.append(["flush"])
    return g.ops


# -- the parent's check ----------------------------------------------------------------

@dataclass
class Expect:
    """What the op prefix allows, computed from a World and ops[:begun]."""

    acked: int
    # disk -> per block: [(op index, digest after it)]; op index -1: the starting state
    history: dict[str, list[list[tuple[int, int]]]]
    born: dict[str, int]                 # vDisk -> op that created it (-1: existed)
    gone: dict[str, int]                 # vDisk -> op that deleted it
    snaps: dict[tuple[str, str], tuple[bytes, int]]  # -> (image, op that created it)
    snap_gone: dict[tuple[str, str], int]
    image: dict[str, bytearray]          # each vDisk as ops[:begun] leave it

    def allowed(self, disk: str, block: int) -> set[int]:
        hist = self.history[disk][block]
        first = max((k for k, (i, _) in enumerate(hist) if i < self.acked), default=0)
        return {d for _, d in hist[first:]}


class _Sim:
    """Applies ops to plain images, noting each touched block's state after the op."""

    def __init__(self, world: World, acked: int) -> None:
        self.image = {d: bytearray(img) for d, img in world.disks.items()}
        self.e = Expect(acked, {}, dict.fromkeys(self.image, -1), {},
                        {k: (v, -1) for k, v in world.snaps.items()}, {}, self.image)
        for d in self.image:
            self.fresh(d, -1)

    def fresh(self, disk: str, i: int) -> None:
        img = self.image[disk]
        self.e.history[disk] = [[(i, digest(img[b * BS : (b + 1) * BS]))] for b in range(BLOCKS)]

    def put(self, i: int, disk: str, off: int, data: bytes) -> None:
        img = self.image[disk]
        img[off : off + len(data)] = data
        for b in range(off // BS, (off + len(data) + BS - 1) // BS):
            self.e.history[disk][b].append((i, digest(img[b * BS : (b + 1) * BS])))

    def write(self, i: int, disk: str, off: int, n: int, wid: int) -> None:
        self.put(i, disk, off, write_payload(disk, wid, off, n))

    def trim(self, i: int, disk: str, off: int, n: int) -> None:
        self.put(i, disk, off, bytes(n))

    def snap(self, i: int, disk: str, name: str) -> None:
        self.e.snaps[(disk, name)] = (bytes(self.image[disk]), i)

    def clone(self, i: int, disk: str, snap: str, name: str) -> None:
        self.image[name] = bytearray(self.e.snaps[(disk, snap)][0])
        self.e.born[name] = i
        self.fresh(name, i)

    def restore(self, i: int, disk: str, snap: str) -> None:
        self.put(i, disk, 0, self.e.snaps[(disk, snap)][0])

    def delsnap(self, i: int, disk: str, snap: str) -> None:
        self.e.snap_gone[(disk, snap)] = i

    def delclone(self, i: int, name: str) -> None:
        self.e.gone[name] = i


def expect(world: World, ops: list[list], acked: int, begun: int) -> Expect:
    sim = _Sim(world, acked)
    for i, op in enumerate(ops[:begun]):
        step = getattr(sim, op[0], None)  # flush, drain and gc change no image
        if step is not None:
            step(i, *op[1:])
    return sim.e


def verify(c, world: World, ops: list[list], acked: int, begun: int) -> tuple[World, list[str]]:
    """Check the reopened cluster `c` against every state ops[acked:begun] allow.
    Returns (the World the cluster now holds, problems in words)."""
    e = expect(world, ops, acked, begun)
    problems: list[str] = []
    present = {vd.name: vd for vd in c.vdisks()}
    new = World(disks={}, snaps={})
    for disk in sorted(set(e.image) | set(present)):
        born, gone = e.born.get(disk), e.gone.get(disk)
        if born is None:
            problems.append(f"unexpected vDisk {disk}")
            continue
        must = born < acked and (gone is None or gone >= begun)
        may = gone is None or gone >= acked
        vd = present.get(disk)
        if vd is None:
            if must:
                problems.append(f"vDisk {disk} (created by op {born}) is missing")
            continue
        if not may:
            problems.append(f"vDisk {disk} deleted by acknowledged op {gone} still exists")
            continue
        got = vd.read(0, DISK_SIZE)
        for b in range(BLOCKS):
            block = got[b * BS : (b + 1) * BS]
            if digest(block) not in e.allowed(disk, b):
                hist = e.history[disk][b]
                problems.append(
                    f"vDisk {disk} block {b} is no state the ops allow: sectors "
                    f"{describe(block)}; ops touching it: {[i for i, _ in hist[1:]]} "
                    f"(acked {acked}, begun {begun})")
        new.disks[disk] = got
    on_disk = {(vd.name, s.name): s for vd in present.values() for s in vd.snapshots()}
    for key in sorted(set(e.snaps) | set(on_disk)):
        if key not in e.snaps:
            problems.append(f"unexpected snapshot {key}")
            continue
        img, born = e.snaps[key]
        gone = e.snap_gone.get(key)
        must = born < acked and (gone is None or gone >= begun)
        may = gone is None or gone >= acked
        if key not in on_disk:
            if must:
                problems.append(f"snapshot {key} (op {born}) is missing")
            continue
        if not may:
            problems.append(f"snapshot {key} deleted by acknowledged op {gone} still exists")
        if on_disk[key].read(0, on_disk[key].size) != img:
            problems.append(f"snapshot {key} (op {born}) does not read its frozen image")
        new.snaps[key] = img
    return new, problems


def describe(block: bytes) -> str:
    """Per sector: 'write id:sector' from its header, '0' for zeros, '?' for other bytes."""
    from crash_child import _HDR

    out = []
    for p in range(0, BS, SECTOR):
        magic, _, wid, sector = _HDR.unpack_from(block, p)
        out.append(f"{wid % 1_000_000}:{sector}" if magic == b"NXCT" else
                   "0" if not any(block[p : p + SECTOR]) else "?")
    return " ".join(out)


# -- child -------------------------------------------------------------------------------

def main() -> None:
    path, ops_path = sys.argv[1:3]
    with open(ops_path) as f:
        ops = json.load(f)
    tag, at, delay = (sys.argv[3].split(":") + ["", "-1", "0"])[:3] if len(sys.argv) > 3 \
        else ("", "-1", "0")
    kill_line, delay = f"{tag} {at}", float(delay)
    import nxstore

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if line.startswith(kill_line) and line[len(kill_line):len(kill_line) + 1] in ("", " "):
            if delay:
                threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
            else:
                os.kill(os.getpid(), signal.SIGKILL)

    c = nxstore.Cluster.open(path, background=False)
    run = {
        "write": lambda d, off, n, wid: c.vdisk(d).write(off, write_payload(d, wid, off, n)),
        "trim": lambda d, off, n: c.vdisk(d).trim(off, n),
        "flush": lambda: [vd.flush() for vd in c.vdisks()],
        "drain": c.drain,
        "gc": c.gc,
        "snap": lambda d, name: c.vdisk(d).snapshot(name),
        "clone": lambda d, snap, name: c.clone(c.snapshot(d, snap), name),
        "restore": lambda d, snap: c.vdisk(d).restore(c.snapshot(d, snap)),
        "delsnap": lambda d, snap: c.snapshot(d, snap).delete(),
        "delclone": c.delete_vdisk,
    }
    say("OPEN")
    for i, op in enumerate(ops):
        say(f"BEGIN {i} {kind_of(op)}")
        run[op[0]](*op[1:])
        if op[0] == "flush":
            say(f"ACK {i + 1}")
        say(f"END {i}")
    say("DONE")
    c.close()


if __name__ == "__main__":
    main()
