"""Helpers for the NBD tests: real NBD clients (qemu-img, qemu-io, fio, e2fsprogs) against nxstore's NBD server, and the
same clients against nbdkit's `memory` plugin, the reference a client-level test must also
pass on (a test that fails there tests the client, not nxstore).

A missing tool fails the test in CI (CI=true; .ci/run installs them) and skips it elsewhere.
Servers are waited for by their readiness signal (the URI line `nxstore nbd` prints once it
listens, the pid file nbdkit writes once it listens), never by a guessed sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nxstore.nbd import protocol as p

NXSTORE = [sys.executable, "-m", "nxstore.cli"]
MiB = 1 << 20
READY_TIMEOUT_S = 60.0
TOOL_TIMEOUT_S = 600.0


def need(*tools: str) -> None:
    """Fail (in CI) or skip (elsewhere) unless every tool is on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        text = f"missing tools: {', '.join(missing)} (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(text)
        pytest.skip(text)


def run(*cmd: object, ok: bool = True, timeout: float = TOOL_TIMEOUT_S,
        **kw) -> subprocess.CompletedProcess:
    """Run a tool to completion; with `ok`, assert exit status 0 (showing its output)."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False, **kw)
    if ok:
        assert done.returncode == 0, (f"{' '.join(map(str, cmd))} -> {done.returncode}\n"
                                      f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def qemu_io(uri: str, *commands: str, ok: bool = True, read_only: bool = False
            ) -> subprocess.CompletedProcess:
    """qemu-io on `uri` running `commands`; a failed pattern check fails the call too."""
    args = ["qemu-io", "-f", "raw", *(["-r"] if read_only else [])]
    for c in commands:
        args += ["-c", c]
    done = run(*args, uri, ok=ok)
    if ok:
        assert "verification failed" not in done.stdout, done.stdout
    return done


class NbdProcess:
    """A server process that printed (or wrote) its URI once it listened."""

    def __init__(self, proc: subprocess.Popen, uri: str) -> None:
        self.proc = proc
        self.uri = uri

    def stop(self) -> str:
        """SIGTERM; assert a clean exit; return its stderr."""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=READY_TIMEOUT_S)
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}:\n{err}"
        assert "Traceback" not in err, err
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=READY_TIMEOUT_S)


def start_cli_export(path: str, target: str, *args: str) -> NbdProcess:
    """`nxstore nbd PATH TARGET ARGS` in a child process, once it prints its URI."""
    proc = subprocess.Popen([*NXSTORE, "nbd", path, target, *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    uri = _first_line(proc)
    if not uri.startswith("nbd"):
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"nxstore nbd did not start (rc {proc.returncode}): {uri}\n{err}")
    return NbdProcess(proc, uri)


def _first_line(proc: subprocess.Popen) -> str:
    """The first stdout line, with a deadline (a reader thread: readline cannot time out)."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(READY_TIMEOUT_S)
    return line[0].strip() if line else ""


def start_nbdkit_memory(where: Path, size: int, *, read_only: bool = False,
                        name: str = "nbdkit") -> NbdProcess:
    """nbdkit's memory plugin of `size` bytes on the Unix socket where/NAME.sock, once its
    pid file exists."""
    need("nbdkit")
    sock, pidfile = where / f"{name}.sock", where / f"{name}.pid"
    proc = subprocess.Popen(["nbdkit", "-f", "--exit-with-parent", *(["-r"] if read_only else []),
                             "-U", str(sock), "-P", str(pidfile), "memory", str(size)],
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not pidfile.exists() or not pidfile.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"nbdkit did not start: {proc.communicate()[1]}")
        time.sleep(0.01)  # polling the readiness signal (nbdkit has no readiness pipe)
    return NbdProcess(proc, f"nbd+unix:///?socket={sock}")


Chunk = tuple[int, int, bytes]  # (reply flags, reply type, payload) of a structured chunk


def meta_data(name: str, *queries: str) -> bytes:
    """The data of a LIST/SET_META_CONTEXT option."""
    def string(text: str) -> bytes:
        return struct.pack(">I", len(text.encode())) + text.encode()
    return string(name) + struct.pack(">I", len(queries)) + b"".join(map(string, queries))


