"""Cluster files are the owner's only (0700 directories, 0600 files) whatever the umask; an
older cluster is tightened at open; secrets are refused when weak or readable by others.

As root the test also creates a second Unix user and checks, by running `cat` and `flock` as
that user, that it cannot read the catalogue, an extent group or lock the LOCK file."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

import nxstore
from nxstore.cli import main
from nxstore.cli.serve import serve_cluster
from nxstore.errors import InvalidArgument
from nxstore.nearsync import episode_file
from nxstore.replication.sites import MIN_SECRET_BYTES
from nxstore.store import fileutil

MiB = 1 << 20
LONG_SECRET = "a shared secret of 32 characters"


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: str) -> dict[str, int]:
    """{path relative to root: permission bits} of root and everything below it."""
    out = {".": stat.S_IMODE(os.lstat(root).st_mode)}
    for where, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(where, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


def populated_cluster(path: str) -> None:
    """A cluster with every kind of file: OpLog segments, extent groups, the extent table
    and fingerprint index, map bases and deltas, a NearSync episode file; closed."""
    c = nxstore.Cluster.create(path, block_size=4096, background=False)
    try:
        vd = c.create_vdisk("db", 8 * MiB)
        vd.write(0, os.urandom(2 * MiB))  # large: straight to an extent group
        vd.write(4 * MiB, b"x" * 4096)  # small: through the OpLog
        vd.flush()
        vd.snapshot("s1")
        vd.write(8192, b"y" * 4096)
        vd.flush()
        c.drain()
        c.snapshot("db", "s1").delete()  # the fold writes a map base
    finally:
        c.close()
    empty = np.zeros(0, dtype=np.uint64)
    episode_file.write(os.path.join(path, "nearsync", "1", episode_file.file_name(1)),
                       episode_file.StoredEpisode(empty, np.zeros((0, 16), np.uint8), empty,
                                                  empty, np.zeros(0, np.uint8)))


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_everything_is_owner_only_whatever_the_umask(tmp_path, mask):
    path = str(tmp_path / "c")
    with umask(mask):
        populated_cluster(path)
        c = nxstore.Cluster.open(path, background=False)  # the LOCK file, -wal and -shm
        try:
            found = modes(path)
        finally:
            c.close()
    kinds = {os.path.basename(p).split(".")[-1] for p in found}
    assert {"db", "db-wal", "db-shm", "seg", "eg", "bin", "base", "delta", "lws",
            "LOCK"} <= kinds | {os.path.basename(p) for p in found}, sorted(found)
    for rel, mode in found.items():
        want = 0o700 if os.path.isdir(os.path.join(path, rel)) else 0o600
        assert mode == want, f"{rel}: {mode:o} under umask {mask:03o}"


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_atomic_write_temporary_file_is_owner_only(tmp_path, mask):
    target = str(tmp_path / "f")
    seen = []

    def chunks():
        yield b"first"
        # The temporary file exists now, half written.
        (tmp,) = [p for p in os.listdir(tmp_path) if p.startswith("f.tmp.")]
        seen.append(stat.S_IMODE(os.stat(tmp_path / tmp).st_mode))
        yield b"second"

    with umask(mask):
        fileutil.atomic_write(target, chunks())
    assert seen == [0o600]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_older_cluster_is_tightened_at_open(tmp_path, caplog):
    path = str(tmp_path / "c")
    populated_cluster(path)
    os.chmod(path, 0o755)  # as an older nxstore left it
    with caplog.at_level(logging.WARNING, logger="nxstore"):
        nxstore.Cluster.open(path, background=False).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert "group and other access removed" in caplog.text
    caplog.clear()
    nxstore.Cluster.open(path, background=False).close()
    assert "access removed" not in caplog.text  # once only


# -- a second Unix user ------------------------------------------------------------------

@pytest.fixture
def other_user() -> Iterator[pwd.struct_passwd]:
    """A temporary Unix user (root only), deleted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("creating a second Unix user needs root")
    name = f"nxt{uuid.uuid4().hex[:12]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True, timeout=60)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True, timeout=60)


def as_user(user: pwd.struct_passwd, *argv: str) -> bool:
    """Whether `argv`, run as `user`, succeeds."""
    return subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                           "--clear-groups", *argv], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=60).returncode == 0


def can_read(user: pwd.struct_passwd, path: str) -> bool:
    return as_user(user, "cat", path)


def can_lock(user: pwd.struct_passwd, path: str) -> bool:
    return as_user(user, "flock", "--nonblock", path, "true")


