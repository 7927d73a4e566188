"""Site coordination through etcd (nxstore.coord): the `serve` options that make it a site
worker, and `site status` / `site transfer`.

    nxstore serve PATH --listen ADDR --secret-file F --etcd http://HOST:PORT --worker NAME
    nxstore site status --etcd URL [--json]        the leader, the workers, their leases
    nxstore site transfer --etcd URL VDISK@SNAP SITE [--bandwidth-limit RATE]

Every worker of a site names the same etcd endpoint and prefix; each has its own --worker
name and reaches the site's directory PATH (on one machine: the same directory). `site
status` exits 1 with one clear line when etcd cannot be reached: then no worker coordinates.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from dataclasses import asdict

from .common import human, size_arg, split_ref, table

DEFAULT_LEASE_TTL_S = 5  # nxstore.coord.lease.DEFAULT_TTL_S, restated: parsing imports no layer


def add_serve_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("site workers (coordination through etcd)")
    g.add_argument("--etcd", metavar="URL",
                   help="join the site's workers coordinated by etcd at URL "
                   "(http://HOST:PORT); the elected leader alone opens PATH, serves, runs "
                   "the schedules and the queued transfers")
    g.add_argument("--worker", metavar="NAME", help="this worker's name (with --etcd)")
    _etcd_options(g, with_url=False)
    g.add_argument("--lease-ttl", type=int, default=DEFAULT_LEASE_TTL_S, metavar="SECONDS",
                   help="the worker's etcd lease: another worker takes over within it "
                   f"(default {DEFAULT_LEASE_TTL_S})")


def _etcd_options(p: argparse._ActionsContainer, with_url: bool = True) -> None:
    if with_url:
        p.add_argument("--etcd", required=True, metavar="URL", help="etcd at http://HOST:PORT")
    p.add_argument("--etcd-prefix", default="nxstore/", metavar="PREFIX",
                   help="the site's keys in etcd (default nxstore/; one site per prefix)")


def register_site(ssub: argparse._SubParsersAction) -> None:
    q = ssub.add_parser("status", help="the site's workers coordinated by etcd: leader, "
                        "workers and their leases, transfers (exit 1 if etcd is unreachable)")
    _etcd_options(q)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_site_status)
    q = ssub.add_parser("transfer", help="queue a replication for the site's leader (etcd)")
    _etcd_options(q)
    q.add_argument("source", metavar="VDISK@SNAP")
    q.add_argument("site", metavar="SITE")
    q.add_argument("--bandwidth-limit", type=size_arg, metavar="RATE",
                   help="cap in bytes per second, e.g. 10M")
    q.set_defaults(func=cmd_site_transfer)


def worker_mode(args: argparse.Namespace) -> bool:
    """Does `serve` run as a site worker? CliError if --etcd and --worker are not together."""
    from .common import CliError

    if bool(args.etcd) != bool(args.worker):
        raise CliError("--etcd and --worker go together")
    return bool(args.etcd)


def _client(args: argparse.Namespace):  # noqa: ANN202 - (Etcd, SiteKeys), imported here
    from ..coord.etcd import Etcd
    from ..coord.keys import SiteKeys

    return Etcd(args.etcd), SiteKeys(args.etcd_prefix)


def cmd_site_status(args: argparse.Namespace) -> int:
    from ..coord.status import site_status
    from ..errors import CoordinationUnavailable

    etcd, keys = _client(args)
    try:
        st = site_status(etcd, keys)
    except CoordinationUnavailable as exc:
        raise CoordinationUnavailable(f"{exc}: no worker coordinates the site") from None
    finally:
        etcd.close()
    if args.json:
        print(json.dumps(asdict(st), indent=2, sort_keys=True))
        return 0
    lead = st.leader
    print(f"etcd: {st.etcd} (prefix {keys.prefix})")
    print(f"leader: {lead.worker} (term {lead.term}, lease {lead.lease:x}, {lead.lease_ttl} s "
          f"left, since {_when(lead.since)})" if lead else "leader: none (no worker coordinates)")
    rows = [(w.name, "leader" if lead and w.name == lead.worker else "worker", w.host,
             str(w.pid), w.listen, f"{w.lease:x}", f"{w.lease_ttl} s") for w in st.workers]
    print(table(rows, ("WORKER", "ROLE", "HOST", "PID", "LISTEN", "LEASE", "TTL LEFT"))
          if rows else "workers: none")
    rows = []
    for t in st.transfers:
        a = t.attempts[-1] if t.attempts else None
        rows.append((t.id, t.source, t.site, t.state, str(len(t.attempts)),
                     a.worker if a else "-",
                     f"{a.phase} {a.done}/{a.total}" if a and a.phase else "-",
                     human(a.bytes_on_wire) if a else "-"))
    if rows:
        print(table(rows, ("TRANSFER", "SNAPSHOT", "SITE", "STATE", "ATTEMPTS", "WORKER",
                           "PROGRESS", "ON WIRE")))
    return 0


def cmd_site_transfer(args: argparse.Namespace) -> int:
    from ..coord.transfers import queue

    vdisk, snap = split_ref(args.source, need_snap=True)
    assert snap is not None
    etcd, keys = _client(args)
    try:
        t = queue(etcd, keys, vdisk, snap, args.site, args.bandwidth_limit)
    finally:
        etcd.close()
    print(f"transfer {t.id}: {t.vdisk}@{t.snapshot} to {t.site} ({t.state})")
    return 0


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
