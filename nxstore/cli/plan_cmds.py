"""Recovery plan commands: plan create|list|show|delete|validate|failover|cleanup|reverse
(nxstore.leap.plans, nxstore.leap.recovery). STAGE and NETWORK syntax: nxstore.cli.specs.

The actions run at the plan's recovery zone and print their report: every step with its
status, seconds and detail, then the plan's status; the exit status is 1 (and the last line
on stderr says so) unless it is Succeeded. `plan failover` asks for the word Failover on
stdin first unless --yes; a command forwarded into the daemon was confirmed by the client
before it was sent, so the daemon does not ask again."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import admin
from .common import CliError, open_cluster, plural, table
from .progress import Progress
from .specs import network_arg, network_text, stage_arg, stage_text

if TYPE_CHECKING:
    from ..cluster import RecoveryPlan
    from ..leap import PlanReport
    from ..leap.recovery import PlanStep

CONFIRM_WORD = "Failover"
_STAGE_HELP = ("a stage, in boot order (repeat): 'vms=VM,VM;categories=KEY:VALUE,...;"
               "delay=DURATION;hook=/ABS/PATH' (fields separated by ';': quote it); its VMs "
               "power on in the order named, then the VMs with a category; delay: seconds "
               "(or 30s, 2m) after the previous stage; hook: run at the recovery zone as "
               "'HOOK PLAN ACTION VM...' once the stage is on, exit 0 to go on")
_NETWORK_HELP = ("map a primary network to the recovery zone's, and optionally the test "
                 "networks a test failover uses: PRIMARY=RECOVERY[,test=PRIMARY_TEST="
                 "RECOVERY_TEST] (repeat)")

_CREATE_EXAMPLE = """example (db first, then the VMs with category tier:web 30 s later):
  nxstore plan create /srv/france ca-plan --primary canada --recovery france \\
      --stage vms=db --stage 'categories=tier:web;delay=30s;hook=/srv/hooks/smoke' \\
      --network VLAN50=FR-VLAN50,test=VLAN51=FR-VLAN51"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="Leap recovery plans: stages, networks, test, planned and "
                                    "unplanned failover, reverse")
    psub = p.add_subparsers(dest="plan_cmd", metavar="COMMAND", required=True)

    def cmd(name: str, help: str, func, *, named: bool = True, as_json: bool = True,
            **kw: Any) -> argparse.ArgumentParser:
        q = psub.add_parser(name, help=help, **kw)
        q.add_argument("path", metavar="PATH")
        if named:
            q.add_argument("name", metavar="NAME")
        if as_json:
            q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(func=func)
        return q

    q = cmd("create", "define a recovery plan here and at its other zone", cmd_create,
            as_json=False, epilog=_CREATE_EXAMPLE,
            formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--primary", required=True, metavar="ZONE", help="where the VMs run now")
    q.add_argument("--recovery", required=True, metavar="ZONE", help="where they come up")
    q.add_argument("--stage", required=True, action="append", type=stage_arg, metavar="SPEC",
                   help=_STAGE_HELP)
    q.add_argument("--network", action="append", default=[], type=network_arg,
                   metavar="MAPPING", help=_NETWORK_HELP)
    q.add_argument("--stay-off", action="append", default=[], metavar="VM",
                   help="a VM of the plan that is not powered on at recovery (repeat)")
    cmd("list", "list the recovery plans", cmd_list, named=False)
    cmd("show", "one recovery plan in detail, with its last failover status", cmd_show)
    cmd("delete", "delete a recovery plan here and at its other zone", cmd_delete,
        as_json=False)
    cmd("validate", "report every problem that would stop a failover", cmd_validate)
    q = cmd("failover", "fail the plan over to this (its recovery) zone; asks for the word "
                        f"{CONFIRM_WORD} unless --yes", cmd_failover)
    kind = q.add_mutually_exclusive_group(required=True)
    kind.add_argument("--planned", dest="kind", action="store_const", const="planned",
                      help="the primary zone is up: stop, sync, move and start, no data lost")
    kind.add_argument("--unplanned", dest="kind", action="store_const", const="unplanned",
                      help="the primary zone is gone: come up from the newest recovery point")
    kind.add_argument("--test", dest="kind", action="store_const", const="test",
                      help="clones on the test networks; production is untouched")
    q.add_argument("--point", type=_clock_arg, metavar="CLOCK_SECONDS",
                   help="with --unplanned or --test: the newest recovery point at or before "
                        "this cluster-clock time (epoch seconds) instead of the newest")
    q.add_argument("--yes", action="store_true", help=f"do not ask for the word {CONFIRM_WORD}")
    cmd("cleanup", "remove exactly what the plan's test failover made here", cmd_cleanup)
    cmd("reverse", "after a failover: swap primary and recovery in the plan and its policies",
        cmd_reverse)


def _clock_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"bad point {text!r}: cluster-clock epoch seconds")
    return value


