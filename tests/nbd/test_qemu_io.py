"""qemu-io against an export: pattern writes and reads, FUA, flush, discard, write-zeroes;
read-only exports of snapshots; errno values (ENOSPC, EIO, EPERM) reaching the client."""

from __future__ import annotations

import glob
import os
import subprocess
import threading

import pytest
from nbd_helpers import MiB, need, qemu_io

import nxstore
from nxstore.constants import EXTENT_DIR


@pytest.fixture(autouse=True)
def _tools():
    need("qemu-io")


def test_patterns_fua_flush_discard_and_write_zeroes(any_server):
    uri = any_server(16 * MiB)
    qemu_io(uri,
            "write -P 0x11 0 4M",
            "write -P 0x22 -f 12345 70000",  # FUA, unaligned, across blocks
            "write -z 2M 512k",  # write-zeroes
            "discard 3M 256k",
            "flush",
            "read -P 0x11 0 12345",
            "read -P 0x22 12345 70000",
            "read -P 0x11 82345 1914807",
            "read -P 0 2M 512k",
            "read -P 0x11 2560k 512k",
            "read -P 0 3M 256k",
            "read -P 0x11 3328k 768k",
            "read -P 0 4M 12M")
    # The checks can fail: a wrong pattern is reported.
    bad = qemu_io(uri, "read -P 0x33 0 4k", ok=False)
    assert "verification failed" in bad.stdout


def test_snapshot_taken_while_writing_is_the_exact_prefix(cluster, exported):
    """Sequential 64 KiB writes of pattern 2 over pattern 1: a snapshot taken meanwhile
    holds pattern 2 on a prefix of the writes and pattern 1 after it, nothing else."""
    chunk, n = 64 << 10, 256
    vd = cluster.create_vdisk("disk", chunk * n)
    uri = exported(cluster, "disk").uri
    qemu_io(uri, f"write -P 1 0 {chunk * n}", "flush")
    writer = subprocess.Popen(
        ["qemu-io", "-f", "raw", *sum((["-c", f"write -P 2 {i * chunk} {chunk}"]
                                       for i in range(n)), []), uri],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = threading.Event()
    lines: list[str] = []

    def read_output() -> None:
        for line in writer.stdout:
            lines.append(line)
            if len(lines) >= n // 4:  # a quarter of the writes are acknowledged
                seen.set()
        seen.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    assert seen.wait(120)
    acknowledged = sum(line.startswith("wrote") for line in list(lines))
    snap = vd.snapshot("mid")
    assert writer.wait(120) == 0, writer.stderr.read()
    reader.join(10)
    image = snap.read(0, snap.size)
    prefix = next((i for i in range(n) if image[i * chunk] != 2), n)
    assert prefix >= acknowledged > 0, "the snapshot missed acknowledged writes"
    assert image == b"\2" * (prefix * chunk) + b"\1" * ((n - prefix) * chunk)
    # Exported read-only: it shows the same bytes and refuses writes.
    ro = exported(cluster, "disk@mid").uri
    qemu_io(ro, f"read -P 2 0 {prefix * chunk}", read_only=True)
    if prefix < n:
        qemu_io(ro, f"read -P 1 {prefix * chunk} {(n - prefix) * chunk}", read_only=True)
    refused = qemu_io(ro, "write -P 9 0 4k", ok=False)
    assert refused.returncode != 0 and "wrote" not in refused.stdout
    qemu_io(uri, f"read -P 2 0 {chunk * n}")  # the live disk took every write


def test_readonly_export_refuses_writes(cluster, exported):
    cluster.create_vdisk("disk", 4 * MiB)
    ro = exported(cluster, "disk", read_only=True)
    assert ro.export.read_only
    refused = qemu_io(ro.uri, "write -P 9 0 4k", ok=False)
    # qemu sees NBD_FLAG_READ_ONLY and refuses to open it for writing (test_protocol
    # checks the EPERM a write gets from the server anyway).
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    qemu_io(ro.uri, "read -P 0 0 4M", read_only=True)


def test_full_file_system_reaches_the_client_as_enospc(tmp_path, exported):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "fs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(where)], check=True)
    try:
        with nxstore.Cluster.create(str(where / "c"), block_size=4096, background=True) as c:
            c.create_vdisk("disk", 256 * MiB)
            server = exported(c, "disk")
            random = tmp_path / "random.bin"
            random.write_bytes(os.urandom(64 * MiB))
            done = subprocess.run(
                ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(random), server.uri],
                capture_output=True, text=True, timeout=600)
            assert done.returncode != 0
            assert "No space left on device" in done.stderr, done.stderr
            server.close()
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_damaged_extent_reaches_the_client_as_eio(make_cluster, exported):
    c = make_cluster()
    vd = c.create_vdisk("disk", 4 * MiB)
    vd.write(0, os.urandom(4 * MiB))
    vd.flush()
    c.drain()
    path = c.path
    c.close()
    group = sorted(glob.glob(os.path.join(path, EXTENT_DIR, "EG*.eg")))[0]
    with open(group, "r+b") as f:  # a byte of the first block's payload
        f.seek(64 + 100)
        b = f.read(1)
        f.seek(64 + 100)
        f.write(bytes([b[0] ^ 0x5A]))
    c = make_cluster.reopen(c)
    uri = exported(c, "disk").uri
    bad = qemu_io(uri, "read 0 4k", ok=False)
    assert bad.returncode != 0 and "Input/output error" in bad.stdout + bad.stderr
    qemu_io(uri, "read 1M 1M")  # the connection still answers; other blocks read fine
