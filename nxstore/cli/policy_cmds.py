"""Protection policy commands: policy create|list|show|update|delete|migrate-pd
(nxstore.leap.policies). SCHEDULE syntax: nxstore.cli.specs."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from .common import CliError, open_cluster, table
from .replication_cmds import read_secret
from .specs import schedule_arg, schedule_text

if TYPE_CHECKING:
    from ..leap import PolicySchedule, ProtectionPolicy

_SCHEDULE_HELP = ("every=DURATION[,keep-local=N][,keep-remote=N][,app-consistent] (async: "
                  "1h or more; NearSync: up to 15m) or rpo=0,witness=HOST:PORT (synchronous, "
                  "with --witness-secret-file); DURATION: seconds or 30s, 15m, 1h, 1d; "
                  "keep-* default 1 (repeat for more schedules)")

_CREATE_EXAMPLE = """example (hourly, app-consistent, and every 15 minutes; 4 kept here, 2 there):
  nxstore policy create /srv/canada ca-to-fr --primary canada --recovery france \\
      --schedule every=1h,keep-local=4,keep-remote=2,app-consistent \\
      --schedule every=15m,keep-local=4 --category replicated-vm:from-canada"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="Leap protection policies: protect VMs by category "
                                      "(and whole containers) from one zone to others")
    psub = p.add_subparsers(dest="policy_cmd", metavar="COMMAND", required=True)

    def cmd(name: str, help: str, func, *, named: bool = True,
            **kw: Any) -> argparse.ArgumentParser:
        q = psub.add_parser(name, help=help, **kw)
        q.add_argument("path", metavar="PATH")
        if named:
            q.add_argument("name", metavar="NAME")
        q.set_defaults(func=func)
        return q

    def fields(q: argparse.ArgumentParser, *, required: bool) -> None:
        q.add_argument("--primary", required=required, metavar="ZONE[/CLUSTER]",
                       help="where the VMs run: this site's zone or a paired zone, and its "
                            "cluster (needed when the zone has several)")
        q.add_argument("--recovery", required=required, action="append",
                       metavar="ZONE[/CLUSTER]",
                       help="a zone (and its cluster, needed when the zone has several) the "
                            "VMs are protected to (repeat)")
        q.add_argument("--schedule", required=required, action="append", type=schedule_arg,
                       metavar="SPEC", help=_SCHEDULE_HELP)
        q.add_argument("--witness-secret-file", metavar="FILE",
                       help="the witness's shared secret (for an rpo=0 schedule)")
        q.add_argument("--category", action="append", metavar="KEY:VALUE",
                       help="protect the VMs with this category (repeat)")
        q.add_argument("--container", action="append", metavar="NAME",
                       help="protect every vDisk of this container, later ones too (repeat)")

    q = cmd("create", "define a policy here and at the zones it names", cmd_create,
            epilog=_CREATE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    fields(q, required=True)
    q = cmd("update", "change a policy: each option given replaces that field", cmd_update)
    fields(q, required=False)
    q = cmd("list", "list the protection policies", cmd_list, named=False)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = cmd("show", "one protection policy in detail", cmd_show)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    cmd("delete", "delete a policy (its VMs stop being protected; recovery points are kept)",
        cmd_delete)
    q = cmd("migrate-pd", "move a protection domain into a policy, keeping its recovery "
                          "points", cmd_migrate_pd, named=False)
    q.add_argument("pd", metavar="PD")
    q.add_argument("policy", metavar="POLICY")


def _schedules(args: argparse.Namespace) -> list[PolicySchedule] | None:
    """The --schedule options, synchronous ones given the witness's secret."""
    if args.schedule is None:
        if args.witness_secret_file:
            raise CliError("--witness-secret-file goes with an rpo=0 --schedule")
        return None
    synchronous = any(s.every == 0 for s in args.schedule)
    if synchronous != bool(args.witness_secret_file):
        raise CliError("an rpo=0 schedule needs --witness-secret-file" if synchronous else
                       "--witness-secret-file goes with an rpo=0 --schedule")
    if not synchronous:
        return args.schedule
    secret = read_secret(args.witness_secret_file)
    return [dataclasses.replace(s, witness_secret=secret) if s.every == 0 else s
            for s in args.schedule]


def _info(p: ProtectionPolicy) -> dict[str, Any]:
    """A policy as shown (never the witness's secret)."""
    return {"name": p.name, "primary": p.primary, "recovery": list(p.recovery),
            "primary_cluster": p.primary_cluster,
            "recovery_clusters": list(p.recovery_clusters),
            "schedules": [{"kind": s.kind, "every_s": s.every, "keep_local": s.keep_local,
                           "keep_remote": s.keep_remote, "app_consistent": s.app_consistent,
                           "witness": s.witness, "spec": schedule_text(s)}
                          for s in p.schedules],
            "categories": [f"{k}:{v}" for k, v in p.categories],
            "containers": list(p.containers), "version": p.version}


def _where(zone: str, cluster: str) -> str:
    """A location as typed: ZONE, or ZONE/CLUSTER when the cluster is not called like it."""
    return zone if cluster == zone else f"{zone}/{cluster}"


def _route(info: dict[str, Any]) -> str:
    """PRIMARY -> RECOVERY, ... of a policy as shown."""
    recovery = [_where(z, c) for z, c in zip(info["recovery"], info["recovery_clusters"],
                                             strict=True)]
    return f"{_where(info['primary'], info['primary_cluster'])} -> {', '.join(recovery)}"


def _print_one(info: dict[str, Any]) -> None:
    print(f"policy {info['name']}: {_route(info)} (version {info['version']})")
    for s in info["schedules"]:
        print(f"schedule ({s['kind']}): {s['spec']}")
    print(f"categories: {', '.join(info['categories']) or '-'}")
    print(f"containers: {', '.join(info['containers']) or '-'}")


def cmd_create(args: argparse.Namespace) -> int:
    schedules = _schedules(args)
    with open_cluster(args.path) as c:
        policy = c.create_policy(args.name, args.primary, args.recovery, schedules or (),
                                 categories=args.category or (),
                                 containers=args.container or ())
        print(f"created policy {policy.name}: {_route(_info(policy))}")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    given = {"primary": args.primary, "recovery": args.recovery, "schedules": _schedules(args),
             "categories": args.category, "containers": args.container}
    changes = {k: v for k, v in given.items() if v is not None}
    if not changes:
        raise CliError("nothing to change: give --primary, --recovery, --schedule, "
                       "--category or --container")
    with open_cluster(args.path) as c:
        policy = c.update_policy(args.name, **changes)
        print(f"updated policy {policy.name} (version {policy.version}): "
              f"{', '.join(sorted(changes))}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        policies = [_info(p) for p in c.policies()]
    if args.json:
        print(json.dumps(policies, indent=2))
        return 0
    if not policies:
        print("no protection policies")
        return 0
    print(table([(p["name"], *_route(p).split(" -> "),
                  " ".join(s["spec"] for s in p["schedules"]),
                  ",".join(p["categories"] + [f"container:{c}" for c in p["containers"]]))
                 for p in policies],
                ("POLICY", "PRIMARY", "RECOVERY", "SCHEDULES", "APPLIES TO")))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        info = _info(c.policy(args.name))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_one(info)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.delete_policy(args.name)
    print(f"deleted policy {args.name}")
    return 0


def cmd_migrate_pd(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.migrate_pd_to_policy(args.pd, args.policy)
    print(f"protection domain {args.pd} is now protected by policy {args.policy} "
          "(its recovery points kept)")
    return 0
