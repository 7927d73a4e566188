"""Layout repair (nxstore/store/defrag.py, ExtentStore.relocate): every image reads the
same after extents move, a repaired window reads as at most 2 runs, the stretch a
window keeps (shared by dedup) never moves, gc reclaims the old copies, damaged
records stay put and are reported, and a kill in the middle of a relocation loses
nothing (fault-injection tests at the end)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import nx, one_error_line

import nxstore
from nxstore.constants import DEFRAG_WINDOW_BYTES, GC_COMPACT_DEAD_FRACTION
from nxstore.errors import InvalidArgument, NotFound
from nxstore.store import defrag, extent_read
from nxstore.store.extent_group import HEADER_BYTES, group_file_name
from nxstore.store.extent_store import ExtentStore

BS = 4096
NBLOCKS = 512  # 2 MiB: two defrag windows of 1 MiB
LEVELS = 10  # snapshots of `build`: with the base, ~11 runs per window (> DEFRAG_MAX_RUNS)
DEEP = 64  # a collapse depth no chain here reaches: the drain defragments nothing


def runs(c: nxstore.Cluster, name: str) -> np.ndarray:
    """preadv runs of reading each mapped 1 MiB window of a vDisk's image, as defrag
    measures them (the read path's clustering)."""
    blocks, ids = defrag.image(c._ctx, c.vdisk(name))
    return np.unique(defrag.layout(c._ctx.store, blocks, ids).window, return_counts=True)[1]


def places(c: nxstore.Cluster, name: str) -> dict[int, tuple[int, int]]:
    """{extent id: (group, offset)} of every record a vDisk's image reads."""
    _, ids = defrag.image(c._ctx, c.vdisk(name))
    g, o, _ = c._ctx.store.locations(ids)
    return dict(zip(ids.tolist(), zip(g.tolist(), o.tolist(), strict=True), strict=True))


def fragment(vd: nxstore.VDisk, model: bytearray, rng: np.random.Generator, levels: int,
             per_level: int, blocks: np.ndarray, snaps: dict[str, bytes]) -> None:
    """`levels` times: rewrite `per_level` of `blocks` with fresh data (4 KiB writes,
    each level drained separately by its snapshot), then snapshot."""
    for level in range(levels):
        for b in rng.choice(blocks, per_level, replace=False).tolist():
            piece = rng.integers(0, 256, BS, dtype=np.uint8).tobytes()
            vd.write(b * BS, piece)
            model[b * BS : (b + 1) * BS] = piece
        vd.snapshot(f"s{level}")
        snaps[f"{vd.name}@s{level}"] = bytes(model)


def check_all(c: nxstore.Cluster, models: dict[str, bytes]) -> None:
    """Every vDisk and snapshot named in `models` reads exactly its model."""
    for ref, want in models.items():
        name, _, snap = ref.partition("@")
        obj = c.snapshot(name, snap) if snap else c.vdisk(name)
        assert obj.read(0, len(want)) == want, f"{ref} reads wrong data"


def build(c: nxstore.Cluster, seed: int, levels: int = LEVELS, clone: bool = True) -> dict[str, bytes]:
    """A fragmented vDisk "v" (with snapshots) and, with `clone`, a clone "k" of its
    middle snapshot that shares its extents and has writes of its own; returns the
    models."""
    rng = np.random.default_rng(seed)
    vd = c.create_vdisk("v", NBLOCKS * BS)
    model = bytearray(rng.integers(0, 256, NBLOCKS * BS, dtype=np.uint8).tobytes())
    vd.write(0, bytes(model))
    models: dict[str, bytes] = {}
    fragment(vd, model, rng, levels, NBLOCKS // 12, np.arange(NBLOCKS), models)
    models["v"] = bytes(model)
    if not clone:
        return models
    k = c.clone(c.snapshot("v", f"s{levels // 2}"), "k")
    kmodel = bytearray(models[f"v@s{levels // 2}"])
    fragment(k, kmodel, rng, 2, NBLOCKS // 12, np.arange(NBLOCKS), models)
    models["k"] = bytes(kmodel)
    return models


def test_drain_defragments_a_vdisk_whose_chain_it_collapses(make_cluster):
    c = make_cluster(collapse_depth=4)
    models = build(c, 1, clone=False)
    # ~1/12 rewritten per level, each level drained apart (two may fall within MAX_GAP)
    assert ((runs(c, "v") > 8) & (runs(c, "v") <= LEVELS + 1)).all()
    before = places(c, "v")
    c.drain()  # v's chain is deeper than 4: collapse, then defrag
    assert c.vdisk("v").read_depth <= 4
    assert (runs(c, "v") == 2).all()  # the original stretch (gaps read and dropped) + the moved
    after = places(c, "v")
    base = [e for e in before if e < min(before) + NBLOCKS]  # ids of the first write: the original
    assert base and all(after[e] == before[e] for e in base)  # the stretch stayed
    assert sum(after[e] != before[e] for e in after) == len(after) - len(base)
    check_all(c, models)
    st2 = c.defragment("v")  # nothing left to do
    assert st2["extents_moved"] == 0 and st2["runs_before"] == st2["runs_after"] == 4


def test_runs_are_the_read_paths_preadv_runs(make_cluster, monkeypatch):
    """defrag's per-window run count is what a 1 MiB read of the window plans, before
    and after repair (holes, a clone sharing extents, repeated extents included)."""
    c = make_cluster(collapse_depth=DEEP)
    models = build(c, 11)
    v = c.vdisk("v")
    v.write(300 * BS, models["v"][:BS] * 3)  # block 0's extent again at blocks 300-302
    v.trim(40 * BS, 8 * BS)
    c.drain()
    real, planned = extent_read.plan_runs, []

    def plan_runs(*args: object) -> tuple[np.ndarray, np.ndarray]:
        iov, runs_ = real(*args)
        planned.append(len(runs_))
        return iov, runs_

    monkeypatch.setattr(extent_read, "plan_runs", plan_runs)

    def check(name: str) -> None:  # one read per window, each one native plan
        planned.clear()
        for off in range(0, NBLOCKS * BS, DEFRAG_WINDOW_BYTES):
            c.vdisk(name).read(off, DEFRAG_WINDOW_BYTES)
        assert planned == runs(c, name).tolist()

    for name in ("v", "k"):
        check(name)
    assert c.defragment()["extents_moved"] > 0
    for name in ("v", "k"):
        check(name)


def test_the_shared_original_stretch_never_moves(make_cluster):
    """A vDisk holding another's original data (dedup: the same extents) keeps its
    layout and its runs when the other, rewritten since, is repaired: only the
    rewrites move."""
    c = make_cluster(collapse_depth=DEEP)
    rng = np.random.default_rng(9)
    data = rng.integers(0, 256, NBLOCKS * BS, dtype=np.uint8).tobytes()
    models = {"twin": data}
    c.create_vdisk("twin", NBLOCKS * BS).write(0, data)
    v = c.create_vdisk("v", NBLOCKS * BS)
    v.write(0, data)
    model = bytearray(data)
    fragment(v, model, rng, LEVELS, NBLOCKS // 12, np.arange(NBLOCKS), models)
    models["v"] = bytes(model)
    c.drain()
    twin_places, twin_runs, before = places(c, "twin"), runs(c, "twin"), places(c, "v")
    assert (runs(c, "v") > 8).all()
    stats = c.defragment("v")
    assert stats["defragmented"] == 1 and (runs(c, "v") <= 2).all()
    assert places(c, "twin") == twin_places and (runs(c, "twin") == twin_runs).all()
    moved = {e for e, where in places(c, "v").items() if where != before[e]}
    assert moved == set(before) - set(twin_places) and stats["extents_moved"] == len(moved)
    assert stats["bytes_moved"] >= len(moved) * (BS + HEADER_BYTES)
    check_all(c, models)


def test_defragment_every_vdisk_runs_drop_and_gc_reclaims_old_copies(make_cluster):
    c = make_cluster(collapse_depth=DEEP)
    models = build(c, 2)
    c.drain()  # no chain deeper than DEEP: nothing moved yet
    v_before = runs(c, "v")
    assert (v_before > 8).all()
    stats = c.defragment()
    assert stats["vdisks"] == 2 and stats["defragmented"] >= 1 and stats["damaged"] == 0
    assert stats["bytes_moved"] >= stats["extents_moved"] * (BS + HEADER_BYTES) > 0
    # k, defragmented last, reads each window in at most 2 runs; v shares some of the
    # rewrites k moved (dedup's trade-off), so v may take a few more, still fewer than before
    assert (runs(c, "k") <= 2).all()
    assert runs(c, "v").sum() < v_before.sum() / 2
    check_all(c, models)
    assert c.scrub() == []
    files = c._ctx.store.stats()["group_bytes"]
    gc = c.gc()
    st = c._ctx.store.stats()
    assert gc["groups_compacted"] + gc["groups_deleted"] >= 1  # the groups the copies left
    # what is left dead sits in groups under gc's compaction threshold (old copies of
    # v's moved rewrites that k moved again)
    live = st["stored_bytes"] + HEADER_BYTES * st["extents"]
    assert live <= st["group_bytes"] < min(files, live / (1 - GC_COMPACT_DEAD_FRACTION))
    check_all(c, models)
    assert c.scrub() == []


def test_holes_do_not_count_as_runs(make_cluster):
    c = make_cluster(collapse_depth=DEEP)
    rng = np.random.default_rng(3)
    vd = c.create_vdisk("v", NBLOCKS * BS)
    model = bytearray(NBLOCKS * BS)
    spans = [(0, 100), (150, 400), (430, 512)]
    for a, b in spans:
        piece = rng.integers(0, 256, (b - a) * BS, dtype=np.uint8).tobytes()
        vd.write(a * BS, piece)
        model[a * BS : b * BS] = piece
    mapped = np.concatenate([np.arange(a, b) for a, b in spans])
    fragment(vd, model, rng, LEVELS, 40, mapped, {})
    c.drain()
    assert (runs(c, "v") > 8).all()
    stats = c.defragment("v")
    assert stats["windows"] == 2 and stats["runs_after"] == 4 < stats["runs_before"]
    assert vd.read(0, NBLOCKS * BS) == model


def test_budget_limits_what_moves(make_cluster):
    c = make_cluster(collapse_depth=DEEP)
    models = build(c, 4)
    c.drain()
    stats = c.defragment("v", max_bytes=100 * (BS + HEADER_BYTES))
    assert stats["extents_moved"] == 100 and stats["bytes_moved"] == 100 * (BS + HEADER_BYTES)
    check_all(c, models)  # a window cut by the budget may take a run more until the next call:
    stats = c.defragment("v")
    assert stats["extents_moved"] > 0 and (runs(c, "v") <= 2).all()
    check_all(c, models)
    with pytest.raises(InvalidArgument):
        c.defragment("v", max_bytes=-1)
    with pytest.raises(NotFound):
        c.defragment("nosuch")


_EXAMPLES = itertools.count()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), levels=st.integers(1, 10), trims=st.lists(
    st.tuples(st.integers(0, NBLOCKS - 1), st.integers(1, 64)), max_size=4),
    budget=st.sampled_from([0, 50, 10_000]))  # fmt: skip
def test_defragment_changes_no_image(make_cluster, tmp_path, seed, levels, trims, budget):
    """Property: whatever was written, trimmed, snapshotted and cloned, and however
    much the budget lets move, every vDisk, snapshot and clone reads as before,
    after defragment, after gc and after a reopen; scrub stays clean."""
    c = make_cluster(name=f"c{next(_EXAMPLES)}", collapse_depth=3)
    models = build(c, seed, levels)
    for first, n in trims:  # holes: ranges that end the image's block runs
        n = min(n, NBLOCKS - first)
        c.vdisk("v").trim(first * BS, n * BS)
        m = bytearray(models["v"])
        m[first * BS : (first + n) * BS] = bytes(n * BS)
        models["v"] = bytes(m)
    c.drain()
    c.defragment(max_bytes=budget * (BS + HEADER_BYTES))
    check_all(c, models)
    assert c.scrub() == []
    c.gc()
    check_all(c, models)
    c = make_cluster.reopen(c)
    check_all(c, models)
    assert c.scrub() == []


# -- ExtentStore.relocate ---------------------------------------------------------------
def test_relocate_order_repeats_budget_and_damage(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 20 * BS, dtype=np.uint8)
    with ExtentStore.open(str(tmp_path / "x"), BS, create=True) as s:
        ids = s.put_blocks(data)
        s.sync()
        got = s.relocate(np.array([ids[5], 0, ids[3], ids[5], ids[9], 10**6], np.uint64), 1 << 20)
        assert got == {"extents_moved": 3, "bytes_moved": 3 * (BS + HEADER_BYTES), "damaged": 0,
                       "skipped": 1}  # fmt: skip
        g, o, n = s.locations(ids[[5, 3, 9]])
        assert len(set(g.tolist())) == 1 and (o[1:] == o[:-1] + n[:-1]).all()
        assert s.relocate(ids[:4], 2 * (BS + HEADER_BYTES) + 10)["extents_moved"] == 2  # budget
        # a damaged record is reported and left where it is; the others move
        g, o, _ = s.locations(ids[[7]])
        path = os.path.join(s.directory, group_file_name(int(g[0])))
        with open(path, "r+b") as f:
            f.seek(int(o[0]) + HEADER_BYTES + 100)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        got = s.relocate(ids[6:9], 1 << 20)
        assert (got["extents_moved"], got["damaged"]) == (2, 1)
        assert s.locations(ids[[7]])[1][0] == o[0]
        assert any(f"extent {ids[7]}" in p for p in s.scrub())
        out = np.empty(BS, np.uint8)
        for i in (3, 5, 6, 8, 9):
            s.read_blocks(ids[[i]], out)
            assert (out == data[i * BS : (i + 1) * BS]).all()
    with ExtentStore.open(str(tmp_path / "x"), BS) as s:  # the new places were checkpointed
        out = np.empty(3 * BS, np.uint8)
        s.read_blocks(ids[[5, 3, 9]], out)
        assert out.tobytes() == b"".join(data[i * BS : (i + 1) * BS].tobytes() for i in (5, 3, 9))


def test_cli_defrag(tmp_path):
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, block_size=BS, background=False) as c:
        models = build(c, 6)
    out = nx("defrag", path, "v").stdout
    assert out.startswith("defrag: 1 of 1 vDisk(s) rewritten") and "-> 4 for 2 1 MiB windows" in out
    assert "0 of 2 vDisk(s)" in nx("defrag", path, "--max-bytes", "4K").stdout
    one_error_line(nx("defrag", path, "nosuch", rc=1), "no vDisk 'nosuch'")
    with nxstore.Cluster.open(path, background=False) as c:
        check_all(c, models)


# -- fault injection: SIGKILL in the middle of a relocation ----------------------------------
_CHILD = """
import os, signal, sys
import nxstore
from nxstore.store import extent_maintenance as em
from nxstore.store.extent_store import ExtentStore
path, point = sys.argv[1], sys.argv[2]
def die(*_args, **_kw):
    os.kill(os.getpid(), signal.SIGKILL)
append, calls = em._append_copies, []
def append_then(store, *args):
    out = append(store, *args)
    calls.append(1)
    if point in ("copied", "torn") or (point == "mid" and len(calls) == 3):
        die()  # copies written (page cache only), not synced, the table unchanged
    return out
em._append_copies = append_then
if point == "mid":
    em.RELOCATE_BATCH_BYTES = 16 * 4096  # many batches: two are synced and named in RAM
if point == "synced":
    ExtentStore.checkpoint = die  # copies synced and named in RAM, the checkpoint not taken
c = nxstore.Cluster.open(path, background=False)
c.defragment()
print("relocation finished without reaching the kill point")
"""


@pytest.mark.parametrize("point", ["copied", "torn", "mid", "synced"])
def test_kill_during_relocation_loses_nothing(tmp_path, point):
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, block_size=BS, background=False, collapse_depth=DEEP) as c:
        models = build(c, 7)
        c.drain()
        groups = set(os.listdir(os.path.join(path, "extents")))
    proc = subprocess.run([sys.executable, "-c", _CHILD, path, point], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-3000:]
    if point == "torn":  # the machine lost the unsynced copies: the new group's tail is cut
        new = sorted(set(os.listdir(os.path.join(path, "extents"))) - groups)
        assert new and new[-1].startswith("EG")
        gpath = os.path.join(path, "extents", new[-1])
        os.truncate(gpath, os.path.getsize(gpath) // 2 + 1000)
    with nxstore.Cluster.open(path, background=False) as c:
        check_all(c, models)
        assert c.scrub() == []
        c.defragment()
        c.gc()
        check_all(c, models)
        assert c.scrub() == []
        assert (runs(c, "k") <= 2).all()


def test_a_bad_unsynced_copy_never_displaces_the_good_one(tmp_path):
    """A crash (power loss) can leave a relocated copy half written past the
    checkpoint while the old copy is intact: open must keep the old one."""
    rng = np.random.default_rng(8)
    data = rng.integers(0, 256, 8 * BS, dtype=np.uint8)
    path = str(tmp_path / "x")
    with ExtentStore.open(path, BS, create=True) as s:
        ids = s.put_blocks(data)
        s.checkpoint()
        old = s.locations(ids)
        s.checkpoint = lambda: None  # killed before relocate's checkpoint
        assert s.relocate(ids, 1 << 20)["extents_moved"] == 8
        g, o, _ = s.locations(ids[[2]])
        s.close(checkpoint=False)
    with open(os.path.join(path, group_file_name(int(g[0]))), "r+b") as f:
        f.seek(int(o[0]) + HEADER_BYTES + 7)
        f.write(b"\x00\x01\x02")
    with ExtentStore.open(path, BS) as s:
        assert [int(a[2]) for a in s.locations(ids)[:2]] == [int(old[0][2]), int(old[1][2])]
        out = np.empty(8 * BS, np.uint8)
        s.read_blocks(ids, out)
        assert (out == data).all()
