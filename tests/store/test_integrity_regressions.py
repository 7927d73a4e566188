"""Issue 11 regressions, one per finding: catalogue WAL rollback, an extent group cut after a
crash, a frozen delta cut, ids never reused, fsck on a cluster that does not open."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from model import pattern

import nxstore
from nxstore.errors import Corruption, GenerationUnverifiable, NxError

BS = 4096


def _child(path: str, body: str) -> None:
    """Run `body` against the open cluster `c` in a child process that kills itself with
    SIGKILL at the end (so nothing is closed or checkpointed)."""
    code = textwrap.dedent(f"""
        import os, random, signal, nxstore
        c = nxstore.Cluster.open({path!r}, background=False)
    """) + textwrap.dedent(body) + "\nos.kill(os.getpid(), signal.SIGKILL)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def _read_all_or_error(path: str) -> dict[str, bytes] | NxError:
    """Every vDisk's and snapshot's bytes, or the nxstore error that stopped the reading."""
    try:
        with nxstore.Cluster.open(path, background=False) as c:
            out = {}
            for vd in c.vdisks():
                out[vd.name] = vd.read(0, vd.size)
                for s in vd.snapshots():
                    out[f"{vd.name}@{s.name}"] = s.read(0, s.size)
            problems = c.scrub()
            if problems:
                return Corruption("; ".join(problems))
            return out
    except NxError as exc:
        return exc


def test_damaged_wal_frame_is_refused_not_rolled_back(tmp_path):
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, block_size=BS, background=False) as c:
        c.create_vdisk("a", 1 << 20).flush()
    _child(path, """
        vd = c.vdisk("a")
        for i in range(12):
            vd.write(i * 4096, bytes([i + 1]) * 4096)
            vd.flush()
            c.clone(vd.snapshot(f"s{i}"), f"clone{i}")
    """)
    wal = os.path.join(path, "catalog.db-wal")
    assert os.path.getsize(wal) > 100_000
    _flip(wal, os.path.getsize(wal) // 3)
    with pytest.raises(Corruption, match="committed transactions were lost"):
        nxstore.Cluster.open(path, background=False)
    maps = sorted(os.listdir(os.path.join(path, "maps")))
    with pytest.raises(Corruption):
        nxstore.Cluster.open(path, background=False)
    assert sorted(os.listdir(os.path.join(path, "maps"))) == maps  # no "orphans" deleted
    report = nxstore.fsck.check(path, repair=True)  # never papered over
    assert not report.healthy and "committed transactions were lost" in report.problems[0]


def test_generation_file_damage(tmp_path):
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, block_size=BS, background=False) as c:
        c.create_vdisk("a", 1 << 20)
        c.create_vdisk("b", 1 << 20)
    gen = os.path.join(path, "catalog.gen")
    _flip(gen, 20)  # one slot: harmless, noted, rewritten
    with nxstore.Cluster.open(path, background=False) as c:
        assert any("generation slot" in p for p in c.scrub())
    with nxstore.Cluster.open(path, background=False) as c:
        assert c.scrub() == []
    _flip(gen, 20)
    _flip(gen, 52)  # both slots: cannot verify
    with pytest.raises(GenerationUnverifiable):
        nxstore.Cluster.open(path, background=False)
    report = nxstore.fsck.check(path, repair=True)
    assert report.healthy and any("rewritten from the catalogue" in r for r in report.repairs)
    with nxstore.Cluster.open(path, background=False) as c:
        assert [vd.name for vd in c.vdisks()] == ["a", "b"]


@pytest.mark.parametrize("cut", [64, "half"])
def test_extent_group_cut_after_crash_never_reverts_a_flushed_write(tmp_path, cut):
    path = str(tmp_path / "c")
    old = pattern(1, 1 << 20)
    with nxstore.Cluster.create(path, block_size=BS, background=False) as c:
        c.create_vdisk("v", 2 << 20).write(0, old)
    _child(path, """
        vd = c.vdisk("v")
        vd.write(0, random.Random(2).randbytes(1 << 20))   # a bypass write: extents + a MAP record
        vd.flush()                              # acknowledged
    """)
    groups = sorted(f for f in os.listdir(os.path.join(path, "extents")) if f.endswith(".eg"))
    eg = os.path.join(path, "extents", groups[-1])
    size = os.path.getsize(eg)
    os.truncate(eg, size - 64 if cut == 64 else size // 2)
    got = _read_all_or_error(path)
    assert isinstance(got, Corruption) or got["v"][: 1 << 20] == pattern(2, 1 << 20)
    assert isinstance(got, Corruption), "a cut group cannot leave every flushed block intact"


@pytest.mark.parametrize("cut", [1, 64])
def test_frozen_delta_cut_is_detected(tmp_path, cut):
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, block_size=BS, background=False) as c:
        vd = c.create_vdisk("v", 1 << 20)
        for i in range(4):
            vd.write(i * BS, bytes([i + 1]) * BS)
            vd.drain()  # persists the head map: one delta record per round
        vd.snapshot("s")
        vd.write(0, b"\xee" * BS)
        layer = vd.snapshots()[0].layer_id
    delta = os.path.join(path, "maps", f"L{layer:016x}.delta")
    os.truncate(delta, os.path.getsize(delta) - cut)
    got = _read_all_or_error(path)
    assert isinstance(got, Corruption) and f"L{layer:016x}.delta" in str(got)


def test_lost_extent_ids_are_never_reused(tmp_path):
    """A durable map naming an extent that damage removed must read as an error, also
    after new data was written: the id may not be handed to another block."""
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, block_size=BS, background=False) as c:
        vd = c.create_vdisk("v", 4 << 20)
        vd.write(0, pattern(3, 1 << 20))
        vd.flush()
    _child(path, """
        vd = c.vdisk("v")
        vd.write(1 << 20, random.Random(4).randbytes(1 << 20))
        vd.flush()
        c.drain()          # the head map names the new extents durably
    """)
    groups = sorted(f for f in os.listdir(os.path.join(path, "extents")) if f.endswith(".eg"))
    eg = os.path.join(path, "extents", groups[-1])
    os.truncate(eg, os.path.getsize(eg) - (512 << 10))  # the newest extents are gone
    with nxstore.Cluster.open(path, background=False) as c:
        vd = c.vdisk("v")
        vd.write(2 << 20, pattern(5, 1 << 20))  # new extents: must get new ids
        vd.flush()
        with pytest.raises(Corruption, match="not in the store"):
            vd.read(1 << 20, 1 << 20)
        assert vd.read(2 << 20, 1 << 20) == pattern(5, 1 << 20)
        assert any("missing" in p for p in c.scrub())


def test_fsck_salvages_a_damaged_oplog_and_lists_the_lost_writes(tmp_path):
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, block_size=BS, background=False) as c:
        vd = c.create_vdisk("db", 1 << 20)
        for i in range(6):
            vd.write(i * BS, bytes([65 + i]) * 100)
            vd.flush()
    seg = os.path.join(path, "oplog", sorted(os.listdir(os.path.join(path, "oplog")))[-1])
    _flip(seg, 64 + 148 + 60)  # inside the second record
    report = nxstore.fsck.check(path)
    assert not report.healthy and "record checksum mismatch" in report.problems[0]
    assert os.path.getsize(seg) > 64 + 148 * 2  # checking changed nothing
    report = nxstore.fsck.check(path, repair=True)
    assert report.healthy
    assert [(r.seq, r.offset, r.acknowledged) for r in report.lost] == [
        (i + 1, i * BS, True) for i in range(2, 6)]
    kept = os.listdir(os.path.join(path, "oplog", "salvaged"))
    assert kept and kept[0].startswith(os.path.basename(seg))
    with nxstore.Cluster.open(path, background=False) as c:
        vd = c.vdisk("db")
        assert vd.read(0, 100) == b"A" * 100  # what came before the damage stays
        assert vd.read(BS, 100) == bytes(100)  # the damaged record's write is gone, said so


def test_fsck_cli(tmp_path):
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, block_size=BS, background=False) as c:
        vd = c.create_vdisk("db", 1 << 20)
        for i in range(3):
            vd.write(i * BS, b"x" * 100)
            vd.flush()
    exe = [sys.executable, "-m", "nxstore.cli"]
    ok = subprocess.run([*exe, "fsck", path], capture_output=True, text=True)
    assert ok.returncode == 0 and "clean" in ok.stdout
    seg = os.path.join(path, "oplog", sorted(os.listdir(os.path.join(path, "oplog")))[-1])
    _flip(seg, 64 + 20)
    bad = subprocess.run([*exe, "vdisk", "list", path], capture_output=True, text=True)
    assert bad.returncode == 1 and "nxstore fsck" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    bad = subprocess.run([*exe, "fsck", path], capture_output=True, text=True)
    assert bad.returncode == 1 and "problem:" in bad.stdout
    fixed = subprocess.run([*exe, "fsck", path, "--repair"], capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.count("lost: seq") == 2 and "(acknowledged)" in fixed.stdout
