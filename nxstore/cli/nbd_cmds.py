"""`nxstore nbd`: export a vDisk or a snapshot over NBD.

On a cluster no daemon holds, the command opens it and serves in the foreground until
SIGTERM/SIGINT (or, with --exit-with-parent, the death of its parent), printing the export's
URI on stdout once clients can connect. On a live site (`nxstore serve` holds the cluster)
the command is forwarded to the daemon like any other: the export then runs inside the
daemon, the command prints its URI and returns, `--list` shows the running exports and
`--stop` ends one; the daemon stops them all before it closes the cluster.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from typing import TYPE_CHECKING

from . import admin
from .common import CliError, open_cluster

if TYPE_CHECKING:
    from ..nbd import NbdServer

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:10809"  # NBD's registered port, on loopback only
_PR_SET_PDEATHSIG = 1

_live: dict[str, NbdServer] = {}  # exports running inside `nxstore serve`, by target
_live_lock = threading.Lock()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nbd", help="export a vDisk (read-write) or snapshot (read-only) over NBD")
    p.add_argument("path", metavar="PATH")
    p.add_argument("target", metavar="VDISK[@SNAP]", nargs="?")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--listen", metavar="HOST:PORT",
                       help=f"TCP address (default {DEFAULT_LISTEN}; port 0 picks a free one)")
    where.add_argument("--unix", metavar="SOCKET", help="serve on this Unix socket instead")
    p.add_argument("--readonly", action="store_true", help="refuse writes to a vDisk too")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop when the parent process exits (not inside nxstore serve)")
    p.add_argument("--list", action="store_true",
                   help="list the exports running inside the 'nxstore serve' of PATH")
    p.add_argument("--stop", action="store_true",
                   help="stop the export of VDISK[@SNAP] running inside 'nxstore serve'")
    p.set_defaults(func=cmd_nbd)


def cmd_nbd(args: argparse.Namespace) -> int:
    if args.list and args.target:
        raise CliError("--list takes no VDISK[@SNAP]")
    if not args.list and not args.target:
        raise CliError("give VDISK[@SNAP] to export (or --list)")
    from ..nbd import serve

    with open_cluster(args.path, background=True) as cluster:
        live = admin.served_cluster(args.path) is not None
        if args.list or args.stop:
            if not live:
                raise CliError(f"--list and --stop act on exports inside a running "
                               f"'nxstore serve {args.path}'; none is running")
            return _list() if args.list else _stop(args.target)
        listen = None if args.unix else args.listen or DEFAULT_LISTEN
        if live:
            if args.exit_with_parent:
                raise CliError("--exit-with-parent does not apply to an export inside "
                               "'nxstore serve' (stop it with --stop)")
            with _live_lock:
                if args.target in _live:
                    raise CliError(f"{args.target} is already exported on {_live[args.target].uri}")
                server = serve(cluster, args.target, listen=listen, unix=args.unix,
                               read_only=args.readonly)
                _live[args.target] = server
            print(server.uri)
            return 0
        return _serve_foreground(cluster, args, listen)


def _serve_foreground(cluster, args: argparse.Namespace, listen: str | None) -> int:
    from ..nbd import serve

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if args.exit_with_parent:
            _exit_with_parent(stop)
        with serve(cluster, args.target, listen=listen, unix=args.unix,
                   read_only=args.readonly) as server:
            print(server.uri, flush=True)  # the readiness signal: clients can connect now
            stop.wait()
            log.info("stopping the NBD export of %s", args.target)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _exit_with_parent(stop: threading.Event) -> None:
    """SIGTERM to this process when its parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise CliError(f"--exit-with-parent: prctl failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:  # it died before prctl took effect
        stop.set()


def _list() -> int:
    with _live_lock:
        for target, server in sorted(_live.items()):
            mode = "read-only" if server.export.read_only else "read-write"
            print(f"{target}  {mode}  {server.uri}  {server.connections()} client(s)")
    return 0


def _stop(target: str) -> int:
    with _live_lock:
        server = _live.pop(target, None)
    if server is None:
        raise CliError(f"no export of {target} is running")
    server.close()
    print(f"stopped the NBD export of {target}")
    return 0


def stop_exports() -> None:
    """Stop every export started inside this daemon (before it closes the cluster)."""
    with _live_lock:
        servers = list(_live.values())
        _live.clear()
    for server in servers:
        server.close()
