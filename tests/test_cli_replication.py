"""The replication commands as real subprocesses: serve, site add|list|remove,
replicate, replicas, prune-remote (exit statuses, output, one-line errors)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

import nxstore

sys.path.insert(0, str(Path(__file__).parent / "replication"))
from sites_helper import NXSTORE, Daemon  # noqa: E402

MiB = 1 << 20
SECRET = "correct horse battery staple"


def nx(*args: object, rc: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([*NXSTORE, *map(str, args)], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == rc, (f"nxstore {' '.join(map(str, args))}: rc {proc.returncode}"
                                   f" != {rc}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The `nxstore: error:` line; it comes last, after at most a few WARNING log lines
    (the replication layer logs a failed handshake on both sides, as the issue asks)."""
    lines = proc.stderr.strip().splitlines()
    assert lines and all(x.startswith("nxstore: WARNING: ") for x in lines[:-1]), proc.stderr
    assert lines[-1].startswith("nxstore: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture
def env(tmp_path):
    """Two clusters 'paris' (with a 4 MiB vDisk 'db' of random data) and 'tokyo',
    and a secret file."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)  # nxstore refuses a secret file others can read
    for name in ("paris", "tokyo"):
        nx("create", tmp_path / name, "--block-size", "4K")
    img = tmp_path / "img"
    img.write_bytes(os.urandom(4 * MiB))
    nx("vdisk", "create", tmp_path / "paris", "db", "8M")
    nx("import", tmp_path / "paris", "db", img)
    return tmp_path


@pytest.fixture
def tokyo(env):
    d = Daemon.start(str(env / "tokyo"), str(env / "secret"))
    yield d
    d.cleanup()


def test_serve_refuses_locked_cluster_and_bad_secret_files(env):
    tokyo = env / "tokyo"
    c = nxstore.Cluster.open(str(tokyo), background=False)
    try:
        p = nx("serve", tokyo, "--listen", "127.0.0.1:0", "--secret-file", env / "secret", rc=1)
        error_line(p, "open in another process")
    finally:
        c.close()
    p = nx("serve", tokyo, "--listen", "127.0.0.1:0", "--secret-file", env / "nope", rc=1)
    error_line(p, "secret file", "nope")
    (env / "empty").write_text("\n")
    (env / "empty").chmod(0o600)
    p = nx("serve", tokyo, "--listen", "127.0.0.1:0", "--secret-file", env / "empty", rc=1)
    error_line(p, "is empty")
    p = nx("serve", tokyo, "--listen", "127.0.0.1:0", "--secret-file", env / "secret",
           "--tls-cert", env / "secret", rc=1)
    error_line(p, "--tls-key")
    p = nx("serve", env / "nowhere", "--listen", "127.0.0.1:0", "--secret-file", env / "secret",
           rc=1)
    error_line(p)
    nx("serve", tokyo, "--secret-file", env / "secret", rc=2)  # --listen is required


def test_serve_logs_port_and_stops_cleanly_on_sigterm(env, tokyo):
    assert tokyo.site == "tokyo" and tokyo.port > 0
    out = tokyo.stop()
    assert "serving site tokyo" in out
    # The cluster is unlocked again.
    nxstore.Cluster.open(str(env / "tokyo"), background=False).close()


def test_site_add_list_remove(env):
    paris = env / "paris"
    p = nx("site", "add", paris, "tokyo", "127.0.0.1:7000", "--secret-file", env / "secret",
           "--vstore-map", "default=gold", "--network-map", "vlan1=vlan9")
    assert "added remote site tokyo" in p.stdout
    nx("site", "add", paris, "osaka", "[::1]:7001", "--secret-file", env / "secret")
    out = nx("site", "list", paris).stdout
    assert "tokyo" in out and "default=gold" in out and "vlan1=vlan9" in out and "osaka" in out
    assert SECRET not in out
    listed = json.loads(nx("site", "list", paris, "--json").stdout)
    assert {s["name"] for s in listed} == {"tokyo", "osaka"}
    assert SECRET not in json.dumps(listed)
    tokyo = next(s for s in listed if s["name"] == "tokyo")
    assert tokyo["vstore_mapping"] == {"default": "gold"}
    assert tokyo["network_mapping"] == {"vlan1": "vlan9"}
    # The secret is stored stripped of its newline.
    with nxstore.Cluster.open(str(paris), background=False) as c:
        assert {s.name: s.secret for s in c.remote_sites()}["tokyo"] == SECRET
    error_line(nx("site", "add", paris, "tokyo", "127.0.0.1:7000", "--secret-file",
                  env / "secret", rc=1))  # already exists
    error_line(nx("site", "add", paris, "x", "no-port", "--secret-file", env / "secret", rc=1),
               "HOST:PORT")
    error_line(nx("site", "add", paris, "x", "h:1", "--secret-file", env / "secret",
                  "--vstore-map", "justone", rc=1), "LOCAL=REMOTE")
    nx("site", "add", paris, "x", "h:1", rc=2)  # --secret-file is required
    assert "removed" in nx("site", "remove", paris, "osaka").stdout
    error_line(nx("site", "remove", paris, "osaka", rc=1), "osaka")
    assert [s["name"] for s in json.loads(nx("site", "list", paris, "--json").stdout)] == ["tokyo"]


def test_replicate_replicas_prune(env, tokyo):
    paris = env / "paris"
    nx("site", "add", paris, "tokyo", tokyo.address, "--secret-file", env / "secret")
    # Without @SNAP: a new snapshot repl-<UTC time> is taken and shipped (a full seed).
    out = nx("replicate", paris, "db", "tokyo").stdout
    assert "replicated db@repl-" in out and "full seed" in out and "1024 sent" in out, out
    nx("snapshot", "create", paris, "db@manual")
    out = nx("replicate", paris, "db@manual", "tokyo", "--bandwidth-limit", "50M").stdout
    assert "replicated db@manual to tokyo" in out and "base repl-" in out and "0 sent" in out, out
    snaps = [s["name"] for s in json.loads(nx("snapshot", "list", paris, "--json").stdout)]
    assert len(snaps) == 2 and snaps[0].startswith("repl-") and snaps[1] == "manual"
    # Errors: one line, and no snapshot taken for an unknown site.
    error_line(nx("replicate", paris, "db", "nowhere", rc=1), "nowhere")
    error_line(nx("replicate", paris, "db@nosuch", "tokyo", rc=1), "nosuch")
    error_line(nx("replicate", paris, "nodisk", "tokyo", rc=1), "nodisk")
    nx("replicate", paris, "db", "tokyo", "--bandwidth-limit", "fast", rc=2)
    assert len(json.loads(nx("snapshot", "list", paris, "--json").stdout)) == 2
    # Remote retention.
    out = nx("prune-remote", paris, "tokyo", "db", "--keep", "1").stdout
    assert f"deleted 1 replica snapshot(s) of db at tokyo: {snaps[0]}" in out, out
    assert "nothing to prune" in nx("prune-remote", paris, "tokyo", "db", "--keep", "1").stdout
    error_line(nx("prune-remote", paris, "tokyo", "db", "--keep", "0", rc=1), "--keep")
    tokyo.stop()
    reps = json.loads(nx("replicas", env / "tokyo", "--json").stdout)
    assert [(r["vdisk"], r["source_site"]) for r in reps] == [("paris:db", "paris")]
    assert [s["name"] for s in reps[0]["snapshots"]] == ["manual"]
    out = nx("replicas", env / "tokyo").stdout
    assert "paris:db" in out and "manual" in out
    assert nx("replicas", paris).stdout.strip().splitlines() == [
        "REPLICA  SOURCE SITE  SNAPSHOT  SIZE  CREATED"]
    # The replica reads exactly as the source snapshot.
    nx("export", env / "tokyo", "paris:db@manual", env / "out.img")
    nx("export", paris, "db@manual", env / "src.img")
    assert (env / "out.img").read_bytes() == (env / "src.img").read_bytes()


def test_replicate_wrong_secret_is_one_clear_line(env, tokyo):
    paris = env / "paris"
    (env / "wrong").write_text("not the shared secret")
    (env / "wrong").chmod(0o600)
    nx("site", "add", paris, "tokyo", tokyo.address, "--secret-file", env / "wrong")
    error_line(nx("replicate", paris, "db", "tokyo", rc=1), "authentic")
    tokyo.stop()
    assert json.loads(nx("replicas", env / "tokyo", "--json").stdout) == []


def test_replicate_unreachable_site(env):
    paris = env / "paris"
    nx("site", "add", paris, "tokyo", "127.0.0.1:1", "--secret-file", env / "secret")
    error_line(nx("replicate", paris, "db", "tokyo", rc=1), "connection")


def test_progress_bar_on_a_terminal(env, tokyo):
    paris = env / "paris"
    nx("site", "add", paris, "tokyo", tokyo.address, "--secret-file", env / "secret")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    chunks: list[bytes] = []

    def drain() -> None:  # concurrently: a full pty buffer would block the child
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the child's side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([*NXSTORE, "replicate", paris, "db", "tokyo"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                              timeout=120)
    finally:
        os.close(slave)
        reader.join(10)
        os.close(master)
    tty = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, tty
    assert "blocks" in tty and "blk" in tty, tty  # the tqdm bar of the "blocks" phase
    assert b"replicated db@repl-" in proc.stdout
