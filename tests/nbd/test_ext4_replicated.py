"""An ext4 file system made with `mke2fs -d` from a directory of files, copied into a vDisk
through an export, snapshotted, replicated to a second site, exported there (inside that
site's `nxstore serve`) and read back: `e2fsck -fn` finds it clean and `debugfs rdump`
gives back the same files."""

from __future__ import annotations

import filecmp
import os

from nbd_helpers import NXSTORE, MiB, need, qemu_io, run
from sites_helper import Daemon

import nxstore
import nxstore.nbd

SECRET = "ext4 test shared secret"


def _tree(root) -> None:
    """Files of random bytes, text, an empty file, a sparse file and nested directories."""
    (root / "etc").mkdir(parents=True)
    (root / "data" / "deep" / "er").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "data" / "random.bin").write_bytes(os.urandom(3 * MiB + 123))
    (root / "data" / "deep" / "er" / "text.txt").write_text("some words\n" * 50_000)
    (root / "data" / "empty").write_bytes(b"")
    with open(root / "data" / "sparse", "wb") as f:
        f.truncate(5 * MiB)
        f.seek(2 * MiB)
        f.write(b"in the middle")


def _same_tree(a, b) -> None:
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only, (cmp.left_only, cmp.right_only)
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
    for sub in cmp.common_dirs:
        _same_tree(os.path.join(a, sub), os.path.join(b, sub))


def test_ext4_image_survives_import_snapshot_replication_and_export(tmp_path):
    need("mke2fs", "e2fsck", "debugfs", "qemu-img", "qemu-io")
    src = tmp_path / "files"
    _tree(src)
    image = tmp_path / "fs.img"
    run("mke2fs", "-q", "-F", "-t", "ext4", "-d", src, image, "32M")
    run("e2fsck", "-fn", image)

    tokyo_path = str(tmp_path / "tokyo")
    nxstore.Cluster.create(tokyo_path, block_size=4096, background=False).close()
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    tokyo = Daemon.start(tokyo_path, str(secret))
    try:
        with nxstore.Cluster.create(str(tmp_path / "paris"), block_size=4096) as paris:
            paris.create_vdisk("fs", 32 * MiB)
            with nxstore.nbd.serve(paris, "fs", unix=str(tmp_path / "p.sock")) as server:
                run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", image, server.uri)
            snap = paris.vdisk("fs").snapshot("s1")
            paris.add_remote_site("tokyo", tokyo.address, SECRET)
            paris.replicate(snap, "tokyo")
        # At the target, inside its daemon: the replicated snapshot and the replica vDisk.
        snap_uri = run(*NXSTORE, "nbd", tokyo_path, "paris:fs@s1", "--unix",
                       tmp_path / "t1.sock").stdout.strip()
        replica_uri = run(*NXSTORE, "nbd", tokyo_path, "paris:fs", "--unix",
                          tmp_path / "t2.sock").stdout.strip()
        copy = tmp_path / "copy.img"
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", snap_uri, copy)
        refused = qemu_io(replica_uri, "write -P 1 0 4k", ok=False)  # a replica is read-only
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
        run("qemu-img", "compare", "-f", "raw", "-F", "raw", replica_uri, image)
    finally:
        tokyo.stop()
    run("e2fsck", "-fn", copy)
    out = tmp_path / "restored"
    out.mkdir()
    run("debugfs", "-R", f"rdump / {out}", copy)
    assert (out / "lost+found").is_dir()
    os.rmdir(out / "lost+found")
    _same_tree(src, out)
