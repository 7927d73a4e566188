"""Running `nxstore` commands inside a running `nxstore serve` (the admin socket).

`nxstore serve PATH` holds the cluster's lock, so no other process can open PATH while it
runs. Instead of failing with Locked, a command aimed at a served cluster is forwarded to
the daemon: it listens on the Unix socket ``PATH/admin.sock`` (no group or other access:
only the cluster's owner can connect) and runs the command line against its own open Cluster
in a worker thread, while it goes on serving its peers and schedules. Commands run side by
side (each thread's output is captured on its own), so a write waiting for a stalled Metro
peer does not hold up `pd metro status` or `pd metro break`.

Protocol, one exchange per connection: the client sends a frame ``u32 length (little
endian) + JSON {"version": 1, "argv": [...], "cwd": "..."}``, the daemon answers with
a frame holding ``{"rc": int, "stdout": str, "stderr": str}``. Relative file arguments
are resolved against the client's `cwd`. `serve` and `create` are never forwarded (the
daemon parses the command line to tell). The request must arrive whole within
REQUEST_TIMEOUT_S and be at most MAX_REQUEST bytes; a bad or late one gets an error reply
(rc 2) and one log line. The client waits for the command to end; interrupting the client
does not stop a command the daemon already started.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import struct
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ProtocolError

if TYPE_CHECKING:  # asyncio is imported where the daemon uses it: a client needs none
    import asyncio

    from ..cluster import Cluster

log = logging.getLogger(__name__)

SOCKET_NAME = "admin.sock"
PROTOCOL_VERSION = 1
MAX_FRAME = 64 << 20  # bytes: bounds a reply the client buffers
MAX_REQUEST = 1 << 20  # bytes: a command line, checked before the daemon reads it
REQUEST_TIMEOUT_S = 10.0  # a client that connects and sends nothing (or trickles) is dropped
REPLY_TIMEOUT_S = 60.0  # a client that stops reading its reply is dropped
NOT_FORWARDED = frozenset({"serve", "create"})
# argparse dests that hold file names: resolved against the client's working directory
FILE_ARGS = ("path", "file", "secret_file", "clock_file", "tls_cert", "tls_key", "tls_ca",
             "witness_secret_file", "unix", "pre_freeze", "post_thaw")

_LEN = struct.Struct("<I")
_served: Cluster | None = None  # the daemon's cluster while the admin socket serves
_running = threading.Condition()  # guards _commands
_commands = 0  # forwarded commands running now


class _ThreadOutput(io.TextIOBase):
    """sys.stdout or sys.stderr while the admin socket serves: what a forwarded command's
    thread prints goes to its own buffer, what any other thread prints to the stream this
    replaced."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback
        self._local = threading.local()

    @contextlib.contextmanager
    def captured(self) -> Iterator[io.StringIO]:
        self._local.buffer = buf = io.StringIO()
        try:
            yield buf
        finally:
            self._local.buffer = None

    def _target(self) -> Any:
        return getattr(self._local, "buffer", None) or self.fallback

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def fileno(self) -> int:
        return self._target().fileno()  # a captured command has none (io.UnsupportedOperation)


def socket_path(cluster_path: str) -> str:
    return os.path.join(cluster_path, SOCKET_NAME)


def served_cluster(path: str) -> Cluster | None:
    """The daemon's open Cluster if a forwarded command names it (else None)."""
    cluster = _served
    if cluster is not None and os.path.realpath(path) == os.path.realpath(cluster.path):
        return cluster
    return None


def resolve_paths(args: Any, cwd: str) -> None:
    """Make the file arguments of parsed `args` absolute against `cwd`."""
    for name in FILE_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value and not os.path.isabs(value):
            setattr(args, name, os.path.join(cwd, value))


# -- client ----------------------------------------------------------------------------------

def _send(sock: socket.socket, obj: dict[str, Any]) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(_LEN.pack(len(data)) + data)


