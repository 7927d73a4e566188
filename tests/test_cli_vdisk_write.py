"""`nxstore vdisk write PATH VDISK OFFSET FILE`: FILE's bytes at OFFSET, flushed; silent on
success; one error line and nothing written on a bad range, a read-only or missing vDisk;
forwarded to a running `nxstore serve` like every command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from test_cli import nx, one_error_line

import nxstore
from nxstore.replication.replica import make_replica

sys.path.insert(0, str(Path(__file__).parent / "replication"))
from sites_helper import Daemon  # noqa: E402

SIZE = 1 << 20


@pytest.fixture
def cl(tmp_path) -> Path:
    """A cluster with a 1 MiB vDisk 'db' and a read-only replica vDisk 'ro'."""
    path = tmp_path / "c"
    with nxstore.Cluster.create(str(path), block_size=4096, background=False) as c:
        c.create_vdisk("db", SIZE)
        c.create_vdisk("ro", SIZE)
        make_replica(c, "ro", "a-cluster", "elsewhere")
    return path


def image(tmp_path: Path, cl: Path, vdisk: str) -> bytes:
    nx("export", cl, vdisk, tmp_path / "out")
    return (tmp_path / "out").read_bytes()


def put(tmp_path: Path, data: bytes) -> Path:
    f = tmp_path / f"in-{len(data)}"
    f.write_bytes(data)
    return f


def test_writes_exact_bytes_at_offsets_silently(tmp_path, cl):
    expect = bytearray(SIZE)
    for offset, arg, data in [(0, "0", os.urandom(4096)),          # one whole block
                              (12345, "12345", os.urandom(3000)),  # unaligned: the OpLog
                              (4096, "4K", bytes(8192)),           # zeros are written too
                              (SIZE - 2 * 4096 - 7, str(SIZE - 2 * 4096 - 7),
                               os.urandom(2 * 4096 + 7))]:         # up to the very end
        p = nx("vdisk", "write", cl, "db", arg, put(tmp_path, data))
        assert p.stdout == "" and p.stderr == ""
        expect[offset:offset + len(data)] = data
    nx("vdisk", "write", cl, "db", "100", put(tmp_path, b""))  # empty: nothing to do
    assert image(tmp_path, cl, "db") == bytes(expect)


def test_errors_are_one_line_and_write_nothing(tmp_path, cl):
    nx("vdisk", "write", cl, "db", "0", put(tmp_path, b"\x11" * 4096))
    before = image(tmp_path, cl, "db")
    one_error_line(nx("vdisk", "write", cl, "db", str(SIZE - 4095), put(tmp_path, bytes(4096)),
                      rc=1), "outside", str(SIZE))
    one_error_line(nx("vdisk", "write", cl, "ro", "0", put(tmp_path, b"x"), rc=1), "read-only")
    one_error_line(nx("vdisk", "write", cl, "nosuch", "0", put(tmp_path, b"x"), rc=1), "nosuch")
    one_error_line(nx("vdisk", "write", cl, "db", "0", tmp_path / "missing", rc=1), "missing")
    one_error_line(nx("vdisk", "write", cl, "db", "0", tmp_path, rc=1), "directory")
    one_error_line(nx("vdisk", "write", cl, "db", "0", "/dev/null", rc=1), "not a regular file")
    one_error_line(nx("vdisk", "write", cl, "db", "-1", put(tmp_path, b"x"), rc=2), "bad size")
    assert image(tmp_path, cl, "db") == before
    assert image(tmp_path, cl, "ro") == bytes(SIZE)


def test_forwarded_to_the_daemon_with_a_relative_file(tmp_path, cl):
    secret = tmp_path / "secret"
    secret.write_text("a shared secret of 32 characters\n")
    secret.chmod(0o600)
    d = Daemon.start(str(cl), str(secret))
    try:
        data = os.urandom(5000)
        put(tmp_path, data)
        p = nx("vdisk", "write", "c", "db", "4K", f"in-{len(data)}", cwd=tmp_path)
        assert p.stdout == "" and p.stderr == ""
        one_error_line(nx("vdisk", "write", cl, "ro", "0", put(tmp_path, b"x"), rc=1),
                       "read-only")
        assert image(tmp_path, cl, "db")[4096:4096 + len(data)] == data
        d.stop()
    finally:
        d.cleanup()
