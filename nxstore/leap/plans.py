"""Recovery plans: which VMs come up at the recovery zone, in which order, on which networks.

A plan names a primary and a recovery zone, stages (each a boot-ordered list of VMs and/or
categories, a delay before it and an optional hook run after its VMs power on), the VMs
that stay off, and network mappings (production and test network of each side). It names
zones, not clusters: in a zone of several clusters, its actions run at the cluster the
policies protecting its VMs name there. Its definition is kept alike at every cluster of
both zones (nxstore.leap.definitions); its actions run at the recovery zone
(nxstore.leap.recovery). `reverse()` swaps the zones and the networks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import InvalidArgument
from ..names import check_name
from ..protection.manager import ProtectionManager
from . import definitions
from .policies import _check_category
from .zones import get_zone, local_zone_name


@dataclass(frozen=True)
class Stage:
    """One stage: `vms` power on in this order, then the VMs with any of `categories`
    (by name); `delay` seconds after the previous stage; `hook`: an executable run at the
    recovery zone after the stage's VMs are on, with argv [hook, plan, action, VM...]
    (exit 0 = success), or "" (a callable hook is set with `RecoveryPlan.set_hook`)."""

    vms: tuple[str, ...] = ()
    categories: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    hook: str = ""


@dataclass(frozen=True)
class NetworkMapping:
    """A production network at each zone and the test network a test failover uses there.
    A NIC on `primary` comes up on `recovery` after a failover, on `recovery_test` after a
    test failover (and the other way round once the plan is reversed)."""

    primary: str
    recovery: str
    primary_test: str = ""
    recovery_test: str = ""

    def reversed(self) -> NetworkMapping:
        return NetworkMapping(self.recovery, self.primary, self.recovery_test, self.primary_test)


@dataclass(frozen=True)
class PlanSpec:
    """A recovery plan as defined (re-read with `c.recovery_plan(name).spec`)."""

    name: str
    primary: str
    recovery: str
    stages: tuple[Stage, ...]
    networks: tuple[NetworkMapping, ...] = ()
    stay_off: tuple[str, ...] = ()
    version: int = 0

    def reversed(self) -> PlanSpec:
        return replace(self, primary=self.recovery, recovery=self.primary,
                       networks=tuple(n.reversed() for n in self.networks))


def _as(kind: type, item: object, what: str) -> Any:
    if isinstance(item, Mapping):
        try:
            return kind(**item)
        except TypeError as exc:
            raise InvalidArgument(f"bad {what} {item!r}: {exc}") from None
    if not isinstance(item, kind):
        raise InvalidArgument(f"a {what} is a {kind.__name__}, not {item!r}")
    return item


def _check_stage(item: object, number: int) -> Stage:
    stage = _as(Stage, item, "stage")
    if isinstance(stage.vms, str) or not all(isinstance(v, str) for v in stage.vms):
        raise InvalidArgument(f"stage {number}: vms must be a list of VM names")
    vms = tuple(check_name("VM", v) for v in stage.vms)
    cats = tuple(_check_category(c) for c in stage.categories)
    if not vms and not cats:
        raise InvalidArgument(f"stage {number} names no VM and no category")
    delay = stage.delay
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 86400:
        raise InvalidArgument(f"stage {number}: delay must be 0 to 86400 seconds, not {delay!r}")
    if not isinstance(stage.hook, str):
        raise InvalidArgument(f"stage {number}: hook must be the path of an executable")
    return Stage(vms, cats, float(delay), stage.hook)


def _check_network(item: object) -> NetworkMapping:
    net = _as(NetworkMapping, item, "network mapping")
    for field_name, value in asdict(net).items():
        if value or field_name in ("primary", "recovery"):
            check_name(f"network ({field_name})", value)
    return net


def check_plan(mgr: ProtectionManager, name: str, primary: str, recovery: str,
               stages: Sequence[object], networks: Sequence[object] = (),
               stay_off: Sequence[str] = ()) -> PlanSpec:
    """The plan these arguments describe, checked; InvalidArgument or NotFound (zone)."""
    check_name("recovery plan", name)
    if primary == recovery:
        raise InvalidArgument(f"plan {name!r}: primary and recovery zone are both {primary!r}")
    for zone in (primary, recovery):
        get_zone(mgr, zone)  # NotFound
    here = local_zone_name(mgr)
    if here not in (primary, recovery):
        raise InvalidArgument(f"plan {name!r} names neither primary nor recovery zone "
                              f"{here!r} (this site's): define it in one of them")
    checked = tuple(_check_stage(s, i + 1) for i, s in enumerate(stages))
    if not checked:
        raise InvalidArgument(f"plan {name!r} needs at least one stage")
    listed = [v for s in checked for v in s.vms]
    twice = sorted({v for v in listed if listed.count(v) > 1})
    if twice:
        raise InvalidArgument(f"plan {name!r} names VM {twice[0]!r} in more than one place")
    nets = tuple(_check_network(n) for n in networks)
    primaries = [n.primary for n in nets]
    if len(set(primaries)) != len(primaries):
        raise InvalidArgument(f"plan {name!r} maps a primary network twice")
    if isinstance(stay_off, str):
        raise InvalidArgument("stay_off is a list of VM names")
    return PlanSpec(name, primary, recovery, checked, nets,
                    tuple(check_name("VM", v) for v in stay_off))


def to_spec(plan: PlanSpec) -> dict[str, Any]:
    out = asdict(plan)
    del out["name"], out["version"]
    return out


def from_definition(d: definitions.Definition) -> PlanSpec:
    s = d.spec
    stages = tuple(Stage(tuple(x["vms"]), tuple((k, v) for k, v in x["categories"]),
                         x["delay"], x["hook"]) for x in s["stages"])
    return PlanSpec(d.name, s["primary"], s["recovery"], stages,
                    tuple(NetworkMapping(**n) for n in s["networks"]), tuple(s["stay_off"]),
                    d.version)


def get_plan_spec(mgr: ProtectionManager, name: str) -> PlanSpec:
    return from_definition(definitions.get_definition(mgr, "plan", name))


def list_plan_specs(mgr: ProtectionManager) -> list[PlanSpec]:
    return [from_definition(d) for d in definitions.list_definitions(mgr, "plan")]


def create_plan(mgr: ProtectionManager, name: str, primary: str, recovery: str,
                stages: Sequence[object], networks: Sequence[object] = (),
                stay_off: Sequence[str] = ()) -> PlanSpec:
    """Define a recovery plan here and at its other zone. Raises InvalidArgument, NotFound
    (zone), AlreadyExists. Durable here on return (the other zone: now, or from a later
    Leap tick if it cannot be reached)."""
    plan = check_plan(mgr, name, primary, recovery, stages, networks, stay_off)
    return from_definition(definitions.store(mgr, "plan", name, to_spec(plan), new=True))


def store_plan(mgr: ProtectionManager, plan: PlanSpec) -> PlanSpec:
    """Store a changed plan (checked again) as its next version."""
    checked = check_plan(mgr, plan.name, plan.primary, plan.recovery, plan.stages,
                         plan.networks, plan.stay_off)
    return from_definition(definitions.store(mgr, "plan", plan.name, to_spec(checked),
                                             new=False))