def _recv(sock: socket.socket) -> dict[str, Any]:
    def exactly(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ProtocolError("admin socket closed mid-reply")
            buf += chunk
        return bytes(buf)

    (n,) = _LEN.unpack(exactly(_LEN.size))
    if n > MAX_FRAME:
        raise ProtocolError(f"admin reply of {n} bytes is too large")
    reply = json.loads(exactly(n))
    if not isinstance(reply, dict):
        raise ProtocolError("admin reply is not an object")
    return reply


def forward(cluster_path: str, argv: list[str]) -> dict[str, Any] | None:
    """Run `argv` in the daemon serving `cluster_path`; its reply, or None when no daemon
    answers there (no socket, or a stale one left by a daemon that died)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(socket_path(cluster_path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        _send(sock, {"version": PROTOCOL_VERSION, "argv": argv, "cwd": os.getcwd()})
        return _recv(sock)
    finally:
        sock.close()


# -- daemon ----------------------------------------------------------------------------------

def run_forwarded(argv: list[str], cwd: str) -> dict[str, Any]:
    """Run one forwarded command line against the served cluster; capture what it prints
    (needs the outputs `admin_server` installs)."""
    global _commands
    from . import main

    stdout, stderr = sys.stdout, sys.stderr
    assert isinstance(stdout, _ThreadOutput) and isinstance(stderr, _ThreadOutput)
    with _running:
        _commands += 1
    try:
        with stdout.captured() as out, stderr.captured() as err:
            rc = main(argv, cwd=cwd)
        return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}
    finally:
        with _running:
            _commands -= 1
            _running.notify_all()


async def _read_request(reader: asyncio.StreamReader) -> tuple[list[str], str]:
    """(argv, cwd) of one request; ProtocolError saying what is wrong with it."""
    (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if n > MAX_REQUEST:
        raise ProtocolError(f"request of {n} bytes is larger than {MAX_REQUEST}")
    try:
        req = json.loads(await reader.readexactly(n))
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise ProtocolError(f"request is not UTF-8 JSON: {str(exc)[:100]}") from None
    if not isinstance(req, dict):
        raise ProtocolError(f"request is a JSON {type(req).__name__}, not an object")
    if req.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {str(req.get('version'))[:20]!r} is not "
                            f"{PROTOCOL_VERSION}")
    argv, cwd = req.get("argv"), req.get("cwd")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ProtocolError("'argv' is not a list of strings")
    if not isinstance(cwd, str):
        raise ProtocolError("'cwd' is not a string")
    return argv, cwd


async def _handle(cluster: Cluster, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    import asyncio

    try:
        try:
            argv, cwd = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT_S)
        except asyncio.IncompleteReadError:
            log.warning("admin socket: a client left before sending its whole request")
            return
        except (ProtocolError, asyncio.TimeoutError) as exc:
            problem = str(exc) or f"no whole request within {REQUEST_TIMEOUT_S:g} s"
            log.warning("admin socket: bad request: %s", problem)
            reply = {"rc": 2, "stdout": "",
                     "stderr": f"nxstore: error: bad admin request: {problem}\n"}
        else:
            log.info("admin: nxstore %s", " ".join(argv))
            reply = await asyncio.to_thread(run_forwarded, argv, cwd)
        data = json.dumps(reply).encode()
        writer.write(_LEN.pack(len(data)) + data)
        await asyncio.wait_for(writer.drain(), REPLY_TIMEOUT_S)
    except (ConnectionError, asyncio.TimeoutError) as exc:
        log.warning("admin socket: reply not delivered: %s", exc or "the client stopped reading")
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def admin_server(cluster: Cluster) -> AsyncIterator[None]:
    """Listen on the cluster's admin socket (owner-only access) while the block runs."""
    import asyncio

    global _served
    path = socket_path(cluster.path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a daemon that died: we hold the cluster lock now
    old = os.umask(0o077)
    try:
        server = await asyncio.start_unix_server(lambda r, w: _handle(cluster, r, w), path)
    finally:
        os.umask(old)
    log.info("admin socket %s", path)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ThreadOutput(saved[0]), _ThreadOutput(saved[1])
    _served = cluster
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        # Forwarded commands still running must end before the daemon closes the cluster.
        await asyncio.to_thread(_wait_for_commands)
        _served = None
        sys.stdout, sys.stderr = saved


def _wait_for_commands() -> None:
    with _running:
        _running.wait_for(lambda: _commands == 0)
