"""The category registry: the keys VMs may be tagged with and the values each key allows.

    c.create_category("replicated-vm", values=["from-canada"], description="Leap demo")
    c.vm("web").add_category("replicated-vm", "from-canada")

A category is a key (a name, nxstore.names) and the values it allows (names too). Only
`VM.add_category` checks a VM's categories against the registry: `create_vm` and the
registration of VMs by a failover take the categories they are given, since a VM arriving
from another site may carry keys this site never defined. A category cannot be deleted
while a VM carries its key or while one of `ProtectionManager.category_users` (the layers
above, such as protection policies) says it uses it. Every change is durable on return.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import AlreadyExists, InUse, InvalidArgument, NotFound
from ..names import check_name
from .manager import ProtectionManager
from .rows import CategoryRow, VMRow


@dataclass(frozen=True)
class Category:
    key: str
    values: tuple[str, ...]
    description: str = ""


def _category(row: CategoryRow) -> Category:
    return Category(row.name, tuple(json.loads(row.category_values)), row.description)


def _row(mgr: ProtectionManager, key: str) -> CategoryRow:
    rows = mgr.catalog.rows(CategoryRow, "name = ?", (key,)) if isinstance(key, str) else []
    if not rows:
        raise NotFound(f"no category {key!r}")
    return rows[0]


def _check_values(key: str, values: object) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise InvalidArgument(f"category {key!r} needs a list of one or more values, "
                              f"not {values!r}")
    for value in values:
        check_name("category value", value)
    if len(set(values)) != len(values):
        raise InvalidArgument(f"category {key!r} names a value twice: {list(values)!r}")
    return list(values)


def create_category(mgr: ProtectionManager, key: str, values: Sequence[str],
                    description: str = "") -> Category:
    """Define category `key` allowing `values` (one or more names). Raises AlreadyExists,
    InvalidArgument."""
    check_name("category", key)
    allowed = _check_values(key, values)
    if not isinstance(description, str) or not description.isprintable():
        raise InvalidArgument(f"a category's description is one line of printable text, "
                              f"not {description!r}")
    with mgr.lock, mgr.catalog.transaction():
        if mgr.catalog.rows(CategoryRow, "name = ?", (key,)):
            raise AlreadyExists(f"category {key!r} exists (add values with "
                                "add_category_values)")
        row = mgr.catalog.insert(CategoryRow(0, key, json.dumps(allowed), description,
                                             mgr.now()))
    return _category(row)


def add_category_values(mgr: ProtectionManager, key: str, values: Sequence[str]) -> Category:
    """Allow `values` too for category `key` (values it allows already are ignored).
    Raises NotFound, InvalidArgument."""
    extra = _check_values(key, values)
    with mgr.lock, mgr.catalog.transaction():
        row = _row(mgr, key)
        allowed = json.loads(row.category_values)
        allowed += [v for v in extra if v not in allowed]
        row.category_values = json.dumps(allowed)
        mgr.catalog.update(row)
    return _category(row)


def list_categories(mgr: ProtectionManager) -> list[Category]:
    """Every category, by key."""
    return sorted((_category(r) for r in mgr.catalog.rows(CategoryRow)), key=lambda c: c.key)


def get_category(mgr: ProtectionManager, key: str) -> Category:
    """Category `key` (NotFound otherwise)."""
    return _category(_row(mgr, key))


def check_assignment(mgr: ProtectionManager, key: str, value: str) -> None:
    """NotFound unless category `key` exists and allows `value`."""
    allowed = get_category(mgr, key).values
    if value not in allowed:
        raise NotFound(f"category {key!r} has no value {value!r} (it allows "
                       f"{', '.join(allowed)}; add it with add_category_values)")


def category_users(mgr: ProtectionManager, key: str) -> list[str]:
    """What uses category `key`: "VM 'web'" for each VM carrying it, then what each of
    `mgr.category_users` reports."""
    users = [f"VM {r.name!r}" for r in mgr.catalog.rows(VMRow)
             if key in json.loads(r.categories)]
    users += [u for u in (check(key) for check in mgr.category_users) if u]
    return users


def delete_category(mgr: ProtectionManager, key: str) -> None:
    """Forget category `key`. Raises NotFound, InUse (naming every user: the VMs that
    carry it and what the registered category users report)."""
    with mgr.lock:
        row = _row(mgr, key)
        users = category_users(mgr, key)
        if users:
            raise InUse(f"category {key!r} is in use by {', '.join(users)}; remove it from "
                        "them first")
        with mgr.catalog.transaction():
            mgr.catalog.delete(CategoryRow, row.id)
