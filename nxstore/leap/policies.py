"""Protection policies: what to protect (VMs by category, whole containers), from which
zone, to which zones, how often and for how long.

A policy names a primary location, one or more recovery locations, schedules and the
categories (KEY:VALUE) and containers it applies to. A location is a zone and one of its
clusters ("ZONE/CLUSTER"; just "ZONE" when the zone has one cluster). Its definition is
kept alike at every cluster of the zones it names (nxstore.leap.definitions); only the
primary cluster acts on it: the Leap tick there protects the matching entities through
protection domains it manages (nxstore.leap.membership), so a VM that gets a category is
protected from the next tick on.

Schedules by recovery point objective:
- asynchronous: `every` >= 1 h, PD snapshots replicated to the named cluster of every
  recovery zone;
- NearSync: `every` from NEARSYNC_MIN_INTERVAL_S to 15 min (the NearSync mode of
  nxstore.nearsync runs such schedules: light-weight snapshots shipped as episodes);
- synchronous: `every` 0 (RPO 0), Metro to the one recovery zone, with a witness.
Each schedule keeps `keep_local` recovery points here and `keep_remote` at each recovery
zone, counted per schedule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..constants import NEARSYNC_MAX_INTERVAL_S, NEARSYNC_MIN_INTERVAL_S
from ..errors import InvalidArgument
from ..names import check_name
from ..protection.manager import ProtectionManager
from . import definitions
from .zones import resolve, split_location

ASYNC_MIN_INTERVAL_S = 3600.0  # seconds: the shortest asynchronous (PD snapshot) schedule


@dataclass(frozen=True)
class PolicySchedule:
    """One schedule of a policy. `every` seconds (0: synchronous); `keep_remote` at each
    recovery zone. Synchronous schedules need `witness` (HOST:PORT) and `witness_secret`."""

    every: float
    keep_local: int = 1
    keep_remote: int = 1
    app_consistent: bool = False
    witness: str = ""
    witness_secret: str = field(default="", repr=False)

    @property
    def kind(self) -> str:
        """"synchronous", "nearsync" or "async"."""
        if self.every == 0:
            return "synchronous"
        return "nearsync" if self.every <= NEARSYNC_MAX_INTERVAL_S else "async"


@dataclass(frozen=True)
class ProtectionPolicy:
    """A policy as defined (a snapshot of its definition; re-read with `c.policy(name)`)."""

    name: str
    primary: str
    recovery: tuple[str, ...]
    schedules: tuple[PolicySchedule, ...]
    categories: tuple[tuple[str, str], ...]
    containers: tuple[str, ...] = ()
    version: int = 0
    clusters: tuple[tuple[str, str], ...] = ()  # (zone, cluster) of each zone it names

    def cluster(self, zone: str) -> str:
        """The cluster (site name) the policy names in `zone` (one called like the zone
        if it names none: a policy defined before zones grouped clusters)."""
        return dict(self.clusters).get(zone, zone)

    def location(self, zone: str) -> str:
        """"ZONE/CLUSTER" of `zone`."""
        return f"{zone}/{self.cluster(zone)}"

    @property
    def primary_cluster(self) -> str:
        return self.cluster(self.primary)

    @property
    def recovery_clusters(self) -> tuple[str, ...]:
        """The cluster of each recovery zone, in order: where replication goes."""
        return tuple(self.cluster(z) for z in self.recovery)

    def matches(self, categories: Mapping[str, str]) -> bool:
        """Whether a VM with `categories` is one this policy protects."""
        return any(categories.get(k) == v for k, v in self.categories)


def _check_schedule(item: object) -> PolicySchedule:
    if isinstance(item, Mapping):
        try:
            item = PolicySchedule(**item)
        except TypeError as exc:
            raise InvalidArgument(f"bad policy schedule {item!r}: {exc}") from None
    if not isinstance(item, PolicySchedule):
        raise InvalidArgument(f"a policy schedule is a PolicySchedule, not {item!r}")
    every = item.every
    if isinstance(every, bool) or not isinstance(every, (int, float)) or every < 0:
        raise InvalidArgument(f"schedule every must be seconds >= 0, not {every!r}")
    if every and not (NEARSYNC_MIN_INTERVAL_S <= every <= NEARSYNC_MAX_INTERVAL_S
                      or every >= ASYNC_MIN_INTERVAL_S):
        raise InvalidArgument(
            f"schedule every {every:g} s is neither NearSync ({NEARSYNC_MIN_INTERVAL_S:g} s to "
            f"{NEARSYNC_MAX_INTERVAL_S / 60:g} min), asynchronous (1 h or more) nor "
            "synchronous (0)")
    for what in ("keep_local", "keep_remote"):
        n = getattr(item, what)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgument(f"schedule {what} must be a count >= 1, not {n!r}")
    if not isinstance(item.app_consistent, bool):
        raise InvalidArgument("schedule app_consistent must be a bool")
    if every == 0 and not (item.witness and item.witness_secret):
        raise InvalidArgument("a synchronous schedule needs witness=HOST:PORT and "
                              "witness_secret (automatic failover only with a witness)")
    return PolicySchedule(float(every), item.keep_local, item.keep_remote,
                          item.app_consistent, item.witness, item.witness_secret)


def _check_category(item: object) -> tuple[str, str]:
    if isinstance(item, str) and ":" in item:
        item = tuple(item.split(":", 1))
    if (not isinstance(item, (tuple, list)) or len(item) != 2
            or not all(isinstance(x, str) for x in item)):
        raise InvalidArgument(f"a policy category is KEY:VALUE or (key, value), not {item!r}")
    return check_name("category", item[0]), check_name("category value", item[1])


def check_policy(mgr: ProtectionManager, name: str, primary: object,
                 recovery: Sequence[object] | str, schedules: Sequence[object],
                 categories: Sequence[object], containers: Sequence[str]) -> ProtectionPolicy:
    """The policy these arguments describe, checked; InvalidArgument (also: a cluster that
    is not a member of its zone, or none named in a zone of several) or NotFound (a zone,
    category or value that does not exist) otherwise."""
    from ..protection.categories import get_category

    check_name("protection policy", name)
    if isinstance(recovery, str):
        recovery = [recovery]
    zone, cluster = split_location(primary)
    located = {zone: resolve(mgr, zone, cluster)}
    recovery_zones: list[str] = []
    for item in recovery:
        zone, cluster = split_location(item)
        site = resolve(mgr, zone, cluster)
        if zone in recovery_zones and located[zone] == site:
            continue  # named twice alike
        if zone in located:
            raise InvalidArgument(f"policy {name!r}: zone {zone!r} is both primary and recovery"
                                  if zone == next(iter(located)) else
                                  f"policy {name!r} names zone {zone!r} twice as recovery")
        located[zone] = site
        recovery_zones.append(zone)
    primary = next(iter(located))
    if not recovery_zones:
        raise InvalidArgument(f"policy {name!r} needs at least one recovery zone")
    if mgr.cluster.site_name not in located.values():
        raise InvalidArgument(f"policy {name!r} names neither as primary nor as recovery "
                              f"cluster {mgr.cluster.site_name!r} (this site): define it in "
                              "one of them")
    checked = tuple(_check_schedule(s) for s in schedules)
    if not checked:
        raise InvalidArgument(f"policy {name!r} needs at least one schedule")
    if any(s.kind == "synchronous" for s in checked) and len(recovery_zones) != 1:
        raise InvalidArgument("a synchronous schedule protects to exactly one recovery zone")
    cats = tuple(dict.fromkeys(_check_category(c) for c in categories))
    for key, value in cats:
        known = get_category(mgr, key)  # NotFound
        if value not in known.values:
            raise InvalidArgument(f"category {key!r} has no value {value!r} "
                                  f"(values: {', '.join(known.values)})")
    ctrs = tuple(dict.fromkeys(check_name("container", c) for c in containers))
    if not cats and not ctrs:
        raise InvalidArgument(f"policy {name!r} applies to no category and no container")
    return ProtectionPolicy(name, primary, tuple(recovery_zones), checked, cats, ctrs,
                            clusters=tuple(located.items()))


def to_spec(policy: ProtectionPolicy) -> dict[str, Any]:
    return {"primary": policy.primary, "recovery": list(policy.recovery),
            "clusters": {z: policy.cluster(z) for z in (policy.primary, *policy.recovery)},
            "schedules": [asdict(s) for s in policy.schedules],
            "categories": [list(c) for c in policy.categories],
            "containers": list(policy.containers)}


def from_definition(d: definitions.Definition) -> ProtectionPolicy:
    s = d.spec
    zones = (s["primary"], *s["recovery"])
    return ProtectionPolicy(d.name, s["primary"], tuple(s["recovery"]),
                            tuple(PolicySchedule(**x) for x in s["schedules"]),
                            tuple((k, v) for k, v in s["categories"]),
                            tuple(s.get("containers", ())), d.version,
                            tuple((z, d.cluster(z)) for z in zones))


def get_policy(mgr: ProtectionManager, name: str) -> ProtectionPolicy:
    return from_definition(definitions.get_definition(mgr, "policy", name))


def list_policies(mgr: ProtectionManager) -> list[ProtectionPolicy]:
    return [from_definition(d) for d in definitions.list_definitions(mgr, "policy")]


def create_policy(mgr: ProtectionManager, name: str, primary: object,
                  recovery: Sequence[object] | str, schedules: Sequence[object],
                  categories: Sequence[object] = (),
                  containers: Sequence[str] = ()) -> ProtectionPolicy:
    """Define a protection policy (module docstring) here and at the zones it names;
    `primary` and each of `recovery` are locations: "ZONE", "ZONE/CLUSTER" or (zone,
    cluster). Raises InvalidArgument, NotFound (zone, category), AlreadyExists, InUse (a VM it
    matches is in a protection domain: the message names both). Durable here on return;
    the other zones get it now or, if unreachable, from a later Leap tick."""
    policy = check_policy(mgr, name, primary, recovery, schedules, categories, containers)
    _refuse_conflicts(mgr, policy)
    return from_definition(definitions.store(mgr, "policy", name, to_spec(policy), new=True))


def update_policy(mgr: ProtectionManager, name: str, **changes: Any) -> ProtectionPolicy:
    """Change some of a policy's fields (primary, recovery, schedules, categories,
    containers); checked like `create_policy`. The primary cluster's next Leap tick applies
    it. Raises NotFound, InvalidArgument, InUse."""
    old = get_policy(mgr, name)
    fields = {"primary": old.location(old.primary),
              "recovery": [old.location(z) for z in old.recovery], "schedules": old.schedules,
              "categories": old.categories, "containers": old.containers}
    unknown = set(changes) - set(fields)
    if unknown:
        raise InvalidArgument(f"a policy has no field {sorted(unknown)[0]!r}")
    fields.update(changes)
    policy = check_policy(mgr, name, **fields)
    _refuse_conflicts(mgr, policy)
    return from_definition(definitions.store(mgr, "policy", name, to_spec(policy), new=False))


def delete_policy(mgr: ProtectionManager, name: str) -> None:
    """Delete a policy here and at its zones. At the next Leap tick its PDs stop being
    protected (schedules removed, recovery points kept). Raises NotFound."""
    definitions.delete(mgr, "policy", name)


def _refuse_conflicts(mgr: ProtectionManager, policy: ProtectionPolicy) -> None:
    if policy.primary_cluster != mgr.cluster.site_name:
        return  # the primary cluster checks its own VMs at its ticks
    from ..errors import InUse
    from .membership import conflicts

    found = conflicts(mgr, policy)
    if found:
        raise InUse(found[0] + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
