"""Commands against a cluster that `nxstore serve` holds open run inside the daemon
(nxstore.cli.admin): real processes, relative paths, errors, what is never forwarded."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "replication"))
from sites_helper import NXSTORE, Daemon  # noqa: E402

MiB = 1 << 20


def nx(*args: object, rc: int = 0, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*NXSTORE, *map(str, args)], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=cwd)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == rc, (f"nxstore {' '.join(map(str, args))}: rc {proc.returncode}"
                                   f" != {rc}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


@pytest.fixture
def served(tmp_path):
    (tmp_path / "secret").write_text("s3cret\n")
    nx("create", tmp_path / "c", "--block-size", "4K")
    d = Daemon.start(str(tmp_path / "c"), str(tmp_path / "secret"))
    yield tmp_path
    d.cleanup()


def test_commands_run_inside_the_daemon(served):
    sock = served / "c" / "admin.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) & 0o077 == 0  # the owner only
    nx("vdisk", "create", served / "c", "db", "8M")
    data = os.urandom(4 * MiB)
    (served / "img").write_bytes(data)
    # Relative paths (the cluster's and the image's) resolve in the client's directory.
    nx("import", "c", "db", "img", cwd=served)
    nx("snapshot", "create", "c", "db@s1", cwd=served)
    assert "db" in nx("vdisk", "list", served / "c").stdout
    assert "s1" in nx("snapshot", "list", served / "c", "db").stdout
    nx("export", "c", "db", "out", cwd=served)
    assert (served / "out").read_bytes()[: len(data)] == data
    info = nx("info", served / "c").stdout
    assert "logical" in info.lower()


def test_errors_and_commands_never_forwarded(served):
    p = nx("vdisk", "delete", served / "c", "nosuch", rc=1)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nxstore: error: ") and "nosuch" in lines[0]
    p = nx("serve", served / "c", "--listen", "127.0.0.1:0", "--secret-file",
           served / "secret", rc=1)
    assert "open in another process" in p.stderr


def test_stale_socket_of_a_dead_daemon_is_harmless(tmp_path):
    (tmp_path / "secret").write_text("s3cret\n")
    nx("create", tmp_path / "c")
    d = Daemon.start(str(tmp_path / "c"), str(tmp_path / "secret"))
    d.proc.kill()
    d.proc.wait()
    assert (tmp_path / "c" / "admin.sock").exists()
    nx("vdisk", "create", tmp_path / "c", "db", "1M")  # opens the cluster itself
    assert "db" in nx("vdisk", "list", tmp_path / "c").stdout
    d.cleanup()