def extents(payload: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(context id, [(length, flags)]) of a BLOCK_STATUS chunk's payload."""
    assert len(payload) >= 12 and (len(payload) - 4) % 8 == 0, payload
    (context,) = struct.unpack_from(">I", payload)
    return context, [p.EXTENT.unpack_from(payload, i) for i in range(4, len(payload), 8)]


def reassemble(chunks: list[Chunk], offset: int, length: int) -> bytes:
    """The bytes a successful structured read reply describes, checking the spec's rules:
    content chunks inside the request, not overlapping, covering it exactly."""
    out = bytearray(length)
    covered = []
    for _, kind, payload in chunks:
        if kind == p.REPLY_TYPE_OFFSET_DATA:
            (start,) = p.OFFSET.unpack_from(payload)
            n = len(payload) - 8
            assert n > 0
            out[start - offset:start - offset + n] = payload[8:]
        elif kind == p.REPLY_TYPE_OFFSET_HOLE:
            assert len(payload) == p.HOLE.size
            start, n = p.HOLE.unpack(payload)
            assert n > 0  # the bytes stay zero
        else:
            assert kind == p.REPLY_TYPE_NONE, kind
            continue
        assert offset <= start and start + n <= offset + length, (start, n, offset, length)
        covered.append((start, n))
    covered.sort()
    pos = offset
    for start, n in covered:
        assert start == pos, f"gap or overlap at {pos}: {covered}"
        pos += n
    assert pos == offset + length, covered
    return bytes(out)


class Client:
    """Just enough of an NBD client: fixed newstyle, options, simple replies, and
    structured replies once `structured_replies()` negotiated them."""

    def __init__(self, path: str) -> None:
        self.structured = False
        self._sent: dict[int, tuple[int, int, int]] = {}  # cookie -> command, offset, length
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(READY_TIMEOUT_S)
        self.sock.connect(path)
        magic, opt, flags = p.GREETING.unpack(self.recv(p.GREETING.size))
        assert (magic, opt) == (p.NBDMAGIC, p.IHAVEOPT)
        assert flags & p.FLAG_FIXED_NEWSTYLE
        self.sock.sendall(p.CLIENT_FLAGS.pack(p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES))

    def recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return buf

    def option(self, option: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send an option; its replies up to the final one, as (reply type, data)."""
        self.sock.sendall(p.OPTION.pack(p.IHAVEOPT, option, len(data)) + data)
        replies = []
        while True:
            magic, opt, kind, n = p.OPTION_REPLY.unpack(self.recv(p.OPTION_REPLY.size))
            assert magic == p.OPT_REPLY_MAGIC and opt == option
            replies.append((kind, self.recv(n)))
            if kind not in (p.REP_SERVER, p.REP_INFO, p.REP_META_CONTEXT):
                return replies

    def structured_replies(self) -> None:
        """Negotiate NBD_OPT_STRUCTURED_REPLY (asserting the server agrees)."""
        assert self.option(p.OPT_STRUCTURED_REPLY) == [(p.REP_ACK, b"")]
        self.structured = True

    def go(self, name: str = "") -> tuple[int, int]:
        """(size, transmission flags) of export `name`, entering transmission."""
        raw = name.encode()
        replies = self.option(p.OPT_GO, struct.pack(">I", len(raw)) + raw + struct.pack(">H", 0))
        assert replies[-1][0] == p.REP_ACK, replies
        infos = [d for kind, d in replies if kind == p.REP_INFO and d[:2] == b"\0\0"]
        _, size, flags = p.INFO_EXPORT_DATA.unpack(infos[0])
        return size, flags

    def send(self, command: int, offset: int, length: int, cookie: int, flags: int = 0,
             payload: bytes = b"") -> None:
        self._sent[cookie] = (command, offset, length)
        self.sock.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, flags, command, cookie, offset,
                                         length) + payload)

    def chunks(self, first_magic: bytes = b"") -> tuple[int, list[Chunk]]:
        """(cookie, chunks) of one structured reply, up to the chunk marked DONE
        (`first_magic`: the first chunk's magic, when the caller read it already)."""
        got: list[Chunk] = []
        cookie = None
        while not got or not got[-1][0] & p.REPLY_FLAG_DONE:
            head = first_magic + self.recv(p.CHUNK.size - len(first_magic))
            first_magic = b""
            magic, flags, kind, chunk_cookie, n = p.CHUNK.unpack(head)
            assert magic == p.STRUCTURED_REPLY_MAGIC, hex(magic)
            assert cookie in (None, chunk_cookie)  # a client sending one request at a time
            cookie = chunk_cookie
            got.append((flags, kind, self.recv(n)))
        assert all(kind != p.REPLY_TYPE_NONE for _, kind, _ in got[:-1])
        return cookie, got

    def reply(self, read_length: int = 0) -> tuple[int, int, bytes]:
        """(errno, cookie, data); data only for a successful read of `read_length`."""
        magic = self.recv(4)
        if magic == p.STRUCTURED_REPLY_MAGIC.to_bytes(4, "big"):
            assert self.structured, "a structured reply that was not negotiated"
            cookie, got = self.chunks(magic)
            command, offset, length = self._sent.pop(cookie)
            errors = [struct.unpack_from(">I", payload)[0] for _, kind, payload in got
                      if kind & (1 << 15)]
            if errors:
                return errors[0], cookie, b""
            if command == p.CMD_READ:
                return 0, cookie, reassemble(got, offset, length)
            return 0, cookie, b""
        # a simple reply; with structured replies negotiated the spec allows one for any
        # command but READ (nbdkit sends them for writes)
        magic, error, cookie = p.SIMPLE_REPLY.unpack(magic + self.recv(p.SIMPLE_REPLY.size - 4))
        assert magic == p.SIMPLE_REPLY_MAGIC
        command, _, _ = self._sent.pop(cookie, (None, 0, 0))
        assert not (self.structured and command == p.CMD_READ), "a simple reply to a READ"
        return error, cookie, (self.recv(read_length) if read_length and not error else b"")

    def request(self, command: int, offset: int, length: int, **kw) -> int:
        self.send(command, offset, length, cookie=7, **kw)
        error, cookie, _ = self.reply(length if command == p.CMD_READ else 0)
        assert cookie == 7
        return error