def _info(plan: RecoveryPlan) -> dict[str, Any]:
    spec = plan.spec
    return {"name": spec.name, "primary": spec.primary, "recovery": spec.recovery,
            "stages": [{"vms": list(s.vms), "categories": [f"{k}:{v}" for k, v in s.categories],
                        "delay": s.delay, "hook": s.hook, "spec": stage_text(s)}
                       for s in spec.stages],
            "networks": [{**dataclasses.asdict(n), "spec": network_text(n)}
                         for n in spec.networks],
            "stay_off": list(spec.stay_off), "version": spec.version,
            "last_failover_status": plan.last_failover_status}


def cmd_create(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        plan = c.create_recovery_plan(args.name, args.primary, args.recovery, args.stage,
                                      args.network, args.stay_off)
        print(f"created recovery plan {plan.name}: {args.primary} -> {args.recovery}, "
              f"{plural(len(args.stage), 'stage', 'stages')}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        plans = [_info(p) for p in c.recovery_plans()]
    if args.json:
        print(json.dumps(plans, indent=2))
        return 0
    if not plans:
        print("no recovery plans")
        return 0
    print(table([(p["name"], p["primary"], p["recovery"], str(len(p["stages"])),
                  p["last_failover_status"] or "-") for p in plans],
                ("PLAN", "PRIMARY", "RECOVERY", "STAGES", "LAST FAILOVER")))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        info = _info(c.recovery_plan(args.name))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"recovery plan {info['name']}: {info['primary']} -> {info['recovery']} "
          f"(version {info['version']})")
    for number, stage in enumerate(info["stages"], 1):
        print(f"stage {number}: {stage['spec']}")
    for net in info["networks"]:
        print(f"network: {net['spec']}")
    print(f"stay off: {', '.join(info['stay_off']) or '-'}")
    print(f"last failover status: {info['last_failover_status'] or '-'}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.delete_recovery_plan(args.name)
    print(f"deleted recovery plan {args.name}")
    return 0


def show_report(report: PlanReport, as_json: bool) -> int:
    """Print `report` (a table of steps, the problems, the status); CliError unless it
    Succeeded."""
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        rows = []
        for s in report.steps:
            detail = s.detail
            if s.name == "validate" and report.problems:  # listed one per line below
                detail = plural(len(report.problems), "problem", "problems")
            rows.append((s.name, s.status, f"{s.seconds:.2f}", detail))
        if rows:
            print(table(rows, ("STEP", "STATUS", "SECONDS", "DETAIL")))
        for problem in report.problems:
            print(f"problem: {problem}")
        print(f"{report.action.replace('_', ' ')} of plan {report.plan}: {report.status}")
    if not report.ok:
        raise CliError(f"{report.action.replace('_', ' ')} of plan {report.plan}: "
                       f"{report.status}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        return show_report(c.recovery_plan(args.name).validate(), args.json)


def _confirm(args: argparse.Namespace) -> None:
    """Ask for CONFIRM_WORD on stdin (module docstring); CliError for any other answer."""
    if args.yes or admin.served_cluster(args.path) is not None:
        return
    sys.stderr.write(f"{args.kind} failover of recovery plan {args.name} to this zone. "
                     f"Type {CONFIRM_WORD} to go on: ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not sys.stdin.isatty():  # the answer was not echoed: end the prompt's line
        sys.stderr.write("\n")
    if answer.strip() != CONFIRM_WORD:
        raise CliError(f"{args.kind} failover of plan {args.name} not confirmed: nothing done")


def cmd_failover(args: argparse.Namespace) -> int:
    if args.point is not None and args.kind == "planned":
        raise CliError("--point goes with --unplanned or --test (a planned failover takes "
                       "the latest data)")
    _confirm(args)
    with open_cluster(args.path) as c, _steps(f"{args.kind} failover {args.name}") as step:
        plan = c.recovery_plan(args.name)
        if args.kind == "planned":
            report = plan.planned_failover(progress=step)
        elif args.kind == "unplanned":
            report = plan.unplanned_failover(args.point, progress=step)
        else:
            report = plan.test_failover(args.point, progress=step)
    return show_report(report, args.json)


def cmd_cleanup(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c, _steps(f"cleanup {args.name}") as step:
        report = c.recovery_plan(args.name).cleanup_test(progress=step)
    return show_report(report, args.json)


def cmd_reverse(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c, _steps(f"reverse {args.name}") as step:
        report = c.recovery_plan(args.name).reverse(progress=step)
    return show_report(report, args.json)


@contextmanager
def _steps(desc: str) -> Iterator[Callable[[PlanStep], None]]:
    """A plan action's progress callback: a step counter on a terminal's stderr."""
    with Progress(None, desc, unit="step") as bar:
        yield lambda step: bar.update(1)
