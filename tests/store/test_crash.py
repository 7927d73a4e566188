"""Guarantee 2 with real processes: a child (tests/store/crash_child.py) writes, trims,
flushes, drains, collects garbage, snapshots, clones, restores and deletes; the
parent SIGKILLs it at random moments or just after a chosen kind of op began
(OpLog append, bypass write, drain, gc, snapshot, clone, restore, delete), reopens
the cluster and checks:

* every write acknowledged by a returned flush() reads back;
* each block is exactly the state some prefix of the op sequence (at least the
  acknowledged one) gives it: nothing torn, nothing mixed, nothing invented;
* a snapshot or clone exists completely (reading exactly its frozen image) or not
  at all; one created before an acknowledged flush exists; one deleted before an
  acknowledged flush is gone;
* scrub() finds nothing wrong.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import xxhash
from crash_child import (
    _HDR,
    BS,
    DISK_BLOCKS,
    DISK_SIZE,
    DISKS,
    SECTOR,
    gen_ops,
    kind_of,
    write_payload,
)

import nxstore

CHILD = os.path.join(os.path.dirname(__file__), "crash_child.py")
TARGETS = ["time", "write", "bigwrite", "drain", "gc", "snap", "time", "flush", "restore",
           "clone", "delsnap", "trim", "delclone", "bigwrite", "drain", "time"]


def _h(b: bytes | bytearray | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(b)


def _describe(block: bytes) -> str:
    heads = []
    for p in range(0, BS, SECTOR):
        magic, d, wid, sector = _HDR.unpack_from(block, p)
        heads.append(f"{wid}:{sector}" if magic == b"NXCT" else ("0" if not any(
            block[p : p + SECTOR]) else "?"))
    return " ".join(heads)


class World:
    """What the parent knows for sure about the cluster between child runs."""

    def __init__(self) -> None:
        self.disks = {d: bytes(DISK_SIZE) for d in DISKS}
        self.snaps: dict[tuple[str, str], bytes] = {}
        self.clones: dict[str, bytes] = {}

    def gen_state(self) -> dict:
        snaps: dict[str, list[str]] = {d: [] for d in DISKS}
        for d, s in sorted(self.snaps):
            snaps[d].append(s)
        return {"snaps": snaps, "clones": sorted(self.clones)}


def _run_child(path: str, seed: int, rnd: int, background: bool, state: dict, target: str,
               rng: random.Random) -> tuple[list[str], int, str]:
    proc = subprocess.Popen(
        [sys.executable, CHILD, path, str(seed), str(rnd), "1" if background else "0",
         json.dumps(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=os.path.dirname(CHILD),
    )
    lines: list[str] = []
    hit = threading.Event()

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line.strip())
            if target != "time" and line.startswith("BEGIN") and line.split()[2] == target:
                hit.set()
        hit.set()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    if target == "time":
        time.sleep(rng.uniform(0.05, 1.3))
    else:
        hit.wait(20)
        time.sleep(rng.choice([0, 0, 0.0005, 0.001, 0.002, 0.005, 0.01]))
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    th.join(30)
    err = proc.stderr.read()
    proc.stderr.close()
    return lines, proc.returncode, err


def _verify(c, world: World, ops: list[tuple], acked: int, begun: int, rnd: int) -> None:
    """Check the reopened cluster against every state the op prefix [acked, begun] allows;
    then make `world` what the cluster now holds."""
    cur = {d: bytearray(world.disks[d]) for d in DISKS}
    # per disk, per block: [(op index, hash of the block after that op)]
    cand = {d: [[(-1, _h(cur[d][b * BS : (b + 1) * BS]))] for b in range(DISK_BLOCKS)]
            for d in DISKS}
    snaps = dict(world.snaps)
    created: dict[tuple[str, str], int] = {}
    deleted: dict[tuple[str, str], int] = {}
    clones = dict(world.clones)
    clone_created: dict[str, int] = {}
    clone_deleted: dict[str, int] = {}

    def touched(d: str, lo: int, hi: int, i: int) -> None:
        for b in range(lo // BS, (hi + BS - 1) // BS):
            cand[d][b].append((i, _h(cur[d][b * BS : (b + 1) * BS])))

    for i, op in enumerate(ops[:begun]):
        kind = op[0]
        if kind == "write":
            _, d, off, n, wid = op
            cur[d][off : off + n] = write_payload(d, wid, off, n)
            touched(d, off, off + n, i)
        elif kind == "trim":
            _, d, off, n = op
            cur[d][off : off + n] = bytes(n)
            touched(d, off, off + n, i)
        elif kind == "snap":
            snaps[(op[1], op[2])] = bytes(cur[op[1]])
            created[(op[1], op[2])] = i
        elif kind == "clone":
            clones[op[3]] = snaps[(op[1], op[2])]
            clone_created[op[3]] = i
        elif kind == "restore":
            cur[op[1]][:] = snaps[(op[1], op[2])]
            touched(op[1], 0, DISK_SIZE, i)
        elif kind == "delsnap":
            deleted[(op[1], op[2])] = i
        elif kind == "delclone":
            clone_deleted[op[1]] = i

    new_disks = {}
    for d in DISKS:
        vd = c.vdisk(d)
        assert vd.size == DISK_SIZE
        image = vd.read(0, DISK_SIZE)
        for b in range(DISK_BLOCKS):
            hist = cand[d][b]
            first = max(k for k, (i, _) in enumerate(hist) if i < acked)
            allowed = {h for _, h in hist[first:]}
            block = image[b * BS : (b + 1) * BS]
            if _h(block) not in allowed:
                pytest.fail(
                    f"round {rnd}: vDisk {d} block {b} is not a state the ops allow "
                    f"(acked {acked}, begun {begun}); sectors (write id:sector): "
                    f"{_describe(block)}; last acked op touching it: {hist[first][0]}, "
                    f"later ones: {[i for i, _ in hist[first + 1:]]}")
        new_disks[d] = image

    # snapshots: complete or absent; acknowledged ones present, acknowledged deletes gone
    on_disk = {(d, s.name): s for d in DISKS for s in c.vdisk(d).snapshots()}
    new_snaps = {}
    for key, image in snaps.items():
        k_new, k_del = created.get(key, -1), deleted.get(key)
        must = k_new < acked and k_del is None
        may = k_del is None or k_del >= acked
        if key in on_disk:
            assert may, f"round {rnd}: snapshot {key} deleted at op {k_del} < {acked} still exists"
            got = on_disk[key].read(0, on_disk[key].size)
            assert got == image, f"round {rnd}: snapshot {key} (op {k_new}) reads wrong"
            new_snaps[key] = image
        else:
            assert not must, (
                f"round {rnd}: snapshot {key} (op {k_new}) acknowledged but missing; acked "
                f"{acked}, begun {begun}; ops naming it: "
                f"{[(i, op) for i, op in enumerate(ops) if key[1] in op]}")
    extra = set(on_disk) - set(snaps)
    assert not extra, f"round {rnd}: unexpected snapshots {extra}"

    names = {vd.name for vd in c.vdisks()} - set(DISKS)
    new_clones = {}
    for name, image in clones.items():
        k_new, k_del = clone_created.get(name, -1), clone_deleted.get(name)
        must = k_new < acked and k_del is None
        may = k_del is None or k_del >= acked
        if name in names:
            assert may, f"round {rnd}: clone {name} deleted at op {k_del} < {acked} still exists"
            assert c.vdisk(name).read(0, DISK_SIZE) == image, f"round {rnd}: clone {name} wrong"
            new_clones[name] = image
        else:
            assert not must, f"round {rnd}: clone {name} (op {k_new}) acknowledged but missing"
    assert not names - set(clones), f"round {rnd}: unexpected vDisks {names - set(clones)}"

    world.disks, world.snaps, world.clones = new_disks, new_snaps, new_clones


def run_crash_rounds(tmp_path, kills_wanted: int, background: bool,
                     seed: int) -> collections.Counter:
    """Rounds of child, kill, verify until `kills_wanted` children were killed. Bounded by
    rounds (4 per kill wanted), not by time: a loaded machine makes rounds slower, not
    fewer kills (each wait inside a round has its own timeout)."""
    path = str(tmp_path / "crash")
    with nxstore.Cluster.create(path, block_size=BS, background=False) as c:
        for d in DISKS:
            c.create_vdisk(d, DISK_SIZE)
    world = World()
    rng = random.Random(seed)
    phases: collections.Counter = collections.Counter()
    kills = rnd = 0
    start = time.monotonic()
    keep = os.environ.get("NXSTORE_CRASH_KEEP")
    while kills < kills_wanted:
        assert rnd < 4 * kills_wanted, f"only {kills} kills in {rnd} rounds"
        rnd += 1
        state = world.gen_state()
        ops = gen_ops(seed, rnd, state)
        kinds = {kind_of(op) for op in ops}
        target = TARGETS[rnd % len(TARGETS)]
        if target not in kinds:
            target = "time"
        lines, rc, err = _run_child(path, seed, rnd, background, state, target, rng)
        if keep:  # the state as the kill left it, to replay a failed recovery offline
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(path, keep)
        assert rc in (0, -signal.SIGKILL), f"child failed (rc {rc}):\n{err[-3000:]}"
        acks = [int(x.split()[1]) for x in lines if x.startswith("ACK")]
        begins = [x.split() for x in lines if x.startswith("BEGIN")]
        acked = acks[-1] if acks else 0
        begun = int(begins[-1][1]) + 1 if begins else 0
        if rc == -signal.SIGKILL:
            kills += 1
            phases[begins[-1][2] if begins else ("open" if "OPEN" not in lines else "start")] += 1
        else:
            begun = acked = len(ops)
        print(f"round {rnd}: target {target}, rc {rc}, acked {acked}, begun {begun}, last "
              f"{' '.join(begins[-1]) if begins else lines[-1:]}", flush=True)
        with nxstore.Cluster.open(path, background=False) as c:
            _verify(c, world, ops, acked, begun, rnd)
            if rnd % 4 == 0:
                assert c.scrub() == [], f"round {rnd}: scrub after the crash"
    print(f"{kills} kills in {rnd} rounds, {time.monotonic() - start:.1f} s; phases: "
          f"{dict(phases)}")
    return phases


@pytest.mark.slow
def test_crash_oplog_drain_gc_and_metadata(tmp_path):
    phases = run_crash_rounds(tmp_path, kills_wanted=45, background=False, seed=1)
    hit = {p for p in phases if p in ("write", "bigwrite", "drain", "gc", "snap", "flush",
                                      "restore", "clone", "delsnap")}
    assert len(hit) >= 5, f"kills not spread over phases: {dict(phases)}"


@pytest.mark.slow
def test_crash_with_background_drain(tmp_path):
    run_crash_rounds(tmp_path, kills_wanted=20, background=True, seed=2)


@pytest.mark.parametrize("background", [False, True])
def test_crash_rounds_short(tmp_path, background):
    """The default run's bounded form of the two slow tests above (all of them: `make
    torture`): fewer kills, other seeds, the same checks after every kill."""
    run_crash_rounds(tmp_path, kills_wanted=8, background=background, seed=3 + background)


_GC_CHILD = """
import os, random, signal, sys
import nxstore
path, first = sys.argv[1], sys.argv[2]
c = nxstore.Cluster.open(path, background=False)
vd = c.vdisk("v")
a = random.Random(1).randbytes(256 * 1024)
if first == "bypass":
    vd.write(0, a)                 # aligned, >= 256 KiB: bypasses the OpLog
else:
    for i in range(0, len(a), 8192):
        vd.write(i, a[i : i + 8192])   # through the OpLog ...
    c.drain()                          # ... then into the extent store and a persisted map
vd.flush()                             # acknowledged
vd.write(0, random.Random(2).randbytes(256 * 1024))  # overwritten, never flushed
c.gc()
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("first", ["bypass", "drained"])
def test_gc_then_kill_keeps_acknowledged_data(tmp_path, first):
    """Deterministic form of a failure the random crash test finds: gc() must not free
    the extents of an acknowledged write that only an unflushed write has replaced."""
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, block_size=BS, background=False) as c:
        c.create_vdisk("v", 2 * 256 * 1024)
    proc = subprocess.run([sys.executable, "-c", _GC_CHILD, path, first], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    acked = random.Random(1).randbytes(256 * 1024)
    later = random.Random(2).randbytes(256 * 1024)
    with nxstore.Cluster.open(path, background=False) as c:
        got = c.vdisk("v").read(0, 256 * 1024)
        assert got in (acked, later), (
            "acknowledged data lost: reads " + ("zeros" if not any(got) else "other bytes"))
        assert c.scrub() == []


_MID_DRAIN_GC_CHILD = """
import os, random, signal, sys
import nxstore
path = sys.argv[1]
c = nxstore.Cluster.open(path, background=False)
vd = c.vdisk("v")
vd.write(0, random.Random(1).randbytes(256 * 1024))   # bypass: a MAP record
vd.write(512, random.Random(2).randbytes(3584))       # sectors 1-7 of block 0: partial
vd.flush()                                            # both acknowledged
with vd._lock:  # what the background drain does between two of its locked steps:
    vd._drain_step()  # block 0 merged and remapped in RAM, the map not yet persisted
c.gc()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_gc_between_drain_steps_keeps_acknowledged_data(tmp_path):
    """Found by the crash test with the background drain: gc() ran between two drain
    steps, after a partial write was merged onto an acknowledged bypass write in RAM
    but before the map was persisted, and swept the bypass write's extent; recovery
    then skipped its MAP record and block 0 lost its first sector."""
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, block_size=BS, background=False) as c:
        c.create_vdisk("v", 2 * 256 * 1024)
    proc = subprocess.run([sys.executable, "-c", _MID_DRAIN_GC_CHILD, path],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    want = bytearray(random.Random(1).randbytes(256 * 1024))
    want[512:4096] = random.Random(2).randbytes(3584)
    with nxstore.Cluster.open(path, background=False) as c:
        assert c.vdisk("v").read(0, 256 * 1024) == want
        assert c.scrub() == []


_FOLD_CHILD = """
import os, signal, sys
import nxstore
from nxstore.store.layers import LayerTree
path = sys.argv[1]
c = nxstore.Cluster.open(path, background=False, collapse_depth=2)
drop = LayerTree._drop
def drop_then_die(self, layer_id):
    drop(self, layer_id)
    if self.catalog._db.in_transaction:  # inside the fold's relink, before its commit
        os.kill(os.getpid(), signal.SIGKILL)
LayerTree._drop = drop_then_die
c.snapshot("v", "s2").delete()  # folds s2's layer (and its shortcut) into the head
"""


def test_kill_inside_fold_keeps_the_layers_it_did_not_drop(tmp_path):
    """Found by the crash test: a fold's relink dropped the folded layer (and the
    shortcut above it) inside its catalogue transaction and deleted their map files
    before the commit; a kill there rolled the rows back, the shortcut's files were
    gone, and reads through it saw an empty map (zeros)."""
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, block_size=BS, background=False, collapse_depth=2) as c:
        vd = c.create_vdisk("v", 64 * BS)
        data = bytearray(os.urandom(64 * BS))
        vd.write(0, data)
        vd.snapshot("s1")
        vd.write(0, data[:BS])
        vd.snapshot("s2")
        c.drain()  # head -> s2 -> s1 is deeper than 2: a shortcut on s2
        assert vd.read_depth == 2
    proc = subprocess.run([sys.executable, "-c", _FOLD_CHILD, path], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    with nxstore.Cluster.open(path, background=False) as c:
        assert c.vdisk("v").read(0, 64 * BS) == data
        assert c.scrub() == []
