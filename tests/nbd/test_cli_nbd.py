"""`nxstore nbd`: in the foreground (SIGTERM stops it cleanly, writes durable), and on a live
site, where the export runs inside `nxstore serve` (started, listed, stopped through the
admin socket; the daemon stops the rest before it closes the cluster)."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest
from nbd_helpers import NXSTORE, READY_TIMEOUT_S, MiB, need, qemu_io, run, start_cli_export
from sites_helper import Daemon

import nxstore


@pytest.fixture(autouse=True)
def _tools():
    need("qemu-io")


def _cluster_with_disk(tmp_path, size: int = 8 * MiB) -> str:
    path = str(tmp_path / "cl")
    with nxstore.Cluster.create(path, block_size=4096, background=False) as c:
        c.create_vdisk("disk", size)
    return path


def test_foreground_export_over_tcp_and_unix(tmp_path):
    path = _cluster_with_disk(tmp_path)
    server = start_cli_export(path, "disk", "--listen", "127.0.0.1:0")
    try:
        assert server.uri.startswith("nbd://127.0.0.1:") and server.uri.endswith("/disk")
        qemu_io(server.uri, "write -P 0x5a 0 1M")  # no flush: SIGTERM must keep it
    finally:
        err = server.stop()
    assert "error" not in err.lower(), err
    server = start_cli_export(path, "disk", "--unix", str(tmp_path / "s.sock"), "--readonly")
    try:
        qemu_io(server.uri, "read -P 0x5a 0 1M", read_only=True)
    finally:
        server.stop()
    assert not os.path.exists(tmp_path / "s.sock")
    with nxstore.Cluster.open(path, background=False) as c:
        assert c.vdisk("disk").read(0, MiB) == b"\x5a" * MiB


def test_usage_errors_are_one_line(tmp_path):
    path = _cluster_with_disk(tmp_path)
    for args, words in ((["nope"], "nope"), (["disk@nosnap"], "nosnap"), ([], "VDISK"),
                        (["--list"], "nxstore serve"), (["disk", "--listen", "x"], "HOST:PORT")):
        done = run(*NXSTORE, "nbd", path, *args, ok=False)
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nxstore: error:") and words in lines[0], lines


def test_exit_with_parent(tmp_path):
    """The export ends when the process that started it dies (a shell killed by SIGKILL)."""
    path = _cluster_with_disk(tmp_path)
    sock = tmp_path / "p.sock"
    shell = subprocess.Popen(
        ["bash", "-c", f"{' '.join(NXSTORE)} nbd {path} disk --unix {sock} --exit-with-parent"
                       " & wait"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    uri = shell.stdout.readline().strip()  # printed by the export once it listens
    assert uri.startswith("nbd+unix://"), shell.stderr.read()
    qemu_io(uri, "write -P 7 0 4k")
    shell.kill()
    shell.wait()
    # EOF once the export, the last writer of the pipe, has exited (bounded wait).
    rest: list[str] = []
    reader = threading.Thread(target=lambda: rest.append(shell.stdout.read()), daemon=True)
    reader.start()
    reader.join(READY_TIMEOUT_S)
    assert rest == [""], "the export outlived its parent"
    assert "Traceback" not in shell.stderr.read()
    with nxstore.Cluster.open(path, background=False) as c:  # unlocked, the write durable
        assert c.vdisk("disk").read(0, 4096) == b"\7" * 4096


def test_live_site_export_inside_nxstore_serve(tmp_path):
    path = _cluster_with_disk(tmp_path)
    with nxstore.Cluster.open(path, background=False) as c:
        c.vdisk("disk").write(0, b"\x11" * MiB)
        c.vdisk("disk").snapshot("s1")
    secret = tmp_path / "secret"
    secret.write_text("a long enough shared secret")
    secret.chmod(0o600)
    daemon = Daemon.start(path, str(secret))
    try:
        rw = run(*NXSTORE, "nbd", path, "disk", "--unix", "rw.sock", cwd=tmp_path).stdout.strip()
        assert rw == f"nbd+unix:///disk?socket={tmp_path / 'rw.sock'}"
        ro = run(*NXSTORE, "nbd", path, "disk@s1", "--listen", "127.0.0.1:0").stdout.strip()
        qemu_io(rw, "write -P 0x22 0 64k", "flush")
        qemu_io(ro, "read -P 0x11 0 1M", read_only=True)
        listed = run(*NXSTORE, "nbd", path, "--list").stdout
        assert "disk  read-write" in listed and "disk@s1  read-only" in listed
        again = run(*NXSTORE, "nbd", path, "disk", "--unix", "x.sock", cwd=tmp_path, ok=False)
        assert again.returncode == 1 and "already exported" in again.stderr
        assert "stopped" in run(*NXSTORE, "nbd", path, "disk", "--stop").stdout
        gone = qemu_io(rw, "read 0 4k", ok=False)
        assert gone.returncode != 0
        assert run(*NXSTORE, "nbd", path, "--list").stdout.count("\n") == 1
    finally:
        daemon.stop()  # also stops disk@s1's export before closing the cluster
    with nxstore.Cluster.open(path, background=False) as c:
        assert c.vdisk("disk").read(0, 128 << 10) == b"\x22" * (64 << 10) + b"\x11" * (64 << 10)
