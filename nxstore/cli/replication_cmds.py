"""Replication commands: serve, site add|list|remove, replicate, replicas, replica verify,
prune-remote.

`nxstore serve` runs a cluster as a replication endpoint in the foreground (logs on
stderr, stops cleanly on SIGTERM/SIGINT) and runs its protection-domain schedules; the other commands open the local cluster,
talk to a remote site's `nxstore serve` where needed, and close it again. Shared
secrets are always read from a file (never a command-line argument, which other users
could see in the process list) that only its owner may read or write (like ssh's keys);
surrounding whitespace and the trailing newline are stripped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import stat

from . import coord_cmds
from .common import (
    CliError,
    human,
    open_cluster,
    plural,
    report_blocks,
    size_arg,
    split_ref,
    table,
)
from .progress import Progress
from .serve import SCHEDULE_INTERVAL_S, serve_cluster, tls_context

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run a cluster as a replication endpoint (until SIGTERM)")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="address to listen on (port 0 picks a free port, logged)")
    p.add_argument("--secret-file", required=True, metavar="FILE",
                   help="file holding the secret shared with the peer sites")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate: serve over TLS")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--schedule-interval", type=_seconds, default=SCHEDULE_INTERVAL_S,
                   metavar="SECONDS",
                   help="run the due protection-domain schedules every SECONDS "
                   f"(default {SCHEDULE_INTERVAL_S:g}; 0: never)")
    p.add_argument("--clock-file", metavar="FILE",
                   help="simulated time: the cluster clock is the epoch seconds written in "
                   "FILE, read again at every look (replace the file to move time; for "
                   "demos and tests)")
    coord_cmds.add_serve_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("site", help="remote sites this cluster replicates to")
    ssub = p.add_subparsers(dest="site_cmd", metavar="COMMAND", required=True)
    q = ssub.add_parser("add", help="register a remote site")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.add_argument("address", metavar="ADDRESS", help="HOST:PORT of the site's 'nxstore serve'")
    q.add_argument("--secret-file", required=True, metavar="FILE",
                   help="file holding the secret shared with the site")
    q.add_argument("--vstore-map", action="append", default=[], metavar="LOCAL=REMOTE",
                   help="map a local container to the site's container (repeatable)")
    q.add_argument("--network-map", action="append", default=[], metavar="LOCAL=REMOTE",
                   help="map a local network to the site's network (repeatable)")
    q.add_argument("--tls-ca", metavar="FILE",
                   help="connect over TLS; the site's certificate must chain to this PEM CA")
    q.set_defaults(func=cmd_site_add)
    q = ssub.add_parser("list", help="list remote sites")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_site_list)
    q = ssub.add_parser("remove", help="forget a remote site")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.set_defaults(func=cmd_site_remove)
    coord_cmds.register_site(ssub)

    p = sub.add_parser("replicate", help="ship a snapshot to a remote site (incremental)")
    p.add_argument("path", metavar="PATH")
    p.add_argument("source", metavar="VDISK[@SNAP]",
                   help="without @SNAP a new snapshot repl-<UTC time> is taken first")
    p.add_argument("site", metavar="SITE")
    p.add_argument("--bandwidth-limit", type=size_arg, metavar="RATE",
                   help="cap in bytes per second, e.g. 10M")
    p.set_defaults(func=cmd_replicate)

    p = sub.add_parser("replicas", help="list the replica vDisks this cluster holds")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_replicas)

    p = sub.add_parser("replica", help="check the replicas of this cluster's snapshots at a "
                       "remote site")
    rsub = p.add_subparsers(dest="replica_cmd", metavar="COMMAND", required=True)
    q = rsub.add_parser("verify", help="compare a snapshot with its replica at SITE by block "
                        "fingerprints (the site re-reads its blocks; no data crosses the wire); "
                        "exit 1 listing every differing block")
    q.add_argument("path", metavar="PATH")
    q.add_argument("site", metavar="SITE")
    q.add_argument("source", metavar="VDISK@SNAP")
    q.add_argument("--read-local", action="store_true",
                   help="re-read and verify this side's blocks too (default: compare the "
                   "fingerprints its extent table holds)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_replica_verify)

    p = sub.add_parser("prune-remote", help="keep only the newest N replica snapshots at a site")
    p.add_argument("path", metavar="PATH")
    p.add_argument("site", metavar="SITE")
    p.add_argument("vdisk", metavar="VDISK")
    p.add_argument("--keep", type=int, required=True, metavar="N")
    p.set_defaults(func=cmd_prune_remote)


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"bad number of seconds {text!r}")
    return value


def read_secret(path: str) -> str:
    """The secret in file `path`, stripped; CliError if group or others may read or write
    the file, or it is empty or not text."""
    try:
        with open(path, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if mode & 0o066:
                raise CliError(f"secret file {path} is mode {mode:o}: other users can read or "
                               f"change it; make it the owner's only (chmod 600 {path})")
            raw = f.read(1 << 16)
    except OSError as exc:
        raise CliError(f"cannot read secret file {path}: {exc.strerror or exc}") from None
    try:
        secret = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CliError(f"secret file {path} is not UTF-8 text") from None
    if not secret:
        raise CliError(f"secret file {path} is empty")
    return secret


def _mapping(items: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        local, sep, remote = item.partition("=")
        if not sep or not local or not remote:
            raise CliError(f"bad {option} {item!r}: expected LOCAL=REMOTE")
        out[local] = remote
    return out


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


# -- serve --------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    if not getattr(args, "verbose", 0):  # a daemon says what it does: INFO by default
        logging.getLogger("nxstore").setLevel(logging.INFO)
    secret = read_secret(args.secret_file)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliError("--tls-cert and --tls-key go together")
    try:
        tls = tls_context(args.tls_cert, args.tls_key)
    except OSError as exc:
        raise CliError(f"cannot load TLS certificate/key: {exc.strerror or exc}") from None
    except Exception as exc:  # ssl.SSLError and friends: bad PEM contents
        raise CliError(f"cannot load TLS certificate/key: {exc}") from None
    if coord_cmds.worker_mode(args):
        from .site_worker import serve_site_worker

        serve_site_worker(args.path, args.listen, secret, etcd_url=args.etcd,
                          worker=args.worker, prefix=args.etcd_prefix,
                          lease_ttl=args.lease_ttl, tls=tls,
                          schedule_interval=args.schedule_interval, clock_file=args.clock_file)
        return 0
    serve_cluster(args.path, args.listen, secret, tls=tls,
                  schedule_interval=args.schedule_interval, clock_file=args.clock_file)
    return 0


# -- sites --------------------------------------------------------------------------
def cmd_site_add(args: argparse.Namespace) -> int:
    secret = read_secret(args.secret_file)
    vstore = _mapping(args.vstore_map, "--vstore-map")
    network = _mapping(args.network_map, "--network-map")
    with open_cluster(args.path) as c:
        c.add_remote_site(args.name, args.address, secret, network_mapping=network,
                          vstore_mapping=vstore, tls_ca=args.tls_ca)
    print(f"added remote site {args.name} at {args.address}")
    return 0


def _pairs(m: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(m.items())) or "-"


def cmd_site_list(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        sites = c.remote_sites()
    if args.json:  # never the secret
        print(json.dumps([{"name": s.name, "address": s.address,
                           "vstore_mapping": s.vstore_mapping,
                           "network_mapping": s.network_mapping} for s in sites], indent=2))
        return 0
    print(table([(s.name, s.address, _pairs(s.vstore_mapping), _pairs(s.network_mapping))
                 for s in sites], ("SITE", "ADDRESS", "VSTORE MAP", "NETWORK MAP")))
    return 0


def cmd_site_remove(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.remove_remote_site(args.name)
    print(f"removed remote site {args.name}")
    return 0


# -- replicate ----------------------------------------------------------------------
class _PhaseBar:
    """Adapts the replication progress callback to one bar per phase."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.phase: str | None = None
        self.bar: Progress | None = None

    def __call__(self, phase: str, done: int, total: int, wire: int) -> None:
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = Progress(total, f"{self.what}: {phase}", unit="blk")
        assert self.bar is not None
        self.bar.set(done, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_replicate(args: argparse.Namespace) -> int:
    vdisk, snap_name = split_ref(args.source, need_snap=False)
    with open_cluster(args.path) as c:
        if args.site not in {s.name for s in c.remote_sites()}:
            raise CliError(f"no remote site {args.site!r} (add one with 'nxstore site add')")
        if snap_name is None:
            vd = c.vdisk(vdisk)
            snap_name = "repl-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            vd.flush()
            snap = vd.snapshot(snap_name)
            log.info("took snapshot %s@%s", vdisk, snap_name)
        else:
            snap = c.snapshot(vdisk, snap_name)
        bar = _PhaseBar(f"{vdisk}@{snap_name} -> {args.site}")
        try:
            r = c.replicate(snap, args.site, progress=bar, bandwidth_limit=args.bandwidth_limit)
        finally:
            bar.close()
    rate = r.bytes_on_wire / max(r.seconds, 1e-9) / 1e6
    print(f"replicated {vdisk}@{snap_name} to {args.site}: "
          f"base {r.base_snapshot or '(none: full seed)'}; {r.blocks_total} blocks changed, "
          f"{r.blocks_sent} sent, {r.blocks_deduped} already at the site; "
          f"{human(r.bytes_on_wire)} on the wire in {r.seconds:.2f} s ({rate:.1f} MB/s)")
    return 0


def cmd_replicas(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        reps = c.replicas()
    if args.json:
        print(json.dumps([{
            "vdisk": r.vdisk, "source_site": r.source_site, "source_cluster": r.source_cluster,
            "source_vdisk": r.source_vdisk,
            "snapshots": [{"name": s.name, "size": s.size, "created_at": s.created_at}
                          for s in r.snapshots],
        } for r in reps], indent=2))
        return 0
    rows = [(r.vdisk, r.source_site, s.name, human(s.size), _when(s.created_at))
            for r in reps for s in r.snapshots]
    print(table(rows, ("REPLICA", "SOURCE SITE", "SNAPSHOT", "SIZE", "CREATED")))
    return 0


def cmd_prune_remote(args: argparse.Namespace) -> int:
    if args.keep < 1:
        raise CliError(f"--keep must be at least 1, not {args.keep}")
    with open_cluster(args.path) as c:
        deleted = c.prune_remote(args.site, args.vdisk, args.keep)
    if deleted:
        print(f"deleted {len(deleted)} replica snapshot(s) of {args.vdisk} at {args.site}: "
              + ", ".join(deleted))
    else:
        print(f"nothing to prune: {args.site} holds at most {args.keep} snapshot(s) of {args.vdisk}")
    return 0


def cmd_replica_verify(args: argparse.Namespace) -> int:
    from ..replication.verify import verify_replica

    vdisk, snap_name = split_ref(args.source, need_snap=True)
    with open_cluster(args.path) as c:
        if args.site not in {s.name for s in c.remote_sites()}:
            raise CliError(f"no remote site {args.site!r} (add one with 'nxstore site add')")
        snap = c.snapshot(vdisk, snap_name)
        with Progress(None, f"verify {args.source} at {args.site}", unit="blk") as bar:
            r = verify_replica(c, args.site, snap, reread_here=args.read_local,
                               progress=bar.set)
    doc = {"site": r.site, "source": r.snapshot, "size": r.size,
           "blocks_compared": r.blocks_compared, "clean": r.clean,
           "bytes_on_wire": r.bytes_on_wire, "seconds": round(r.seconds, 3),
           "differences": [{"offset": d.offset, "problem": d.problem} for d in r.differences]}
    return report_blocks(
        args.source, r.differences, json_doc=doc if args.json else None,
        clean=f"verified {args.source} against its replica at {args.site}: "
              f"{r.blocks_compared} blocks ({human(r.size)}) match; {human(r.bytes_on_wire)} "
              f"on the wire in {r.seconds:.2f} s",
        error=f"{plural(len(r.differences), 'block differs', 'blocks differ')} between "
              f"{args.source} and its replica at {args.site}")
