"""Category commands: category create|add-values|list|delete (nxstore.protection.categories).
Tagging a VM is `vm category add|remove` (vm_cmds)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from .common import open_cluster, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("category", help="the category registry: keys VMs are tagged with")
    csub = p.add_subparsers(dest="category_cmd", metavar="COMMAND", required=True)

    q = csub.add_parser("create", help="define a category KEY allowing VALUEs")
    q.add_argument("path", metavar="PATH")
    q.add_argument("key", metavar="KEY")
    q.add_argument("values", metavar="VALUE", nargs="+")
    q.add_argument("--description", default="", metavar="TEXT")
    q.set_defaults(func=cmd_create)

    q = csub.add_parser("add-values", help="allow more VALUEs for category KEY")
    q.add_argument("path", metavar="PATH")
    q.add_argument("key", metavar="KEY")
    q.add_argument("values", metavar="VALUE", nargs="+")
    q.set_defaults(func=cmd_add_values)

    q = csub.add_parser("list", help="list the categories")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_list)

    q = csub.add_parser("delete", help="delete a category (refused while in use)")
    q.add_argument("path", metavar="PATH")
    q.add_argument("key", metavar="KEY")
    q.set_defaults(func=cmd_delete)


def cmd_create(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        cat = c.create_category(args.key, args.values, args.description)
        print(f"created category {cat.key}: {', '.join(cat.values)}")
    return 0


def cmd_add_values(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        cat = c.add_category_values(args.key, args.values)
        print(f"category {cat.key}: {', '.join(cat.values)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        cats = c.categories()
    if args.json:
        print(json.dumps([asdict(cat) for cat in cats], indent=2))
        return 0
    if not cats:
        print("no categories")
        return 0
    print(table([(cat.key, ",".join(cat.values), cat.description) for cat in cats],
                ("KEY", "VALUES", "DESCRIPTION")))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.delete_category(args.key)
        print(f"deleted category {args.key}")
    return 0
