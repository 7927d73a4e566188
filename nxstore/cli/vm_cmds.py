"""VM commands: vm create|list|show|power-on|power-off|delete|category|nics|hooks
(nxstore.protection.vm). A NIC on the command line is NETWORK[,KEY=VALUE...]."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

from .common import CliError, open_cluster, plural, table

_NIC_HELP = "a NIC on NETWORK, with optional KEY=VALUE settings (repeat)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vm", help="VMs: named groups of vDisks with NICs, categories, power")
    vsub = p.add_subparsers(dest="vm_cmd", metavar="COMMAND", required=True)

    q = vsub.add_parser("create", help="register a VM over existing vDisks")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--vdisk", action="append", default=[], metavar="VDISK",
                   help="a vDisk of the VM (repeat, in order)")
    q.add_argument("--nic", action="append", default=[], metavar="NETWORK[,KEY=VALUE...]",
                   help=_NIC_HELP)
    q.add_argument("--category", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--power", choices=("on", "off"), default="on")
    q.set_defaults(func=cmd_create)

    q = vsub.add_parser("list", help="list the VMs")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_list)

    q = vsub.add_parser("show", help="one VM in detail")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_show)

    for verb, state in (("power-on", "on"), ("power-off", "off")):
        q = vsub.add_parser(verb, help=f"set the VM's power state to {state}")
        q.add_argument("path", metavar="PATH")
        q.add_argument("name", metavar="NAME")
        q.set_defaults(func=cmd_power, state=state)

    q = vsub.add_parser("delete", help="delete a VM (and its vDisks unless --keep-vdisks)")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--keep-vdisks", action="store_true")
    q.set_defaults(func=cmd_delete)

    q = vsub.add_parser("category", help="tag or untag a VM (categories: see 'nxstore category')")
    csub = q.add_subparsers(dest="vm_category_cmd", metavar="ACTION", required=True)
    r = _on_vm(csub, "add", "tag VM with KEY=VALUE (replaces its value of KEY)", cmd_category_add)
    r.add_argument("key", metavar="KEY")
    r.add_argument("value", metavar="VALUE")
    r = _on_vm(csub, "remove", "untag VM from category KEY", cmd_category_remove)
    r.add_argument("key", metavar="KEY")

    q = _on_vm(vsub, "nics", "replace the VM's NICs", cmd_nics)
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--nic", action="append", metavar="NETWORK[,KEY=VALUE...]", help=_NIC_HELP)
    which.add_argument("--none", action="store_true", help="remove every NIC")

    q = vsub.add_parser("hooks", help="the VM's pre-freeze / post-thaw hooks")
    hsub = q.add_subparsers(dest="vm_hooks_cmd", metavar="ACTION", required=True)
    r = _on_vm(hsub, "set", "set hooks (those not named are kept)", cmd_hooks_set)
    r.add_argument("--pre-freeze", metavar="EXE", help="run as 'EXE pre-freeze VM'")
    r.add_argument("--post-thaw", metavar="EXE", help="run as 'EXE post-thaw VM'")
    r.add_argument("--timeout", type=float, metavar="SECONDS", help="bound on each run")
    _on_vm(hsub, "clear", "remove both hooks", cmd_hooks_clear)


def _on_vm(sub: argparse._SubParsersAction, verb: str, summary: str,
           func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """A subcommand `VERB PATH VM ...` run by `func`."""
    q = sub.add_parser(verb, help=summary)
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="VM")
    q.set_defaults(func=func)
    return q


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"bad {what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def parse_nic(text: str) -> dict[str, str]:
    """'VLAN50,mac=52:54:00:aa:bb:cc' -> {'network': 'VLAN50', 'mac': '52:54:00:aa:bb:cc'}."""
    network, *settings = text.split(",")
    extra = parse_pairs(settings, "NIC setting")
    if not network or "network" in extra:
        raise CliError(f"bad NIC {text!r}: expected NETWORK[,KEY=VALUE...]")
    return {"network": network, **extra}


def _info(vm) -> dict:
    hooks, timeout = vm.hooks()
    return {"name": vm.name, "vdisks": vm.vdisk_names, "nics": vm.nics,
            "categories": vm.categories, "power": vm.power_state,
            "protection_domain": vm.protection_domain,
            "hooks": {phase: h if isinstance(h, str) else "(callable)"
                      for phase, h in hooks.items()},
            "hook_timeout": timeout}


def cmd_create(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        vm = c.create_vm(args.name, vdisks=args.vdisk, nics=[parse_nic(n) for n in args.nic],
                         categories=parse_pairs(args.category, "category"), power=args.power)
        print(f"created VM {vm.name} ({plural(len(vm.vdisk_names), 'vDisk', 'vDisks')}, "
              f"power {vm.power_state})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        vms = [_info(v) for v in c.vms()]
    if args.json:
        print(json.dumps(vms, indent=2))
        return 0
    if not vms:
        print("no VMs")
        return 0
    print(table([(v["name"], v["power"], ",".join(v["vdisks"]),
                  ",".join(n.get("network", "") for n in v["nics"]),
                  v["protection_domain"] or "-") for v in vms],
                ("NAME", "POWER", "VDISKS", "NETWORKS", "PD")))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        info = _info(c.vm(args.name))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        print(f"{key}: {value if isinstance(value, str) or value is None else json.dumps(value)}")
    return 0


def cmd_power(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        vm = c.vm(args.name)
        vm.power_on() if args.state == "on" else vm.power_off()
        print(f"VM {vm.name} is {vm.power_state}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.delete_vm(args.name, keep_vdisks=args.keep_vdisks)
        print(f"deleted VM {args.name}" + (" (vDisks kept)" if args.keep_vdisks else ""))
    return 0


def cmd_category_add(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        vm = c.vm(args.name)
        vm.add_category(args.key, args.value)
        print(f"VM {vm.name}: category {args.key}={args.value}")
    return 0


def cmd_category_remove(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.vm(args.name).remove_category(args.key)
        print(f"VM {args.name}: category {args.key} removed")
    return 0


def cmd_nics(args: argparse.Namespace) -> int:
    nics = [] if args.none else [parse_nic(n) for n in args.nic]
    with open_cluster(args.path) as c:
        vm = c.vm(args.name)
        vm.set_nics(nics)
        print(f"VM {vm.name}: NICs on {', '.join(n['network'] for n in vm.nics) or 'none'}")
    return 0


def cmd_hooks_set(args: argparse.Namespace) -> int:
    if args.pre_freeze is None and args.post_thaw is None and args.timeout is None:
        raise CliError("hooks set needs --pre-freeze, --post-thaw or --timeout")
    with open_cluster(args.path) as c:
        vm = c.vm(args.name)
        hooks, timeout = vm.hooks()
        given = {"pre-freeze": args.pre_freeze, "post-thaw": args.post_thaw}
        hooks.update({phase: os.path.abspath(exe) for phase, exe in given.items() if exe})
        vm.set_hooks(hooks.get("pre-freeze"), hooks.get("post-thaw"),
                     timeout if args.timeout is None else args.timeout)
        _print_hooks(vm)
    return 0


def cmd_hooks_clear(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        vm = c.vm(args.name)
        vm.clear_hooks()
        _print_hooks(vm)
    return 0


def _print_hooks(vm) -> None:
    info = _info(vm)
    shown = ", ".join(f"{phase} {h}" for phase, h in info["hooks"].items()) or "no hooks"
    print(f"VM {vm.name}: {shown} (timeout {info['hook_timeout']:g} s)")
