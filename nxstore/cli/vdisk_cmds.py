"""vDisk commands: vdisk create|list|delete|resize."""

from __future__ import annotations

import argparse
import json

from .common import human, open_cluster, size_arg, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vdisk", help="thin virtual disks")
    vsub = p.add_subparsers(dest="vdisk_cmd", metavar="COMMAND", required=True)

    q = vsub.add_parser("create", help="create a thin vDisk (costs no space until written)")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.add_argument("size", metavar="SIZE", type=size_arg, help="e.g. 10G, 512M, 4096")
    q.add_argument("--container", default="default", metavar="C",
                   help="storage container (default: default)")
    q.set_defaults(func=cmd_create)

    q = vsub.add_parser("list", help="list vDisks")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_list)

    q = vsub.add_parser("delete", help="delete a vDisk")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--with-snapshots", action="store_true",
                   help="delete its snapshots too (clones of them are kept)")
    q.set_defaults(func=cmd_delete)

    q = vsub.add_parser("resize", help="grow a vDisk")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.add_argument("size", metavar="SIZE", type=size_arg, help="new size (grow only)")
    q.set_defaults(func=cmd_resize)


def cmd_create(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        vd = c.create_vdisk(args.name, args.size, container=args.container)
        print(f"created vDisk {vd.name} ({human(vd.size)}, container {vd.container})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        rows = [(vd.name, vd.size, vd.container, len(vd.snapshots())) for vd in c.vdisks()]
    if args.json:
        print(json.dumps([{"name": n, "size": s, "container": ct, "snapshots": k}
                          for n, s, ct, k in rows], indent=2))
        return 0
    print(table([(n, human(s), ct, str(k)) for n, s, ct, k in rows],
                ("NAME", "SIZE", "CONTAINER", "SNAPSHOTS")))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.delete_vdisk(args.name, with_snapshots=args.with_snapshots)
    print(f"deleted vDisk {args.name}")
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        vd = c.vdisk(args.name)
        old = vd.size
        vd.resize(args.size)
    print(f"resized vDisk {args.name}: {human(old)} -> {human(args.size)}")
    return 0
