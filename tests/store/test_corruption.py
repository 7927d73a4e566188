"""Guarantee 4: a flipped byte in an extent group, an OpLog segment, the fingerprint
index, a map layer file or the SQLite catalogue is reported (Corruption, naming the
object) or repaired from a redundant copy — never returned as data; scrub() lists it."""

from __future__ import annotations

import glob
import os

import pytest
from model import pattern

import nxstore
from nxstore.constants import EXTENT_DIR, INDEX_FILE, MAP_DIR, OPLOG_DIR
from nxstore.errors import Corruption
from nxstore.store.oplog_record import RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES

BS = 4096
NBLK = 32
SIZE = NBLK * BS


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        assert b, f"{path} has no byte {offset}"
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def build(make_cluster, drained: bool = True, deep: bool = False) -> tuple[str, dict[str, bytes]]:
    """A closed cluster with two vDisks of incompressible unique data (and a snapshot).
    deep: write "precious-disk" in 12 pieces with a snapshot after each (a chain
    collapse then writes a flattened .base layer)."""
    c = make_cluster()
    expected = {}
    for i, name in enumerate(["precious-disk", "other"]):
        vd = c.create_vdisk(name, SIZE)
        data = pattern(100 + i, SIZE)
        if deep and i == 0:
            step = SIZE // 12 // BS * BS
            for j in range(12):
                vd.write(j * step, data[j * step : (j + 1) * step if j < 11 else SIZE])
                vd.snapshot(f"deep{j}")
        else:
            vd.write(0, data)
        vd.flush()
        expected[name] = data
    c.vdisk("other").snapshot("snap")
    if drained:
        c.drain()
    path = c.path
    c.close()
    return path, expected


def never_wrong(path: str, expected: dict[str, bytes], **kw) -> tuple[list[str], int]:
    """Open (Corruption there counts as reported) and read every block of every vDisk
    and snapshot one by one: each read returns the exact bytes or raises Corruption.
    Returns (scrub problems, number of reads that raised); ([<open error>], -1) if the
    open itself reported the damage."""
    try:
        c = nxstore.Cluster.open(path, background=False, **kw)
    except Corruption as exc:
        return [str(exc)], -1
    bad = 0
    try:
        images = dict(expected)
        images["other@snap"] = expected["other"]
        for name, data in images.items():
            obj = c.snapshot("other", "snap") if "@" in name else c.vdisk(name)
            for b in range(NBLK):
                try:
                    got = obj.read(b * BS, BS)
                except Corruption as exc:
                    assert str(exc), "Corruption without a message"
                    bad += 1
                    continue
                assert got == data[b * BS : (b + 1) * BS], f"{name} block {b}: WRONG DATA returned"
        problems = c.scrub()
    finally:
        c.close()
    return problems, bad


def test_healthy_cluster_scrubs_clean(make_cluster):
    path, expected = build(make_cluster)
    problems, bad = never_wrong(path, expected)
    assert problems == [] and bad == 0


