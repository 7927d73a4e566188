"""NearSync commands: `lws` (take a light-weight snapshot) and, in the `pd` group, `nearsync`
(state and RPO per remote site, at the source), `restore-points` and `restore-point` (at a
remote: list the vDisk snapshots and LWS it holds, restore at one). The NearSync settings
(`Cluster.configure_nearsync`) belong to the process running the schedules, so they have no
command here."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from .common import CliError, open_cluster, table
from .pd_cmds import _when


def register(sub: argparse._SubParsersAction) -> None:
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
        print(f"LWS {lws.name} (marker seq {lws.seq}) of {', '.join(lws.vdisks)} at "
              f"{_when(lws.created_at)}")
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
    with open_cluster(args.path) as c:
        points = c.restore_points(args.name)
        found = points[-1:] if args.latest else [
            p for p in points if args.point in (p.name, p.kind == "lws" and str(p.seq))]
        if not found:
            raise CliError(f"no restore point {args.point!r} of {args.name} here "
                           f"(see 'nxstore pd restore-points {args.path} {args.name}')")
        if len(found) > 1:
            raise CliError(f"{args.point!r} names {len(found)} restore points: give the LWS "
                           "by its SEQ")
        made = c.restore_point(found[0], args.prefix)
        print(f"restored {found[0].kind} {found[0].name} of {_when(found[0].created_at)}: "
              f"{', '.join(vd.name for vd in made)}")
    return 0
