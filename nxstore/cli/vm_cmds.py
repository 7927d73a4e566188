"""VM commands: vm create|list|show|power-on|power-off|delete (nxstore.protection.vm)."""

from __future__ import annotations

import argparse
import json

from .common import CliError, open_cluster, plural, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vm", help="VMs: named groups of vDisks with NICs, categories, power")
    vsub = p.add_subparsers(dest="vm_cmd", metavar="COMMAND", required=True)

    q = vsub.add_parser("create", help="register a VM over existing vDisks")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--vdisk", action="append", default=[], metavar="VDISK",
                   help="a vDisk of the VM (repeat, in order)")
    q.add_argument("--nic", action="append", default=[], metavar="NETWORK",
                   help="a NIC on NETWORK (repeat)")
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


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"bad {what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _info(vm) -> dict:
    return {"name": vm.name, "vdisks": vm.vdisk_names, "nics": vm.nics,
            "categories": vm.categories, "power": vm.power_state,
            "protection_domain": vm.protection_domain}


def cmd_create(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        vm = c.create_vm(args.name, vdisks=args.vdisk, nics=[{"network": n} for n in args.nic],
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