@pytest.mark.parametrize("where", ["payload-first", "payload-middle", "header-middle", "last"])
def test_flipped_byte_in_extent_group(make_cluster, where):
    path, expected = build(make_cluster)
    groups = sorted(glob.glob(os.path.join(path, EXTENT_DIR, "EG*.eg")))
    assert groups, "no extent group files"
    eg = groups[0]
    size = os.path.getsize(eg)
    record = 64 + BS  # header + an incompressible block
    offset = {
        "payload-first": 64 + 100,
        "payload-middle": (size // record // 2) * record + 64 + 7,
        "header-middle": (size // record // 2) * record + 9,  # the extent id field
        "last": size - 1,
    }[where]
    flip(eg, offset)
    problems, bad = never_wrong(path, expected)
    assert bad != 0, "a flipped extent byte went unnoticed by every read"
    assert problems, "scrub found nothing"
    if bad > 0:
        assert any("EG" in p or "extent" in p for p in problems), problems


def test_flipped_byte_in_oplog_middle_record(make_cluster):
    c = make_cluster()
    vd = c.create_vdisk("v", SIZE)
    n, rec = 12, 1000
    for i in range(n):
        vd.write(i * BS + 7, pattern(i, rec))
    vd.flush()
    path = c.path
    c.close()
    segs = sorted(glob.glob(os.path.join(path, OPLOG_DIR, "*.seg")))
    assert segs, "the writes are not in an OpLog segment"
    seg = segs[-1]
    stride = RECORD_HEADER_BYTES + rec
    assert (os.path.getsize(seg) - SEGMENT_HEADER_BYTES) % stride == 0, "unexpected records"
    k = n // 2
    flip(seg, SEGMENT_HEADER_BYTES + k * stride + RECORD_HEADER_BYTES + 500)  # payload of record k
    with pytest.raises(Corruption, match="oplog|OpLog|seg"):
        nxstore.Cluster.open(path, background=False)
    with nxstore.Cluster.open(path, background=False, salvage=True) as c:
        vd = c.vdisk("v")
        for i in range(n):
            got = vd.read(i * BS + 7, rec)
            if i < k:  # before the damage: kept
                assert got == pattern(i, rec), f"record {i} lost by salvage"
            else:  # the damaged record and (maybe) what follows: dropped, never garbage
                assert got in (pattern(i, rec), bytes(rec)), f"record {i} reads garbage"
        assert vd.read(k * BS + 7, rec) == bytes(rec), "the damaged record was applied"
        assert c.scrub() == []
    with nxstore.Cluster.open(path, background=False) as c:  # salvage repaired the log for good
        assert c.vdisk("v").read(7, rec) == pattern(0, rec)


def test_flipped_byte_in_fingerprint_index(make_cluster):
    path, expected = build(make_cluster)
    index = os.path.join(path, EXTENT_DIR, INDEX_FILE)
    assert os.path.exists(index)
    flip(index, os.path.getsize(index) // 2)
    flip(index, 20)
    problems, bad = never_wrong(path, expected)
    assert bad == 0, "the index is redundant (rebuilt from the extent table): nothing is lost"
    with nxstore.Cluster.open(path, background=False) as c:
        # the rebuilt index still deduplicates: the same data again stores nothing new
        before = c.stats()["stored_bytes"]
        c.create_vdisk("again", SIZE).write(0, expected["precious-disk"])
        c.drain()
        assert c.stats()["stored_bytes"] <= before + BS
        assert c.vdisk("again").read(0, SIZE) == expected["precious-disk"]
        assert c.scrub() == []


@pytest.mark.parametrize("suffix", ["base", "delta"])
def test_flipped_byte_in_map_layer(make_cluster, suffix):
    path, expected = build(make_cluster, deep=suffix == "base")
    files = [f for f in sorted(glob.glob(os.path.join(path, MAP_DIR, f"L*.{suffix}")))
             if os.path.getsize(f) > 64]
    if not files:
        pytest.skip(f"no non-trivial .{suffix} map file in this layout")
    for f in files:  # damage every such file: whichever layer holds the data
        flip(f, os.path.getsize(f) - 3)
    problems, bad = never_wrong(path, expected)
    assert bad != 0, "a damaged map layer went unnoticed"
    assert problems and any("L0" in p or "map" in p for p in problems), problems


def test_flipped_byte_in_catalogue(make_cluster):
    path, expected = build(make_cluster)
    db = os.path.join(path, "catalog.db")
    assert not os.path.exists(db + "-wal") or os.path.getsize(db + "-wal") == 0, (
        "close() left the catalogue in the WAL")
    with open(db, "rb") as f:
        raw = f.read()
    at = raw.find(b"precious-disk")
    assert at >= 0, "vDisk name not found in catalog.db"
    flip(db, at + 3)
    problems, bad = never_wrong(path, expected)
    assert bad == -1 or problems, "a damaged catalogue row went unnoticed"
    if bad == -1:
        assert "catalog" in problems[0] or "vdisk" in problems[0], problems


def test_scrub_names_the_damage_while_open(make_cluster):
    """Damage under a running cluster (the page cache sees it): reads and scrub report it."""
    c = make_cluster()
    vd = c.create_vdisk("v", SIZE)
    data = pattern(7, SIZE)
    vd.write(0, data)
    c.drain()
    assert c.scrub() == []
    eg = sorted(glob.glob(os.path.join(c.path, EXTENT_DIR, "EG*.eg")))[0]
    flip(eg, 64 + 5)
    problems = c.scrub()
    assert problems and any(os.path.basename(eg) in p or "extent" in p for p in problems)
    raised = 0
    for b in range(NBLK):
        try:
            assert vd.read(b * BS, BS) == data[b * BS : (b + 1) * BS], "wrong data returned"
        except Corruption as exc:
            assert "v" in str(exc)
            raised += 1
    assert raised >= 1
