"""NearSync commands: `lws` (take a light-weight snapshot), `nearsync config` (the cluster's
NearSync settings, kept in its catalogue) and, in the `pd` group, `nearsync` (state and RPO
per remote site, at the source), `restore-points` and `restore-point` (at a remote: list the
vDisk snapshots and LWS it holds, restore at one)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from .common import CliError, open_cluster, table
from .pd_cmds import _when, every_arg

# option -> NearSyncConfig field, with what it means
SETTINGS = {
    "max_interval": "schedules this frequent or more run as NearSync",
    "lag_threshold": "shipping further behind than this falls back to snapshots",
    "compose_every": "how often the remote composes a vDisk snapshot",
    "ship_timeout": "the longest one shipping round may take",
}


def seconds_arg(text: str) -> float:
    """'90', '2.5' (seconds) or '10s', '30m', '1h', '1d' -> seconds (argparse type)."""
    try:
        return float(text)
    except ValueError:
        return every_arg(text).total_seconds()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nearsync", help="NearSync settings of a cluster")
    nsub = p.add_subparsers(dest="nearsync_cmd", metavar="COMMAND", required=True)
    q = nsub.add_parser("config", help="show or change the NearSync settings (kept in the "
                                       "catalogue: the daemon uses them)")
    q.add_argument("path", metavar="PATH")
    for name, meaning in SETTINGS.items():
        q.add_argument(f"--{name.replace('_', '-')}", type=seconds_arg, metavar="S",
                       help=f"seconds (or 10s, 30m, 1h): {meaning}")
    q.set_defaults(func=cmd_config)

    q = sub.add_parser("lws", help="take a light-weight snapshot (an OpLog marker, O(1))")
    q.add_argument("path", metavar="PATH")
    q.add_argument("vdisks", metavar="VDISK", nargs="*",
                   help="the vDisks it covers, at one crash-consistent point")
    q.add_argument("--pd", metavar="PD",
                   help="cover the protection domain's vDisks (its NearSync schedule ships it)")
    q.add_argument("--name", metavar="NAME", help="default: lws-<marker seq>")
    q.set_defaults(func=cmd_lws)


def register_pd(psub: argparse._SubParsersAction) -> None:
    """Add the NearSync subcommands to the `pd` group (called by pd_cmds.register)."""

    def cmd(name: str, help: str, func) -> argparse.ArgumentParser:  # noqa: ANN001
        q = psub.add_parser(name, help=help)
        q.add_argument("path", metavar="PATH")
        q.add_argument("name", metavar="PD")
        q.set_defaults(func=func)
        return q

    q = cmd("nearsync", "NearSync state, history and RPO per remote site", cmd_nearsync)
    q.add_argument("--history", action="store_true", help="also list the state transitions")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = cmd("restore-points", "at a remote: the PD's vDisk snapshots and LWS held here",
            cmd_restore_points)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = cmd("restore-point", "at a remote: new vDisks reading as one restore point",
            cmd_restore_point)
    q.add_argument("point", metavar="POINT", nargs="?",
                   help="a restore point's name, or an LWS's SEQ (see restore-points)")
    q.add_argument("--latest", action="store_true", help="the newest restore point")
    q.add_argument("--prefix", required=True, help="name prefix of the new vDisks")


def cmd_lws(args: argparse.Namespace) -> int:
    if bool(args.vdisks) == bool(args.pd):
        raise CliError("lws needs VDISK names or --pd PD (not both)")
    with open_cluster(args.path) as c:
        vdisks = [c.vdisk(n) for n in args.vdisks]
        lws = c.lws_group(vdisks, args.name, pd=args.pd)
        owner = next((pd.name for pd in c.protection_domains() if pd.id == lws.pd_id), None)
        where = (f"protection domain {owner} ships it with its next NearSync round" if owner
                 else "kept here only (its vDisks are not all in one protection domain)")
        print(f"LWS {lws.name} (marker seq {lws.seq}) of {', '.join(lws.vdisks)} at "
              f"{_when(lws.created_at)}; {where}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    changes = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    with open_cluster(args.path) as c:
        cfg = c.configure_nearsync(**changes) if changes else c.nearsync_config()
    print(table([(name, f"{getattr(cfg, name):g} s", meaning) for name, meaning in SETTINGS.items()],
                ("SETTING", "VALUE", "MEANING")))
    return 0


def cmd_nearsync(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        pd = c.protection_domain(args.name)
        states, rpo = pd.replication_state(), pd.rpo()
    if args.json:
        print(json.dumps({site: {**asdict(s), "rpo_s": rpo.get(site)}
                          for site, s in states.items()}, indent=2))
        return 0
    if not states:
        print(f"{args.name}: no NearSync schedule has run (schedules every 15 min or less with "
              "remote sites run NearSync)")
        return 0
    rows = [(site, s.state, _when(s.since), str(s.shipped_seq or "-"), _when(s.shipped_at),
             s.base_snapshot or "-", _age(rpo.get(site))) for site, s in sorted(states.items())]
    print(table(rows, ("SITE", "STATE", "SINCE", "LWS SEQ", "LWS TAKEN", "CHAIN ON", "RPO")))
    if args.history:
        for site, s in sorted(states.items()):
            for t in s.history:
                print(f"{site}: {_when(t.at)}  {t.old} -> {t.new}  ({t.reason})")
    return 0


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def cmd_restore_points(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        points = c.restore_points(args.name)
    if args.json:
        print(json.dumps([asdict(p) for p in points], indent=2))
        return 0
    print(table([(p.kind, p.name, str(p.seq or "-"), _when(p.created_at), ",".join(p.vdisks))
                 for p in points], ("KIND", "NAME", "SEQ", "TAKEN", "VDISKS")))
    return 0


def cmd_restore_point(args: argparse.Namespace) -> int:
    if bool(args.point) == args.latest:
        raise CliError("restore-point needs a POINT name or --latest (not both)")
    from ..protection.modes import find_point

    with open_cluster(args.path) as c:
        points = c.restore_points(args.name)
        point = points[-1] if args.latest else find_point(points, args.point, args.name)
        made = c.restore_point(point, args.prefix)
        print(f"restored {point.kind} {point.name} of {_when(point.created_at)}: "
              f"{', '.join(vd.name for vd in made)}")
    return 0
