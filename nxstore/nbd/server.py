"""An NBD server for one export of an open cluster: a listening socket and one thread per
client connection, in the process that holds the cluster (a program using the library, the
`nxstore nbd` command, or `nxstore serve` for a live site)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import urllib.parse

from ..cluster import Cluster
from ..errors import ClosedError, InvalidArgument, ProtocolError
from .export import Export
from .handshake import negotiate
from .stream import ClientStream
from .transmission import serve_requests

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64  # clients served at once; more are refused (each holds a thread)
HANDSHAKE_TIMEOUT_S = 30.0  # a client must reach the transmission phase within this
STOP_JOIN_S = 30.0  # how long close() waits for a connection thread to finish its request


class NbdServer:
    """A running export. `uri` names it for clients (qemu, libnbd, fio). `close()` (also on
    leaving a `with` block) stops accepting, disconnects the clients after the request each
    is executing, and flushes the export: every write acknowledged is durable on return."""

    def __init__(self, export: Export, listener: socket.socket, uri: str,
                 unix_path: str | None) -> None:
        self.export = export
        self.uri = uri
        self._listener = listener
        self._unix_path = unix_path
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"nbd-accept {export.name}")
        self._acceptor.start()

    def __enter__(self) -> NbdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server is closed (True) or `timeout` seconds pass (False)."""
        return self._closed.wait(timeout)

    def connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def close(self) -> None:
        """Stop serving (idempotent); see the class docstring."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            conns = dict(self._connections)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._listener.close()
        self._acceptor.join(STOP_JOIN_S)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)  # its request in progress still gets its reply
        for thread in conns.values():
            thread.join(STOP_JOIN_S)
        if self._unix_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unix_path)
        # ClosedError: the cluster closed first, and its close made every write durable.
        with contextlib.suppress(ClosedError):
            self.export.flush()
        log.info("NBD export %s stopped", self.export.name)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                log.exception("NBD export %s: accept failed", self.export.name)
                continue
            with self._lock:
                if self._closed.is_set() or len(self._connections) >= MAX_CONNECTIONS:
                    log.warning("NBD export %s: refusing a client (%s)", self.export.name,
                                "closing" if self._closed.is_set() else "too many clients")
                    sock.close()
                    continue
                thread = threading.Thread(target=self._serve_client, args=(sock,), daemon=True,
                                          name=f"nbd {self.export.name}")
                self._connections[sock] = thread
            thread.start()

    def _serve_client(self, sock: socket.socket) -> None:
        try:
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream = ClientStream(sock)
            sock.settimeout(HANDSHAKE_TIMEOUT_S)
            session = negotiate(sock, stream, self.export)
            if session is None:
                return
            sock.settimeout(None)  # a connected client may stay idle
            log.debug("NBD export %s: client connected", self.export.name)
            serve_requests(sock, stream, self.export, session)
        except (ProtocolError, OSError) as exc:
            if not self._closed.is_set():
                log.warning("NBD export %s: client dropped: %s", self.export.name, exc)
        finally:
            with self._lock:
                self._connections.pop(sock, None)
            sock.close()


def serve(cluster: Cluster, target: str, *, listen: str | None = None,
          unix: str | None = None, read_only: bool = False) -> NbdServer:
    """Export `target` ('VDISK', read-write unless `read_only` or a replica, or
    'VDISK@SNAPSHOT', read-only) of an open cluster over NBD, on TCP `listen`
    ('HOST:PORT', port 0 picks a free one) or on the Unix socket `unix` (made owner-only;
    a stale file there is replaced). Returns once clients can connect (`NbdServer.uri`);
    serving runs in background threads until `close()`, which must come before the
    cluster closes. Raises NotFound, InvalidArgument, OSError (address in use)."""
    if (listen is None) == (unix is None):
        raise InvalidArgument("give exactly one of listen (HOST:PORT) and unix (a socket path)")
    export = Export.of(cluster, target, read_only=read_only)
    name = urllib.parse.quote(export.name, safe="")
    if unix is not None:
        unix = os.path.abspath(unix)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(unix)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            listener.bind(unix)
        finally:
            os.umask(old)
        uri = f"nbd+unix:///{name}?socket={urllib.parse.quote(unix)}"
    else:
        host, port = _parse_listen(listen)
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        port = listener.getsockname()[1]
        uri = f"nbd://{f'[{host}]' if ':' in host else host}:{port}/{name}"
    listener.listen(MAX_CONNECTIONS)
    log.info("NBD export %s (%s, %d bytes) on %s", export.name,
             "read-only" if export.read_only else "read-write", export.size, uri)
    return NbdServer(export, listener, uri, unix)


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"bad listen address {listen!r}: expected HOST:PORT")
    return host, int(port)
