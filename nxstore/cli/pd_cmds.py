"""Protection-domain commands: pd create|add|remove|list|show|snapshot|schedule|restore|
migrate|activate (+ sync, failback). Remote operations talk to the peer's `nxstore serve`.
An entity is named by its VM or vDisk name, a container as container:NAME."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from datetime import timedelta

from .common import CliError, count_arg, open_cluster, plural, table
from .vm_cmds import parse_pairs

ENTITY_HELP = "a VM or vDisk name, or container:NAME (its vDisks of no VM, also later ones)"
_EVERY_RE = re.compile(r"^\s*(\d+)\s*(s|m|min|h|d)\s*$", re.IGNORECASE)


def every_arg(text: str) -> timedelta:
    """'10s' (NearSync), '30m', '1h', '2d' -> timedelta (argparse type)."""
    m = _EVERY_RE.match(text)
    if not m or int(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"bad interval {text!r}: use e.g. 10s, 30m, 1h or 1d")
    n, unit = int(m.group(1)), m.group(2).lower()
    return {"s": timedelta(seconds=n), "m": timedelta(minutes=n), "min": timedelta(minutes=n),
            "h": timedelta(hours=n), "d": timedelta(days=n)}[unit]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pd", help="protection domains: snapshots, schedules, migrate, activate")
    psub = p.add_subparsers(dest="pd_cmd", metavar="COMMAND", required=True)

    def cmd(name: str, help: str, func, *, pd: bool = True) -> argparse.ArgumentParser:
        q = psub.add_parser(name, help=help)
        q.add_argument("path", metavar="PATH")
        if pd:
            q.add_argument("name", metavar="PD")
        q.set_defaults(func=func)
        return q

    q = cmd("create", "create a protection domain", cmd_create)
    q.add_argument("entities", metavar="ENTITY", nargs="*", help=ENTITY_HELP)
    q.add_argument("--cg", action="append", default=[], metavar="NAME=E1,E2",
                   help="a consistency group of some of the entities (repeat)")

    q = cmd("add", "protect more entities", cmd_add)
    q.add_argument("entities", metavar="ENTITY", nargs="+", help=ENTITY_HELP)

    q = cmd("remove", "stop protecting entities (their snapshots stay)", cmd_remove)
    q.add_argument("entities", metavar="ENTITY", nargs="+", help=ENTITY_HELP)

    q = cmd("list", "list the protection domains", cmd_list, pd=False)
    q.add_argument("--json", action="store_true", help="machine-readable output")

    q = cmd("show", "one protection domain in detail", cmd_show)
    q.add_argument("--json", action="store_true", help="machine-readable output")

    q = cmd("snapshot", "take a PD snapshot now", cmd_snapshot)
    q.add_argument("--name", dest="snap_name", metavar="NAME")
    q.add_argument("--replicate-to", action="append", default=[], metavar="SITE")
    q.add_argument("--app-consistent", action="store_true")

    q = cmd("schedule", "add a schedule (or list them without --every)", cmd_schedule)
    q.add_argument("--every", type=every_arg, metavar="INTERVAL", help="30m, 1h, 1d...")
    q.add_argument("--keep", type=count_arg, metavar="N", help="snapshots kept locally")
    q.add_argument("--remote", action="append", default=[], metavar="SITE=N",
                   help="replicate each snapshot to SITE, keep N there (repeat)")
    q.add_argument("--app-consistent", action="store_true")
    q.add_argument("--remove", type=int, metavar="ID", help="delete schedule ID")

    q = cmd("restore", "recover the PD's entities from a PD snapshot", cmd_restore)
    q.add_argument("snapshot", metavar="SNAPSHOT")
    q.add_argument("--mode", choices=("overwrite", "clone"), default="overwrite")
    q.add_argument("--prefix", default="restored-", help="name prefix of clones")
    q.add_argument("--power-on", action="store_true")

    q = cmd("migrate", "planned failover to SITE (re-run to resume)", cmd_migrate)
    q.add_argument("site", metavar="SITE", nargs="?")
    q.add_argument("--rollback", action="store_true", help="undo an unfinished migration")
    q.add_argument("--power-on", action="store_true",
                   help="power on at SITE the VMs that were on here (default: left off)")

    q = cmd("activate", "unplanned failover: bring the PD up here", cmd_activate)
    q.add_argument("--force", action="store_true",
                   help="activate even if the owner answers and still owns the PD")
    q.add_argument("--point", metavar="NAME|SEQ",
                   help="the restore point to come up at: a PD snapshot or LWS name, or an "
                        "LWS's SEQ (default: the newest, see 'pd restore-points')")
    q = cmd("sync", "ask the peers who owns the PD (demote here if not us)", cmd_sync)
    q = cmd("failback", "after activate: replicate the deltas back and migrate home", cmd_failback)
    q.add_argument("site", metavar="SITE", nargs="?")
    q.add_argument("--no-migrate", action="store_true", help="only reprotect (replicate back)")
    q.add_argument("--power-on", action="store_true",
                   help="power on at SITE the VMs that were on here (default: left off)")

    from . import metro_cmds, nearsync_cmds  # they import this module: not at the top

    nearsync_cmds.register_pd(psub)
    metro_cmds.register_pd(psub)


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def cmd_create(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        pd = c.create_protection_domain(args.name, entities=args.entities)
        for spec in args.cg:
            for name, members in parse_pairs([spec], "consistency group").items():
                pd.add_consistency_group(name, [m for m in members.split(",") if m])
        print(f"created protection domain {pd.name} "
              f"({plural(len(args.entities), 'entity', 'entities')})")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.protection_domain(args.name).add_entities(args.entities)
    print(f"protection domain {args.name}: added {', '.join(args.entities)}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.protection_domain(args.name).remove_entities(args.entities)
    print(f"protection domain {args.name}: removed {', '.join(args.entities)}")
    return 0


def _entity_label(entity) -> str:
    """An entity as the commands name it (containers as container:NAME)."""
    from ..protection.domain import CONTAINER_PREFIX
    from ..store.catalog import ContainerRow

    return CONTAINER_PREFIX + entity.name if isinstance(entity, ContainerRow) else entity.name


def _summary(pd) -> dict:
    snaps = pd.snapshots()
    return {"name": pd.name, "state": pd.state, "owner_site": pd.owner_site, "epoch": pd.epoch,
            "entities": ([_entity_label(e) for e in pd.entities()] if pd.state != "inactive"
                         else []),
            "snapshots": len(snaps), "newest": snaps[-1].name if snaps else None}


def cmd_list(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        pds = [_summary(p) for p in c.protection_domains()]
    if args.json:
        print(json.dumps(pds, indent=2))
        return 0
    if not pds:
        print("no protection domains")
        return 0
    print(table([(p["name"], p["state"], p["owner_site"], str(p["epoch"]),
                  ",".join(p["entities"]) or "-", str(p["snapshots"])) for p in pds],
                ("NAME", "STATE", "OWNER", "EPOCH", "ENTITIES", "SNAPSHOTS")))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        pd = c.protection_domain(args.name)
        info = _summary(pd)
        info["consistency_groups"] = pd.consistency_groups()
        info["schedules"] = [{"id": s.id, "every_s": s.every.total_seconds(),
                              "keep_local": s.keep_local, "keep_remote": s.keep_remote,
                              "enabled": s.enabled, "next_due": s.next_due}
                             for s in pd.schedules()]
        info["snapshot_list"] = [{"name": s.name, "created_at": s.created_at,
                                  "consistency": s.consistency,
                                  "replicated_to": s.replicated_to() if pd.state != "inactive"
                                  else []} for s in pd.snapshots()]
        info["journal"] = [{"kind": j.kind, "site": j.site, "step": j.step, "status": j.status,
                            "epoch": j.epoch, "snapshot": j.snapshot, "error": j.error}
                           for j in pd.journal()]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"protection domain {info['name']}: {info['state']}, owner {info['owner_site']}, "
          f"epoch {info['epoch']}")
    print(f"entities: {', '.join(info['entities']) or '-'}")
    for cg, members in info["consistency_groups"].items():
        print(f"consistency group {cg}: {', '.join(members)}")
    for s in info["schedules"]:
        print(f"schedule {s['id']}: {_schedule_text(s['every_s'], s['keep_local'], s['keep_remote'])}"
              f"{'' if s['enabled'] else ' (disabled)'}, next {_next(s['next_due'])}")
    for s in info["snapshot_list"]:
        print(f"snapshot {s['name']}  {_when(s['created_at'])}  {s['consistency']}"
              f"  {','.join(s['replicated_to'])}")
    for j in info["journal"]:
        print(f"journal: {j['kind']} {j['site']} step {j['step']} {j['status']}"
              f"{' ' + j['error'] if j['error'] else ''}")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        snap = c.protection_domain(args.name).snapshot(
            replicate_to=args.replicate_to, name=args.snap_name,
            app_consistent=args.app_consistent)
        where = f", replicated to {', '.join(args.replicate_to)}" if args.replicate_to else ""
        print(f"PD snapshot {snap.name} ({snap.consistency}-consistent){where}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        pd = c.protection_domain(args.name)
        if args.remove is not None:
            pd.remove_schedule(args.remove)
            print(f"removed schedule {args.remove}")
            return 0
        if args.every is None:
            if args.keep is not None or args.remote:
                raise CliError("--keep and --remote need --every")
            for s in pd.schedules():
                print(f"{s.id}: {_schedule_text(s.every.total_seconds(), s.keep_local, s.keep_remote)}"
                      f", {'enabled' if s.enabled else 'disabled'}, next {_next(s.next_due)}")
            return 0
        if args.keep is None:
            raise CliError("a schedule needs --keep N")
        remote = {k: _count(v, f"--remote {k}") for k, v in
                  parse_pairs(args.remote, "--remote").items()}
        s = pd.add_schedule(every=args.every, keep_local=args.keep, keep_remote=remote,
                            app_consistent=args.app_consistent)
        print(f"added schedule {s.id}: "
              f"{_schedule_text(s.every.total_seconds(), s.keep_local, s.keep_remote)}")
    return 0


def _schedule_text(every_s: float, keep: int, remote: dict[str, int]) -> str:
    """'every 10s, keep 2, remote canada=24' (CLI words, as `pd schedule` takes them)."""
    from ..protection.schedule import interval_text

    where = ", ".join(f"{site}={n}" for site, n in sorted(remote.items()))
    return f"every {interval_text(every_s)}, keep {keep}" + (f", remote {where}" if where else "")


def _next(due: float | None) -> str:
    return "at the scheduler's first pass" if due is None else _when(due)


def _count(text: str, what: str) -> int:
    try:
        return count_arg(text)
    except argparse.ArgumentTypeError as exc:
        raise CliError(f"{what}: {exc}") from None


def cmd_restore(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        pd = c.protection_domain(args.name)
        res = pd.restore(pd.get_snapshot(args.snapshot), mode=args.mode, prefix=args.prefix,
                         power_on=args.power_on)
        print(f"restored {res.snapshot} ({res.mode}): VMs {', '.join(res.vms) or '-'}; "
              f"vDisks {', '.join(res.vdisks) or '-'}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        pd = c.protection_domain(args.name)
        if args.rollback:
            made = pd.rollback_migrate()
            print(f"migration of {pd.name} rolled back; VMs registered again: "
                  f"{', '.join(made) or '-'}")
            return 0
        if not args.site:
            raise CliError("migrate needs a SITE (or --rollback)")
        res = pd.migrate(args.site, power_on=args.power_on)
        print(f"migrated {pd.name} to {res.site} (epoch {res.epoch}, final snapshot "
              f"{res.snapshot}); steps run: {', '.join(res.steps) or 'none'}")
        if not res.power_on:
            print(f"its VMs are powered off at {res.site}: start them there (nxstore vm "
                  "power-on)")
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        res = c.activate(args.name, force=args.force, point=args.point)
        what = f"LWS {res.lws} (composed into {res.snapshot})" if res.lws else res.snapshot
        print(f"activated {res.pd} (epoch {res.epoch}) from {what} taken "
              f"{_when(res.snapshot_created_at)}; VMs {', '.join(res.vms)}; writes at "
              f"{res.previous_owner} after that point are lost")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        res = c.protection_domain(args.name).sync_ownership()
        print(f"{args.name}: {res.state}, owner {res.owner_site}, epoch {res.epoch}"
              f"{' (demoted)' if res.demoted else ''}")
        for site, err in res.errors.items():
            print(f"  {site}: unreachable: {err}")
    return 0


def cmd_failback(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        res = c.protection_domain(args.name).failback(args.site, migrate_back=not args.no_migrate,
                                                      power_on=args.power_on)
        print(f"reprotected {res.pd} to {res.site}: {res.reprotect.blocks_total} blocks changed "
              f"since {res.reprotect.base_snapshot}")
        if res.migrate:
            print(f"migrated back to {res.site} (epoch {res.migrate.epoch}); its VMs are "
                  f"powered {'on as they were here' if res.migrate.power_on else 'off there'}")
    return 0
