"""Commands against a cluster that `nxstore serve` holds open run inside the daemon
(nxstore.cli.admin): real processes, relative paths, errors, what is never forwarded."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "replication"))
from sites_helper import NXSTORE, Daemon  # noqa: E402

MiB = 1 << 20
SECRET = "a shared secret of 32 characters"


def nx(*args: object, rc: int = 0, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*NXSTORE, *map(str, args)], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=cwd)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == rc, (f"nxstore {' '.join(map(str, args))}: rc {proc.returncode}"
                                   f" != {rc}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def write_secret(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "secret").chmod(0o600)  # nxstore refuses a secret file others can read


@pytest.fixture
def served(tmp_path):
    write_secret(tmp_path)
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
    write_secret(tmp_path)
    nx("create", tmp_path / "c")
    d = Daemon.start(str(tmp_path / "c"), str(tmp_path / "secret"))
    d.proc.kill()
    d.proc.wait()
    assert (tmp_path / "c" / "admin.sock").exists()
    nx("vdisk", "create", tmp_path / "c", "db", "1M")  # opens the cluster itself
    assert "db" in nx("vdisk", "list", tmp_path / "c").stdout
    d.cleanup()


# -- the socket itself: bad requests, what is never forwarded, silent clients ---------------

@pytest.fixture
def daemon(tmp_path):
    """`nxstore serve` of cluster tmp_path/c (tests stop it to check its log; killed at
    teardown otherwise)."""
    write_secret(tmp_path)
    nx("create", tmp_path / "c")
    d = Daemon.start(str(tmp_path / "c"), str(tmp_path / "secret"))
    yield d
    d.cleanup()


def admin_exchange(sock_path: Path, data: bytes, *, pace: float = 0.0,
                   timeout: float = 120.0) -> dict:
    """Send raw `data` on the admin socket (byte by byte, `pace` s apart, if pace) and
    return the daemon's reply frame."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        try:
            if pace:
                for i in range(len(data)):
                    s.sendall(data[i:i + 1])
                    time.sleep(pace)
            else:
                s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered early and closed: read its reply
        buf = b""
        while True:
            try:
                chunk = s.recv(1 << 16)
            except ConnectionResetError:
                # The daemon replied and closed while a trickled byte of ours was still
                # unread; Linux then resets after the queued reply, which was read above.
                break
            if not chunk:
                break
            buf += chunk
    (n,) = struct.unpack_from("<I", buf)
    assert len(buf) == 4 + n, buf
    return json.loads(buf[4:])


def frame(obj: object) -> bytes:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack("<I", len(data)) + data


def assert_bad_request(reply: dict, what: str) -> None:
    lines = reply["stderr"].splitlines()
    assert reply["rc"] == 2 and reply["stdout"] == "", reply
    assert len(lines) == 1 and lines[0].startswith("nxstore: error: bad admin request: "), reply
    assert what in lines[0], reply


def test_bad_requests_get_one_error_line_and_no_traceback(tmp_path, daemon):
    d, sock = daemon, tmp_path / "c" / "admin.sock"
    try:
        good = {"version": 1, "argv": ["vdisk", "list", str(tmp_path / "c")], "cwd": "/"}
        cases = [
            (frame(["vdisk", "list", str(tmp_path / "c")]), "JSON list, not an object"),
            (frame("vdisk list"), "JSON str, not an object"),
            (frame(None), "JSON NoneType, not an object"),
            (frame({**good, "argv": "vdisk list"}), "'argv' is not a list of strings"),
            (frame({**good, "argv": ["vdisk", 1]}), "'argv' is not a list of strings"),
            (frame({**good, "cwd": ["/"]}), "'cwd' is not a string"),
            (frame({**good, "version": 2}), "protocol version"),
            (frame({"argv": good["argv"], "cwd": "/"}), "protocol version"),
            (frame(b"{not json"), "not UTF-8 JSON"),
            (frame(b"\xff\xfe\x00"), "not UTF-8 JSON"),
            (frame(b"[" * 200_000), "not UTF-8 JSON"),  # nested past the recursion limit
            (struct.pack("<I", 2 * MiB), "larger than"),  # refused before it is read
        ]
        for data, what in cases:
            assert_bad_request(admin_exchange(sock, data), what)
        assert admin_exchange(sock, frame(good))["rc"] == 0  # still serving
        nx("vdisk", "create", tmp_path / "c", "db", "1M")  # forwarded as before
    finally:
        err = d.stop()  # asserts a clean exit without a traceback
    assert err.count("admin socket: bad request") == len(cases), err


def test_options_before_the_command_do_not_hide_it(tmp_path, daemon):
    d, sock = daemon, tmp_path / "c" / "admin.sock"
    try:
        for command, argv in (
                ("create", ["-v", "create", str(tmp_path / "new")]),
                ("create", ["-vv", "create", str(tmp_path / "new"), "--block-size", "4K"]),
                ("serve", ["--verbose", "serve", str(tmp_path / "c"), "--listen",
                           "127.0.0.1:0", "--secret-file", str(tmp_path / "secret")]),
                ("create", ["create", str(tmp_path / "new")])):
            reply = admin_exchange(sock, frame({"version": 1, "argv": argv, "cwd": "/"}))
            assert reply["rc"] == 1, reply
            assert reply["stderr"] == f"nxstore: error: '{command}' cannot run inside the daemon\n"
            assert not (tmp_path / "new").exists()
    finally:
        d.stop()


def test_silent_and_trickling_clients_are_timed_out(tmp_path, daemon):
    from nxstore.cli.admin import REQUEST_TIMEOUT_S

    d, sock = daemon, tmp_path / "c" / "admin.sock"
    replies: dict[str, tuple[float, dict]] = {}

    def client(name: str, data: bytes, pace: float) -> None:
        start = time.monotonic()
        reply = admin_exchange(sock, data, pace=pace, timeout=REQUEST_TIMEOUT_S * 6)
        replies[name] = (time.monotonic() - start, reply)

    request = frame({"version": 1, "argv": ["vdisk", "list", str(tmp_path / "c")], "cwd": "/"})
    threads = [threading.Thread(target=client, args=("silent", b"", 0.0)),
               threading.Thread(target=client, args=("trickle", request, 0.5))]
    try:
        for t in threads:
            t.start()
        # Meanwhile the daemon serves other clients.
        nx("vdisk", "create", tmp_path / "c", "db", "1M")
        assert "db" in nx("vdisk", "list", tmp_path / "c").stdout
        for t in threads:
            t.join(REQUEST_TIMEOUT_S * 8)
            assert not t.is_alive()
    finally:
        err = d.stop()
    for name in ("silent", "trickle"):
        seconds, reply = replies[name]
        assert_bad_request(reply, f"no whole request within {REQUEST_TIMEOUT_S:g} s")
        assert seconds >= REQUEST_TIMEOUT_S - 0.5, (name, seconds)
    assert err.count("admin socket: bad request") == 2, err
