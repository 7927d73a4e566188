"""Snapshot commands: snapshot create|list|delete, clone, restore."""

from __future__ import annotations

import argparse
import datetime as dt
import json

from .common import CliError, human, open_cluster, open_engine, split_ref, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="zero-copy vDisk snapshots")
    ssub = p.add_subparsers(dest="snapshot_cmd", metavar="COMMAND", required=True)

    q = ssub.add_parser("create", help="snapshot a vDisk (O(1))")
    q.add_argument("path", metavar="PATH")
    q.add_argument("vdisk", metavar="VDISK", help="VDISK, or VDISK@NAME")
    q.add_argument("name", metavar="NAME", nargs="?")
    q.set_defaults(func=cmd_create)

    q = ssub.add_parser("list", help="list snapshots (of one vDisk, or of all)")
    q.add_argument("path", metavar="PATH")
    q.add_argument("vdisk", metavar="VDISK", nargs="?")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_list)

    q = ssub.add_parser("delete", help="delete a snapshot (its clones stay intact)")
    q.add_argument("path", metavar="PATH")
    q.add_argument("vdisk", metavar="VDISK", help="VDISK, or VDISK@NAME")
    q.add_argument("name", metavar="NAME", nargs="?")
    q.set_defaults(func=cmd_delete)

    p = sub.add_parser("clone", help="new writable vDisk from a snapshot (O(1))")
    p.add_argument("path", metavar="PATH")
    p.add_argument("source", metavar="VDISK@SNAP")
    p.add_argument("name", metavar="NEWNAME")
    p.set_defaults(func=cmd_clone)

    p = sub.add_parser("restore", help="make a vDisk read as one of its snapshots again")
    p.add_argument("path", metavar="PATH")
    p.add_argument("source", metavar="VDISK@SNAP")
    p.set_defaults(func=cmd_restore)


def _snap_ref(args: argparse.Namespace) -> tuple[str, str]:
    """VDISK NAME or VDISK@NAME (exactly one of the two forms)."""
    vdisk, snap = split_ref(args.vdisk, need_snap=False)
    if snap and args.name:
        raise CliError(f"give the snapshot name once: {args.vdisk!r} and {args.name!r}")
    snap = snap or args.name
    if not snap:
        raise CliError("missing snapshot NAME (use VDISK NAME or VDISK@NAME)")
    return vdisk, snap


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def cmd_create(args: argparse.Namespace) -> int:
    vdisk, snap = _snap_ref(args)
    with open_engine(args.path) as c:
        s = c.vdisk(vdisk).snapshot(snap)
        print(f"created snapshot {vdisk}@{s.name}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        vdisks = [c.vdisk(args.vdisk)] if args.vdisk else c.vdisks()
        snaps = [s for vd in vdisks for s in vd.snapshots()]
        rows = [(s.vdisk_name, s.name, s.size, s.created_at) for s in snaps]
    if args.json:
        print(json.dumps([{"vdisk": v, "name": n, "size": sz, "created_at": t}
                          for v, n, sz, t in rows], indent=2))
        return 0
    print(table([(v, n, human(sz), _when(t)) for v, n, sz, t in rows],
                ("VDISK", "SNAPSHOT", "SIZE", "CREATED")))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    vdisk, snap = _snap_ref(args)
    with open_cluster(args.path) as c:
        c.snapshot(vdisk, snap).delete()
    print(f"deleted snapshot {vdisk}@{snap}")
    return 0


def cmd_clone(args: argparse.Namespace) -> int:
    vdisk, snap = split_ref(args.source, need_snap=True)
    with open_engine(args.path) as c:
        vd = c.clone(c.snapshot(vdisk, snap), args.name)
        print(f"created vDisk {vd.name} as a clone of {vdisk}@{snap} ({human(vd.size)})")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    vdisk, snap = split_ref(args.source, need_snap=True)
    with open_cluster(args.path) as c:
        c.vdisk(vdisk).restore(c.snapshot(vdisk, snap))
        c.vdisk(vdisk).flush()
    print(f"restored vDisk {vdisk} to snapshot {snap}")
    return 0
