"""VMs: the unit protection domains protect (no hypervisor; the state is real).

A VM is a name, an ordered list of vDisks it owns (a vDisk belongs to at most
one VM), NICs (each a dict with at least a "network"), categories (str -> str)
and a power state ("on"/"off") the workflows change. Optional pre-freeze and
post-thaw hooks make scheduled snapshots application-consistent (see hooks).
Categories, NICs and hooks can change at any time. `add_category` checks the category
registry (nxstore.protection.categories); `create_vm` does not, so that a VM a failover
registers keeps the categories it had at its source site.
Everything but callable hooks lives in the catalogue and survives reopen.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import AlreadyExists, InUse, InvalidArgument, NotFound
from ..names import check_name
from .hooks import DEFAULT_HOOK_TIMEOUT, POST_THAW, PRE_FREEZE, check_hook, check_timeout
from .manager import ProtectionManager
from .rows import VMRow

if TYPE_CHECKING:
    from ..store.vdisk import VDisk

POWER_STATES = ("on", "off")


class VM:
    """A VM of the cluster; get one from `Cluster.create_vm` / `Cluster.vm`.

    The object is a handle: every property reads the catalogue, so two handles
    of one VM always agree.
    """

    def __init__(self, mgr: ProtectionManager, name: str) -> None:
        self._mgr = mgr
        self._name = name

    def _row(self) -> VMRow:
        return self._mgr.vm_row(self._name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def vdisk_names(self) -> list[str]:
        return json.loads(self._row().vdisks)

    @property
    def vdisks(self) -> list[VDisk]:
        """The VM's vDisks (NotFound if one was deleted behind its back)."""
        return [self._mgr.vdisk(n) for n in self.vdisk_names]

    @property
    def nics(self) -> list[dict[str, str]]:
        return json.loads(self._row().nics)

    @property
    def categories(self) -> dict[str, str]:
        return json.loads(self._row().categories)

    @property
    def power_state(self) -> str:
        return self._row().power

    @property
    def created_at(self) -> float:
        return self._row().created_at

    @property
    def protection_domain(self) -> str | None:
        """Name of the protection domain protecting this VM, or None."""
        return self._mgr.protecting_pd("vm", self._name)

    def __repr__(self) -> str:
        return f"VM({self._name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VM) and other._mgr is self._mgr and other._name == self._name

    def __hash__(self) -> int:
        return hash(("vm", self._name))

    # -- power ----------------------------------------------------------------------
    def power_on(self) -> None:
        """Set the power state to "on" (idempotent; durable on return)."""
        self._set_power("on")

    def power_off(self) -> None:
        """Set the power state to "off" (idempotent; durable on return)."""
        self._set_power("off")

    def _set_power(self, state: str) -> None:
        with self._mgr.lock, self._mgr.catalog.transaction():
            row = self._row()
            if row.power != state:
                row.power = state
                self._mgr.catalog.update(row)

    # -- categories and NICs ------------------------------------------------------------
    def add_category(self, key: str, value: str) -> None:
        """Tag the VM with `key`: `value`. A VM holds one value per key: a value it has
        for `key` already is replaced. Raises NotFound (no VM, no category `key` in the
        registry or it does not allow `value`). Durable on return."""
        from .categories import check_assignment

        with self._mgr.lock:
            check_assignment(self._mgr, key, value)
            with self._mgr.catalog.transaction():
                row = self._row()
                cats = json.loads(row.categories)
                cats[key] = value
                row.categories = json.dumps(cats, sort_keys=True)
                self._mgr.catalog.update(row)

    def remove_category(self, key: str) -> None:
        """Untag the VM from category `key`. Raises NotFound (no VM, or it lacks `key`).
        Durable on return."""
        with self._mgr.lock, self._mgr.catalog.transaction():
            row = self._row()
            cats = json.loads(row.categories)
            if key not in cats:
                raise NotFound(f"VM {self._name!r} has no category {key!r}")
            del cats[key]
            row.categories = json.dumps(cats, sort_keys=True)
            self._mgr.catalog.update(row)

    def set_nics(self, nics: Sequence[Mapping[str, str]]) -> None:
        """Replace the VM's NICs (each a dict of strings with a "network", as for
        create_vm; [] for none). Raises NotFound, InvalidArgument. Durable on return."""
        nic_list = _check_nics(nics)
        with self._mgr.lock, self._mgr.catalog.transaction():
            row = self._row()
            row.nics = json.dumps(nic_list)
            self._mgr.catalog.update(row)

    # -- hooks -------------------------------------------------------------------------
    def set_hooks(self, pre_freeze: Callable[[Any], object] | str | None = None,
                  post_thaw: Callable[[Any], object] | str | None = None,
                  timeout: float = DEFAULT_HOOK_TIMEOUT) -> None:
        """Set the VM's application-consistency hooks (replacing earlier ones).

        Each is a callable `hook(vm)` (kept in memory only: register it again after
        reopening) or the path of an executable (stored in the catalogue), or None.
        `timeout` seconds bounds each run. Raises InvalidArgument.
        """
        check_hook(pre_freeze, "pre_freeze hook")
        check_hook(post_thaw, "post_thaw hook")
        timeout = check_timeout(timeout)
        with self._mgr.lock, self._mgr.catalog.transaction():
            row = self._row()
            row.pre_freeze = pre_freeze if isinstance(pre_freeze, str) else ""
            row.post_thaw = post_thaw if isinstance(post_thaw, str) else ""
            row.hook_timeout = timeout
            self._mgr.catalog.update(row)
            runtime = {phase: h for phase, h in ((PRE_FREEZE, pre_freeze), (POST_THAW, post_thaw))
                       if callable(h)}
            if runtime:
                self._mgr.callable_hooks[self._name] = runtime
            else:
                self._mgr.callable_hooks.pop(self._name, None)

    def clear_hooks(self) -> None:
        self.set_hooks(None, None)

    def hooks(self) -> tuple[dict[str, Callable[[Any], object] | str], float]:
        """({phase: hook} for the phases that have one, timeout in seconds)."""
        row = self._row()
        found: dict[str, Callable[[Any], object] | str] = {}
        for phase, path in ((PRE_FREEZE, row.pre_freeze), (POST_THAW, row.post_thaw)):
            hook = self._mgr.callable_hooks.get(self._name, {}).get(phase) or path
            if hook:
                found[phase] = hook
        return found, row.hook_timeout


