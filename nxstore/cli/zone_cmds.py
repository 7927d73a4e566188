"""Availability zone commands: zone add|list|remove (nxstore.leap.zones).

Pairing asks the other zone's `nxstore serve` to register this site back, at the address
this site is served on: a command forwarded into this site's own daemon knows it; a
cluster that is not served now needs --local-address (where its `nxstore serve` will
listen)."""

from __future__ import annotations

import argparse
import datetime as dt
import json

from . import admin
from .common import CliError, open_cluster, table
from .replication_cmds import read_secret


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zone", help="Leap availability zones: paired sites policies and "
                                    "recovery plans name")
    zsub = p.add_subparsers(dest="zone_cmd", metavar="COMMAND", required=True)

    q = zsub.add_parser("add", help="pair with the zone served at ADDRESS, in both directions")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME", help="the zone's site name")
    q.add_argument("address", metavar="ADDRESS", help="HOST:PORT of the zone's 'nxstore serve'")
    q.add_argument("--secret-file", required=True, metavar="FILE",
                   help="file holding the secret shared with the zone")
    q.add_argument("--local-address", metavar="HOST:PORT",
                   help="where the zone reaches this site's 'nxstore serve' (default, and "
                        "only then optional: where the running daemon serves PATH)")
    q.add_argument("--tls-ca", metavar="FILE",
                   help="connect over TLS; the zone's certificate must chain to this PEM CA")
    q.set_defaults(func=cmd_add)

    q = zsub.add_parser("list", help="list the paired zones")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--check", action="store_true", help="ask each zone whether it is up")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_list)

    q = zsub.add_parser("remove", help="unpair a zone no policy or plan names (here and there)")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.set_defaults(func=cmd_remove)


def cmd_add(args: argparse.Namespace) -> int:
    secret = read_secret(args.secret_file)
    with open_cluster(args.path) as c:
        if args.local_address is None and admin.served_cluster(args.path) is None:
            raise CliError(f"{args.path} is not served now: say where the zone reaches this "
                           "site with --local-address HOST:PORT (of its 'nxstore serve'), or "
                           "run 'zone add' while 'nxstore serve' runs")
        zone = c.connect_zone(args.name, args.address, secret,
                              local_address=args.local_address, tls_ca=args.tls_ca or "")
        print(f"paired with zone {zone.name} at {zone.address} (cluster {zone.cluster}); "
              f"it lists {c.site_name} as a zone too")
    return 0


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def cmd_list(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        zones = [{"name": z.name, "address": z.address, "cluster": z.cluster,
                  "connected_at": z.connected_at} for z in c.zones()]
        if args.check:
            for z in zones:
                why = c.zone_up(z["name"])
                z["up"], z["error"] = not why, why
    if args.json:
        print(json.dumps(zones, indent=2))
        return 0
    if not zones:
        print("no availability zones")
        return 0
    header = ("ZONE", "ADDRESS", "CLUSTER", "PAIRED") + (("UP",) if args.check else ())
    print(table([(z["name"], z["address"] or "-", z["cluster"], _when(z["connected_at"]))
                 + ((("yes" if z["up"] else f"no: {z['error']}"),) if args.check else ())
                 for z in zones], header))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.remove_zone(args.name)
    print(f"unpaired zone {args.name}")
    return 0
