"""The `nxstore` command line, run as a real console script in subprocesses.

Every command, its output and exit status (0 ok, 1 operational error, 2 usage,
130 interrupted), one-line errors without tracebacks, and raw image import/export
round trips (sparse, duplicate regions, snapshots).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from nxstore.cli import main
from nxstore.cli.common import parse_size

MiB = 1 << 20
_SCRIPT = shutil.which("nxstore", path=os.path.dirname(sys.executable))
# The console script when installed next to this interpreter, else the module.
NXSTORE = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "nxstore.cli"]
TIMEOUT = 120


def nx(*args: object, rc: int = 0, **kwargs) -> subprocess.CompletedProcess:
    """Run `nxstore ARGS`; assert the exit status and that no traceback leaked."""
    proc = subprocess.run(
        [*NXSTORE, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT,
        stdin=subprocess.DEVNULL, **kwargs,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == rc, (
        f"nxstore {' '.join(map(str, args))}: rc {proc.returncode} != {rc}\n"
        f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
    )
    return proc


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The single `nxstore: error: ...` line of a failed command."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("nxstore: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def cl(tmp_path) -> str:
    """A fresh cluster (4 KiB blocks) made by `nxstore create`."""
    path = str(tmp_path / "cluster")
    nx("create", path, "--block-size", "4K")
    return path


def make_image(path, size: int, seed: int = 7) -> bytes:
    """A sparse raw image with holes, an 8 MiB region repeated 3 times (dedup),
    compressible text, scattered small unaligned writes and an unaligned tail.
    Returns its bytes."""
    rnd = __import__("random").Random(seed)
    unique = rnd.randbytes(8 * MiB)
    text = b"".join(b"line %08d: the quick brown fox jumps over the lazy dog\n" % i
                    for i in range(60_000))[: 3 * MiB]
    with open(path, "wb") as f:
        f.truncate(size)
        for off in (0, 12 * MiB, 29 * MiB):  # identical regions
            if off + len(unique) <= size - 1000:
                f.seek(off)
                f.write(unique)
        if 24 * MiB + 4096 <= size - 1000:
            f.seek(21 * MiB + 4096)
            f.write(text)
        for _ in range(50):  # small writes at odd offsets (data beyond 37 MiB: the tail only)
            f.seek(rnd.randrange(0, min(size, 37 * MiB) - 100))
            f.write(rnd.randbytes(rnd.randrange(1, 100)))
        f.seek(size - 777)
        f.write(b"tail" * 100)
    with open(path, "rb") as f:
        return f.read()


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# -- in-process units ----------------------------------------------------------------
@pytest.mark.parametrize("text,value", [
    ("4096", 4096), ("4K", 4096), ("4k", 4096), ("512M", 512 * MiB), ("10G", 10 << 30),
    ("10GiB", 10 << 30), ("1.5G", 3 << 29), ("2T", 2 << 40), (" 64KB ", 65536),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "10X", "-1G", "0", "0G", "1.0000001K", "G", "1e9", "10 G B"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_keyboard_interrupt_exits_130(monkeypatch, capsys, tmp_path):
    from nxstore.cli import cluster_cmds

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster_cmds, "cmd_info", interrupted)
    assert main(["info", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "nxstore: interrupted\n"


def test_unexpected_exception_is_one_line(monkeypatch, capsys, tmp_path):
    from nxstore.cli import cluster_cmds

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cluster_cmds, "cmd_info", broken)
    assert main(["info", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nxstore: error: internal error: RuntimeError: boom")


# -- usage -----------------------------------------------------------------------------
def test_help_version_and_usage_errors(tmp_path):
    out = nx("--help").stdout
    for cmd in ("create", "info", "container", "vdisk", "snapshot", "clone", "restore",
                "import", "export", "scrub", "gc", "drain"):
        assert cmd in out
    assert nx("--version").stdout.startswith("nxstore ")
    one_error_line(nx(rc=2), "required")
    one_error_line(nx("frobnicate", rc=2), "invalid choice")
    one_error_line(nx("vdisk", "create", str(tmp_path), rc=2), "required")
    one_error_line(nx("vdisk", "create", str(tmp_path), "db", "10X", rc=2), "bad size '10X'")
    one_error_line(nx("vdisk", "create", str(tmp_path), "db", "0", rc=2), "bad size")
    one_error_line(nx("create", str(tmp_path / "c"), "--block-size", "big", rc=2), "bad size")


def test_python_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "nxstore.cli", "--version"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0 and proc.stdout.startswith("nxstore ")


# -- cluster commands ------------------------------------------------------------------
def test_create_and_info(tmp_path):
    path = tmp_path / "c"
    assert "created cluster" in nx("create", path).stdout
    info = nx("info", path).stdout
    for key in ("block size:", "logical data:", "stored data:", "dedup ratio:",
                "compression ratio:", "OpLog:"):
        assert key in info
    stats = json.loads(nx("info", path, "--json").stdout)
    assert stats["block_size"] == 16384
    for key in ("logical_bytes", "unique_bytes", "stored_bytes", "dedup_ratio",
                "compression_ratio", "oplog_bytes", "extents"):
        assert key in stats
    assert stats["logical_bytes"] == 0


def test_create_errors(tmp_path, cl):
    one_error_line(nx("create", cl, rc=1), "exists")
    one_error_line(nx("create", tmp_path / "bs", "--block-size", "3000", rc=1), "block_size")
    one_error_line(nx("create", tmp_path / "no" / "such" / "dir", rc=1))


def test_missing_cluster(tmp_path):
    for args in (["info"], ["vdisk", "list"], ["scrub"], ["gc"], ["drain"], ["snapshot", "list"]):
        one_error_line(nx(*args, tmp_path / "nope", rc=1), "no nxstore cluster")


def test_containers(cl):
    assert "created container fast" in nx("container", "create", cl, "fast", "--no-dedup").stdout
    nx("container", "create", cl, "safe", "--verify-dedup", "--no-compression")
    rows = {r["name"]: r for r in json.loads(nx("container", "list", cl, "--json").stdout)}
    assert set(rows) == {"default", "fast", "safe"}
    assert rows["fast"]["dedup"] is False and rows["fast"]["compression"] is True
    assert rows["safe"]["verify_dedup"] is True and rows["safe"]["compression"] is False
    listing = nx("container", "list", cl).stdout
    assert listing.splitlines()[0].split() == ["NAME", "DEDUP", "COMPRESSION", "VERIFY-DEDUP"]
    one_error_line(nx("container", "create", cl, "fast", rc=1), "exists")
    nx("vdisk", "create", cl, "nodedup", "1M", "--container", "fast")
    assert json.loads(nx("vdisk", "list", cl, "--json").stdout)[0]["container"] == "fast"
    one_error_line(nx("vdisk", "create", cl, "x", "1M", "--container", "nope", rc=1), "nope")


def test_locked_cluster(cl):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, nxstore\n"
         f"c = nxstore.Cluster.open({cl!r})\n"
         "print('open', flush=True)\n"
         "sys.stdin.read()\n"
         "c.close()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        one_error_line(nx("info", cl, rc=1), "another process", str(holder.pid))
        one_error_line(nx("vdisk", "create", cl, "db", "1G", rc=1), "another process")
    finally:
        holder.communicate("", timeout=TIMEOUT)
    assert holder.returncode == 0
    nx("info", cl)  # usable again once released
    assert json.loads(nx("vdisk", "list", cl, "--json").stdout) == []


# -- vDisks ------------------------------------------------------------------------------
def test_vdisk_lifecycle(cl):
    assert "created vDisk db (10.0 GiB" in nx("vdisk", "create", cl, "db", "10G").stdout
    nx("vdisk", "create", cl, "small", "4096")
    one_error_line(nx("vdisk", "create", cl, "db", "1G", rc=1), "exists")
    one_error_line(nx("vdisk", "create", cl, "bad@name", "1G", rc=1), "name")
    rows = {r["name"]: r for r in json.loads(nx("vdisk", "list", cl, "--json").stdout)}
    assert rows["db"]["size"] == 10 << 30 and rows["small"]["size"] == 4096
    assert rows["db"]["container"] == "default" and rows["db"]["snapshots"] == 0
    lines = nx("vdisk", "list", cl).stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "CONTAINER", "SNAPSHOTS"]
    assert lines[1].split()[:3] == ["db", "10.0", "GiB"]

    nx("vdisk", "resize", cl, "db", "12G")
    one_error_line(nx("vdisk", "resize", cl, "db", "1G", rc=1), "grow only")
    one_error_line(nx("vdisk", "resize", cl, "nope", "1G", rc=1), "nope")
    assert json.loads(nx("vdisk", "list", cl, "--json").stdout)[0]["size"] == 12 << 30

    assert "deleted vDisk small" in nx("vdisk", "delete", cl, "small").stdout
    one_error_line(nx("vdisk", "delete", cl, "small", rc=1), "small")
    assert [r["name"] for r in json.loads(nx("vdisk", "list", cl, "--json").stdout)] == ["db"]


def test_delete_vdisk_with_snapshots(cl):
    nx("vdisk", "create", cl, "db", "1M")
    nx("snapshot", "create", cl, "db", "s1")
    one_error_line(nx("vdisk", "delete", cl, "db", rc=1), "snapshot")
    nx("vdisk", "delete", cl, "db", "--with-snapshots")
    assert json.loads(nx("vdisk", "list", cl, "--json").stdout) == []
    assert json.loads(nx("snapshot", "list", cl, "--json").stdout) == []


# -- import / export -------------------------------------------------------------------------
def test_import_export_round_trip_sparse(cl, tmp_path):
    size = 61 * MiB + 12345  # not a multiple of the chunk or the block size
    img = tmp_path / "disk.raw"
    data = make_image(img, size)
    proc = nx("import", cl, "db", img, "--create")
    assert proc.stderr == ""  # no progress bar: stderr is not a terminal
    assert "imported" in proc.stdout and "zeros skipped" in proc.stdout
    assert json.loads(nx("vdisk", "list", cl, "--json").stdout)[0]["size"] == size

    out = tmp_path / "out.raw"
    assert "exported db" in nx("export", cl, "db", out).stdout
    assert os.path.getsize(out) == size
    assert sha(out) == hashlib.sha256(data).hexdigest()
    assert os.stat(out).st_blocks * 512 < 40 * MiB  # holes stayed holes

    stats = json.loads(nx("info", cl, "--json").stdout)
    assert stats["dedup_ratio"] > 1.5  # the 8 MiB region is stored once
    assert stats["stored_bytes"] < 16 * MiB

    nx("drain", cl)
    out2 = tmp_path / "out2.raw"
    nx("export", cl, "db", out2)  # again after a drain and reopen
    assert sha(out2) == sha(out)
    nx("scrub", cl)


def test_import_into_existing_vdisk_replaces_content(cl, tmp_path):
    full = tmp_path / "full.raw"
    full.write_bytes(os.urandom(6 * MiB))
    nx("vdisk", "create", cl, "db", "8M")
    nx("import", cl, "db", full)
    sparse = tmp_path / "sparse.raw"  # real holes and a written all-zero chunk
    with open(sparse, "wb") as f:
        f.truncate(5 * MiB)
        f.seek(2 * MiB + 100)
        f.write(b"x" * 100)
        f.seek(4 * MiB)
        f.write(bytes(MiB))
    data = sparse.read_bytes()
    nx("import", cl, "db", sparse)  # zeros must replace the old data, not be skipped
    out = tmp_path / "out.raw"
    nx("export", cl, "db", out)
    exported = out.read_bytes()
    assert exported[: 5 * MiB] == data
    assert exported[5 * MiB : 6 * MiB] == full.read_bytes()[5 * MiB :]  # beyond the image: kept
    assert exported[6 * MiB :] == bytes(2 * MiB)


def test_import_errors(cl, tmp_path):
    one_error_line(nx("import", cl, "db", tmp_path / "missing.raw", "--create", rc=1),
                   "No such file", "missing.raw")
    img = tmp_path / "img.raw"
    img.write_bytes(b"a" * 3 * MiB)
    nx("vdisk", "create", cl, "small", "1M")
    one_error_line(nx("import", cl, "small", img, rc=1), "does not fit")
    one_error_line(nx("import", cl, "nope", img, rc=1), "nope")
    one_error_line(nx("import", cl, "small", img, "--create", rc=1), "exists")
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    one_error_line(nx("import", cl, "e", empty, "--create", rc=1), "empty")
    one_error_line(nx("import", cl, "d", tmp_path, "--create", rc=1))  # a directory
    assert [r["name"] for r in json.loads(nx("vdisk", "list", cl, "--json").stdout)] == ["small"]


def test_export_errors(cl, tmp_path):
    nx("vdisk", "create", cl, "db", "1M")
    one_error_line(nx("export", cl, "nope", tmp_path / "o", rc=1), "nope")
    one_error_line(nx("export", cl, "db@nosnap", tmp_path / "o", rc=1), "nosnap")
    one_error_line(nx("export", cl, "db@", tmp_path / "o", rc=1), "VDISK@SNAPSHOT")
    one_error_line(nx("export", cl, "db", tmp_path / "no" / "dir" / "o", rc=1), "No such file")
    assert not (tmp_path / "o").exists()


# -- snapshots, clones, restore ---------------------------------------------------------------
def test_snapshot_clone_restore_export(cl, tmp_path):
    v1 = tmp_path / "v1.raw"
    data1 = make_image(v1, 9 * MiB, seed=1)
    nx("import", cl, "db", v1, "--create")
    assert "created snapshot db@s1" in nx("snapshot", "create", cl, "db", "s1").stdout
    one_error_line(nx("snapshot", "create", cl, "db", "s1", rc=1), "s1")

    v2 = tmp_path / "v2.raw"
    data2 = make_image(v2, 9 * MiB, seed=2)
    assert data2 != data1
    nx("import", cl, "db", v2)
    nx("snapshot", "create", cl, "db@s2")  # the VDISK@NAME form
    one_error_line(nx("snapshot", "create", cl, "db", rc=1), "missing snapshot NAME")

    snaps = json.loads(nx("snapshot", "list", cl, "db", "--json").stdout)
    assert [(s["vdisk"], s["name"], s["size"]) for s in snaps] == [
        ("db", "s1", 9 * MiB), ("db", "s2", 9 * MiB)]
    assert snaps[0]["created_at"] <= snaps[1]["created_at"]
    listing = nx("snapshot", "list", cl).stdout.splitlines()
    assert listing[0].split() == ["VDISK", "SNAPSHOT", "SIZE", "CREATED"] and len(listing) == 3
    one_error_line(nx("snapshot", "list", cl, "nope", rc=1), "nope")

    # export of a snapshot while the head has moved on
    nx("export", cl, "db@s1", tmp_path / "s1.raw")
    assert (tmp_path / "s1.raw").read_bytes() == data1
    nx("export", cl, "db", tmp_path / "head.raw")
    assert (tmp_path / "head.raw").read_bytes() == data2

    # clone s1, change the clone: s1 and the head are unaffected
    assert "clone of db@s1" in nx("clone", cl, "db@s1", "db-test").stdout
    one_error_line(nx("clone", cl, "db@s1", "db-test", rc=1), "exists")
    one_error_line(nx("clone", cl, "db", "x", rc=1), "VDISK@SNAPSHOT")
    one_error_line(nx("clone", cl, "db@nope", "x", rc=1), "nope")
    patch = tmp_path / "patch.raw"
    patch.write_bytes(b"\xee" * MiB)
    nx("import", cl, "db-test", patch)
    nx("export", cl, "db-test", tmp_path / "clone.raw")
    assert (tmp_path / "clone.raw").read_bytes() == b"\xee" * MiB + data1[MiB:]
    nx("export", cl, "db@s1", tmp_path / "s1b.raw")
    assert (tmp_path / "s1b.raw").read_bytes() == data1

    # restore the head to s1
    assert "restored vDisk db to snapshot s1" in nx("restore", cl, "db@s1").stdout
    one_error_line(nx("restore", cl, "db@nope", rc=1), "nope")
    nx("export", cl, "db", tmp_path / "restored.raw")
    assert (tmp_path / "restored.raw").read_bytes() == data1

    # delete a snapshot the clone was made from: the clone still reads the same
    assert "deleted snapshot db@s1" in nx("snapshot", "delete", cl, "db", "s1").stdout
    one_error_line(nx("snapshot", "delete", cl, "db@s1", rc=1), "s1")
    nx("snapshot", "delete", cl, "db@s2")
    assert json.loads(nx("snapshot", "list", cl, "--json").stdout) == []
    nx("gc", cl)
    nx("export", cl, "db-test", tmp_path / "clone2.raw")
    assert sha(tmp_path / "clone2.raw") == sha(tmp_path / "clone.raw")
    nx("export", cl, "db", tmp_path / "restored2.raw")
    assert (tmp_path / "restored2.raw").read_bytes() == data1
    assert "healthy" in nx("scrub", cl).stdout


# -- upkeep --------------------------------------------------------------------------------
def test_drain_gc_scrub(cl, tmp_path):
    img = tmp_path / "img.raw"
    img.write_bytes(os.urandom(2 * MiB + 1000))  # the unaligned tail goes through the OpLog
    nx("import", cl, "db", img, "--create")
    assert "drained" in nx("drain", cl).stdout
    assert json.loads(nx("info", cl, "--json").stdout)["extents"] > 0
    nx("vdisk", "delete", cl, "db")
    assert nx("gc", cl).stdout.startswith("gc: stored ")
    assert "healthy" in nx("scrub", cl).stdout
    assert json.loads(nx("info", cl, "--json").stdout)["stored_bytes"] == 0


def test_scrub_reports_corruption(cl, tmp_path):
    img = tmp_path / "img.raw"
    img.write_bytes(os.urandom(4 * MiB))
    nx("import", cl, "db", img, "--create")
    nx("drain", cl)
    groups = sorted(glob.glob(os.path.join(cl, "extents", "*.eg")), key=os.path.getsize)
    assert groups, os.listdir(os.path.join(cl, "extents"))
    with open(groups[-1], "r+b") as f:  # flip one byte in the middle of the biggest group
        f.seek(os.path.getsize(groups[-1]) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = nx("scrub", cl, rc=1)
    assert proc.stdout.strip(), "the problems are listed on stdout"
    one_error_line(proc, "scrub found", "problem")
    one_error_line(nx("export", cl, "db", tmp_path / "out.raw", rc=1))  # never wrong data
    assert not (tmp_path / "out.raw").exists()  # the partial output was removed


def test_verbose_logging_goes_to_stderr(cl):
    proc = nx("-vv", "vdisk", "list", cl)
    assert proc.stdout.splitlines()[0].startswith("NAME")
    proc = nx("vdisk", "list", cl, "-v")  # -v after the command works too
    assert proc.stdout.splitlines()[0].startswith("NAME")


def test_sigint_during_export_exits_130(cl, tmp_path):
    nx("vdisk", "create", cl, "huge", "4T")
    out = tmp_path / "huge.raw"
    proc = subprocess.Popen([*NXSTORE, "export", cl, "huge", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip() == "nxstore: interrupted"
    assert not out.exists()
    nx("info", cl)  # the lock was released