# -- registry (called by the Cluster glue) ---------------------------------------------------

def _check_nics(nics: object) -> list[dict[str, str]]:
    if nics is None:
        return []
    if not isinstance(nics, Sequence) or isinstance(nics, (str, bytes)):
        raise InvalidArgument(f"nics must be a list of {{'network': NAME}} dicts, not {nics!r}")
    out = []
    for nic in nics:
        if (not isinstance(nic, Mapping) or not isinstance(nic.get("network"), str)
                or not nic["network"]
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in nic.items())):
            raise InvalidArgument(f"bad NIC {nic!r}: a dict of strings with a 'network'")
        out.append(dict(nic))
    return out


def _check_categories(categories: object) -> dict[str, str]:
    if categories is None:
        return {}
    if not isinstance(categories, Mapping):
        raise InvalidArgument(f"categories must map names to values, not {categories!r}")
    for key, value in categories.items():
        check_name("category", key)
        check_name("category value", value)
    return dict(categories)


def _vdisk_name(item: object) -> str:
    from ..store.vdisk import VDisk

    if isinstance(item, VDisk):
        return item.name
    if isinstance(item, str):
        return item
    raise InvalidArgument(f"a VM's vDisks are VDisk objects or names, not {item!r}")


def create_vm(mgr: ProtectionManager, name: str, vdisks: Sequence[object] = (),
              nics: Sequence[Mapping[str, str]] | None = None,
              categories: Mapping[str, str] | None = None, power: str = "on") -> VM:
    """Register a VM owning existing vDisks. `categories` are taken as given (names are
    checked, the registry is not: see the module docstring). Raises AlreadyExists (name),
    NotFound (vDisk), InUse (vDisk owned by another VM or protected on its own by a PD),
    InvalidArgument. Durable on return."""
    check_name("VM", name)
    if power not in POWER_STATES:
        raise InvalidArgument(f"power must be 'on' or 'off', not {power!r}")
    if isinstance(vdisks, (str, bytes)) or not isinstance(vdisks, Sequence):
        raise InvalidArgument("vdisks must be a list of VDisk objects or names")
    names = [_vdisk_name(v) for v in vdisks]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"VM {name!r} names a vDisk twice")
    nic_list = _check_nics(nics)
    cats = _check_categories(categories)
    with mgr.lock, mgr.catalog.transaction():
        for vd_name in names:
            mgr.vdisk(vd_name)  # NotFound
            owner = mgr.vm_of_vdisk(vd_name)
            if owner is not None:
                raise InUse(f"vDisk {vd_name!r} already belongs to VM {owner!r}")
            pd = mgr.protecting_pd("vdisk", vd_name)
            if pd is not None:
                raise InUse(f"vDisk {vd_name!r} is protected on its own by protection domain "
                            f"{pd!r}; remove it from the PD first")
        if mgr.catalog.rows(VMRow, "name = ?", (name,)):
            raise AlreadyExists(f"VM {name!r} exists")
        mgr.catalog.insert(VMRow(0, name, json.dumps(names), json.dumps(nic_list),
                                 json.dumps(cats, sort_keys=True), power, "", "",
                                 DEFAULT_HOOK_TIMEOUT, mgr.now()))
    return VM(mgr, name)


def get_vm(mgr: ProtectionManager, name: str) -> VM:
    mgr.vm_row(name)  # NotFound
    return VM(mgr, name)


def list_vms(mgr: ProtectionManager) -> list[VM]:
    return sorted((VM(mgr, row.name) for row in mgr.catalog.rows(VMRow)), key=lambda v: v.name)


def delete_vm(mgr: ProtectionManager, name: str, keep_vdisks: bool = False) -> None:
    """Delete a VM; its vDisks (and their snapshots) too unless `keep_vdisks`.
    Raises NotFound, InUse (the VM is protected by a PD: remove it first)."""
    with mgr.lock:
        row = mgr.vm_row(name)
        pd = mgr.protecting_pd("vm", name)
        if pd is not None:
            raise InUse(f"VM {name!r} is protected by protection domain {pd!r}; "
                        "remove it from the PD first")
        with mgr.catalog.transaction():
            mgr.catalog.delete(VMRow, row.id)
        mgr.callable_hooks.pop(name, None)
        if not keep_vdisks:
            for vd_name in json.loads(row.vdisks):
                with contextlib.suppress(NotFound):
                    mgr.cluster.delete_vdisk(vd_name, with_snapshots=True)