def test_another_user_can_read_nothing(other_user):
    base = tempfile.mkdtemp(prefix="nxstore-perm-")
    try:
        os.chmod(base, 0o755)  # the other user may walk up to the cluster directory
        public = os.path.join(base, "public")
        with open(public, "w") as f:
            f.write("anyone may read this\n")
        os.chmod(public, 0o644)
        assert can_read(other_user, public)  # the check can see access where there is some

        path = os.path.join(base, "c")
        with umask(0o022):
            populated_cluster(path)
        group = next(n for n in os.listdir(os.path.join(path, "extents")) if n.endswith(".eg"))
        private = [os.path.join(path, "catalog.db"), os.path.join(path, "extents", group),
                   os.path.join(path, "LOCK")]
        for p in private:
            assert not can_read(other_user, p), p
        assert not can_lock(other_user, os.path.join(path, "LOCK"))

        # A cluster as an older version left it is readable by anyone until it is opened.
        for where, _dirs, files in os.walk(path):
            os.chmod(where, 0o755)
            for name in files:
                os.chmod(os.path.join(where, name), 0o644)
        assert all(can_read(other_user, p) for p in private)
        assert can_lock(other_user, os.path.join(path, "LOCK"))
        nxstore.Cluster.open(path, background=False).close()
        for p in private:
            assert not can_read(other_user, p), p
        assert not can_lock(other_user, os.path.join(path, "LOCK"))
    finally:
        subprocess.run(["rm", "-rf", base], check=True, timeout=60)


# -- secrets -----------------------------------------------------------------------------

def secret_file(tmp_path, text: str, mode: int) -> str:
    path = tmp_path / f"secret-{mode:o}-{len(text)}"
    path.write_text(text + "\n")
    path.chmod(mode)
    return str(path)


def run(capsys, *argv: object) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o666])
def test_secret_file_others_may_read_or_write_is_refused(tmp_path, capsys, mode):
    assert main(["create", str(tmp_path / "c")]) == 0
    f = secret_file(tmp_path, LONG_SECRET, mode)
    for argv in (["site", "add", tmp_path / "c", "canada", "127.0.0.1:1", "--secret-file", f],
                 ["serve", tmp_path / "c", "--listen", "127.0.0.1:0", "--secret-file", f]):
        rc, err = run(capsys, *argv)
        assert rc == 1 and err.count("\n") == 1, err
        assert err.startswith("nxstore: error: secret file") and "chmod 600" in err, err
        assert LONG_SECRET not in err
    assert nxstore.Cluster.open(str(tmp_path / "c"), background=False).remote_sites() == []


def test_secret_file_of_the_owner_only_is_accepted(tmp_path, capsys):
    assert main(["create", str(tmp_path / "c")]) == 0
    for i, mode in enumerate((0o600, 0o400)):
        f = secret_file(tmp_path, LONG_SECRET, mode)
        rc, err = run(capsys, "site", "add", tmp_path / "c", f"site{i}", "127.0.0.1:1",
                      "--secret-file", f)
        assert rc == 0, err
    c = nxstore.Cluster.open(str(tmp_path / "c"), background=False)
    try:
        assert [s.secret for s in c.remote_sites()] == [LONG_SECRET, LONG_SECRET]
    finally:
        c.close()


def test_short_secrets_are_refused(tmp_path, capsys):
    short, enough = "x" * (MIN_SECRET_BYTES - 1), "é" * (MIN_SECRET_BYTES // 2)  # 16 bytes
    assert main(["create", str(tmp_path / "c")]) == 0
    f = secret_file(tmp_path, short, 0o600)
    for argv in (["site", "add", tmp_path / "c", "canada", "127.0.0.1:1", "--secret-file", f],
                 ["serve", tmp_path / "c", "--listen", "127.0.0.1:0", "--secret-file", f]):
        rc, err = run(capsys, *argv)
        assert rc == 1 and err.count("\n") == 1 and "at least 16" in err, err
        assert short not in err
    c = nxstore.Cluster.open(str(tmp_path / "c"), background=False)
    try:
        for bad in ("", short, "\udcff" * 20, b"bytes are not text secrets", None):
            with pytest.raises(InvalidArgument):
                c.add_remote_site("canada", "127.0.0.1:1", bad)
        assert c.remote_sites() == []
        c.add_remote_site("canada", "127.0.0.1:1", enough)
        assert [s.secret for s in c.remote_sites()] == [enough]
    finally:
        c.close()
    with pytest.raises(InvalidArgument, match="at least 16"):
        serve_cluster(str(tmp_path / "c"), "127.0.0.1:0", short)
