"""Availability zone commands: zone add|list|remove (nxstore.leap.zones).

A zone is one or more clusters (sites): `zone add PATH paris ADDRESS --cluster paris-b`
adds cluster paris-b to zone paris (without --cluster: the cluster called like the zone).

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
    p = sub.add_parser("zone", help="Leap availability zones: groups of paired clusters "
                                    "policies and recovery plans name")
    zsub = p.add_subparsers(dest="zone_cmd", metavar="COMMAND", required=True)

    q = zsub.add_parser("add", help="pair with the zone's cluster served at ADDRESS, in both "
                                    "directions")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME", help="the zone's name")
    q.add_argument("address", metavar="ADDRESS",
                   help="HOST:PORT of the cluster's 'nxstore serve'")
    q.add_argument("--cluster", metavar="SITE",
                   help="the cluster's site name (default: NAME); repeat 'zone add' with "
                        "another cluster to group several in one zone")
    q.add_argument("--secret-file", required=True, metavar="FILE",
                   help="file holding the secret shared with the zone")
    q.add_argument("--local-address", metavar="HOST:PORT",
                   help="where the zone reaches this site's 'nxstore serve' (default, and "
                        "only then optional: where the running daemon serves PATH)")
    q.add_argument("--tls-ca", metavar="FILE",
                   help="connect over TLS; the zone's certificate must chain to this PEM CA")
    q.set_defaults(func=cmd_add)

    q = zsub.add_parser("list", help="list the paired zones and their clusters (and this "
                                     "site's zone when it has other clusters)")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--check", action="store_true", help="ask each cluster whether it is up")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_list)

    q = zsub.add_parser("remove", help="unpair a zone no policy or plan names, or one of its "
                                       "clusters no policy names (here and there)")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--cluster", metavar="SITE", help="remove only this cluster of the zone")
    q.set_defaults(func=cmd_remove)


def cmd_add(args: argparse.Namespace) -> int:
    secret = read_secret(args.secret_file)
    with open_cluster(args.path) as c:
        if args.local_address is None and admin.served_cluster(args.path) is None:
            raise CliError(f"{args.path} is not served now: say where the zone reaches this "
                           "site with --local-address HOST:PORT (of its 'nxstore serve'), or "
                           "run 'zone add' while 'nxstore serve' runs")
        zone = c.connect_zone(args.name, args.address, secret,
                              local_address=args.local_address, tls_ca=args.tls_ca or "",
                              cluster=args.cluster)
        member = next(m for m in zone.clusters if m.name == (args.cluster or args.name))
        print(f"paired with zone {zone.name} at {member.address} (cluster {member.name}, id "
              f"{member.id}; zone clusters: {', '.join(zone.cluster_names)}); it lists "
              f"{c.site_name} as a zone too")
    return 0


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def cmd_list(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        own = c.local_zone()
        listed = ([own] if len(own.clusters) > 1 else []) + c.zones()
        zones = [{"name": z.name, "local": z.local,
                  "clusters": [{"name": m.name, "id": m.id, "address": m.address,
                                "connected_at": m.connected_at, "this_site": m.name ==
                                c.site_name} for m in z.clusters]} for z in listed]
        if args.check:
            for z in zones:
                for m in z["clusters"]:
                    why = "" if m["this_site"] else c.zone_up(z["name"], m["name"])
                    m["up"], m["error"] = not why, why
                z["up"] = all(m["up"] for m in z["clusters"])
    if args.json:
        print(json.dumps(zones, indent=2))
        return 0
    if not zones:
        print("no availability zones")
        return 0
    header = ("ZONE", "CLUSTER", "ADDRESS", "ID", "PAIRED") + (("UP",) if args.check else ())
    rows = []
    for z in zones:
        for m in z["clusters"]:
            paired = "this site" if m["this_site"] else _when(m["connected_at"])
            up = (("yes" if m["up"] else f"no: {m['error']}"),) if args.check else ()
            rows.append((z["name"] + (" (this site's)" if z["local"] else ""), m["name"],
                         m["address"] or "-", m["id"], paired) + up)
    print(table(rows, header))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.remove_zone(args.name, args.cluster)
    print(f"unpaired cluster {args.cluster} of zone {args.name}" if args.cluster
          else f"unpaired zone {args.name}")
    return 0
