"""Which protection domains carry a policy's protection at its primary cluster.

The Leap tick (`reconcile`, run with the schedules) makes the protection domains follow the
policies whose primary cluster is this site:
- every VM here with a category of such a policy is protected by a PD the policy manages:
  `leap.<VM>` (made on first need), or a PD moved into the policy by
  `migrate_pd_to_policy` (its recovery points kept);
- every container the policy names is protected by the managed PD `leap-container.<NAME>`;
- a managed PD's schedules are made equal to the policy's (asynchronous and NearSync ones
  as PD schedules replicating to the named cluster of each recovery zone, a synchronous one
  by enabling Metro to the recovery zone's cluster);
- a VM that lost its category leaves its managed PD: the PD's schedules are removed, its
  recovery points stay (nothing takes new ones, so retention deletes none) and come back
  into use if the VM is protected again.
A VM that matches several policies is protected by the first by name (the others report
it); a VM already in a protection domain no policy manages is not touched and reported: a
VM is protected by a PD or a policy, never both. Only PDs active here are changed: after a
failover the PDs move with their VMs and the new primary's tick takes them over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from ..errors import InUse, InvalidArgument, NotFound, NxError
from ..protection import remote
from ..protection.domain import (
    ACTIVE,
    ProtectionDomain,
    create_protection_domain,
    get_protection_domain,
)
from ..protection.failover.sync import sync_peer
from ..protection.manager import ProtectionManager
from ..protection.vm import VM, list_vms
from ..replication.sites import list_sites
from .policies import ProtectionPolicy, list_policies
from .rows import MemberRow

log = logging.getLogger(__name__)

VM_PD_PREFIX = "leap."
CONTAINER_PD_PREFIX = "leap-container."


@dataclass
class Reconciled:
    """What one reconcile pass did and found."""

    protected: list[str] = field(default_factory=list)    # "policy: VM" newly protected
    released: list[str] = field(default_factory=list)     # "policy: VM" no longer protected
    conflicts: list[str] = field(default_factory=list)    # why a matching VM is not protected
    errors: list[str] = field(default_factory=list)       # what failed (retried next pass)


def managed_pds(mgr: ProtectionManager, policy: str | None = None) -> dict[str, str]:
    """{PD name: policy} of the PDs policies manage here (of `policy` only if given)."""
    rows = mgr.catalog.rows(MemberRow, *(("policy = ?", (policy,)) if policy else ()))
    return {r.pd: r.policy for r in rows}


def manage(mgr: ProtectionManager, policy: str, pd: str) -> None:
    """Record that `policy` manages protection domain `pd` here (idempotent)."""
    with mgr.lock, mgr.catalog.transaction():
        rows = mgr.catalog.rows(MemberRow, "pd = ?", (pd,))
        if rows and rows[0].policy != policy:
            rows[0].policy = policy
            mgr.catalog.update(rows[0])
        elif not rows:
            mgr.catalog.insert(MemberRow(0, policy, pd, mgr.now()))


def primary_policies(mgr: ProtectionManager) -> list[ProtectionPolicy]:
    """The policies whose primary cluster is this site, by name."""
    mine = [p for p in list_policies(mgr) if p.primary_cluster == mgr.cluster.site_name]
    return sorted(mine, key=lambda p: p.name)


def policy_of_vm(policies: list[ProtectionPolicy], vm: VM) -> ProtectionPolicy | None:
    return next((p for p in policies if p.matches(vm.categories)), None)


def conflicts(mgr: ProtectionManager, policy: ProtectionPolicy) -> list[str]:
    """Why VMs that `policy` matches here cannot be protected by it: each is in a PD no
    policy manages."""
    managed = managed_pds(mgr)
    found = []
    for vm in list_vms(mgr):
        if not policy.matches(vm.categories):
            continue
        pd = vm.protection_domain
        if pd is not None and pd not in managed:
            found.append(f"VM {vm.name!r} is in protection domain {pd!r} and has a category "
                         f"of protection policy {policy.name!r}: remove it from the PD or "
                         f"run migrate_pd_to_policy({pd!r}, {policy.name!r})")
    return found


def reconcile(mgr: ProtectionManager) -> Reconciled:
    """One pass of the Leap tick at this site (module docstring). Never raises for one
    entity: what failed is in `errors` and is retried by the next pass."""
    out = Reconciled()
    policies = primary_policies(mgr)
    managed = managed_pds(mgr)
    wanted: dict[str, ProtectionPolicy] = {}  # PD name -> policy
    for vm in list_vms(mgr):
        matching = [p for p in policies if p.matches(vm.categories)]
        if not matching:
            continue
        policy = matching[0]
        for other in matching[1:]:
            out.conflicts.append(f"VM {vm.name!r} matches protection policies {policy.name!r} "
                                 f"and {other.name!r}: protected by {policy.name!r}")
        pd = vm.protection_domain
        if pd is not None and pd not in managed:
            out.conflicts.extend(c for c in conflicts(mgr, policy) if repr(vm.name) in c)
            continue
        name = pd or VM_PD_PREFIX + vm.name
        wanted[name] = policy
        try:
            if _protect_vm(mgr, policy, name, vm):
                out.protected.append(f"{policy.name}: {vm.name}")
        except NxError as exc:
            out.errors.append(f"protect VM {vm.name!r} by policy {policy.name!r}: {exc}")
    for policy in policies:
        for container in policy.containers:
            name = CONTAINER_PD_PREFIX + container
            wanted[name] = policy
            try:
                _protect_container(mgr, policy, name, container)
            except NxError as exc:
                out.errors.append(f"protect container {container!r} by policy "
                                  f"{policy.name!r}: {exc}")
    elsewhere = {p.name for p in list_policies(mgr)} - {p.name for p in policies}
    for name, policy_name in managed.items():
        if name in wanted or policy_name in elsewhere:
            continue  # a policy now primary at another zone: that zone's ownership decides
        try:
            pd = get_protection_domain(mgr, name)
        except NotFound:
            continue
        if pd.state != ACTIVE:
            continue  # owned elsewhere now: its owner's policies decide
        out.released.extend(f"{policy_name}: {e}" for e in _release(pd))
    for line in out.protected:
        log.info("policy %s protected from now on", line)
    for line in out.released:
        log.info("policy %s no longer protected (recovery points kept)", line)
    return out


def _protect_vm(mgr: ProtectionManager, policy: ProtectionPolicy, name: str, vm: VM) -> bool:
    """Make PD `name` protect `vm` with `policy`'s schedules; True if `vm` was not
    protected by it before."""
    try:
        pd = get_protection_domain(mgr, name)
    except NotFound:
        pd = create_protection_domain(mgr, name, [])
    if pd.state != ACTIVE:
        return False
    manage(mgr, policy.name, name)
    fresh = vm not in pd.entities()
    if fresh:
        pd.add_entities([vm.name])
    _follow_schedules(pd, policy)
    return fresh


def _protect_container(mgr: ProtectionManager, policy: ProtectionPolicy, name: str,
                       container: str) -> None:
    mgr.cluster.container(container)  # NotFound
    try:
        pd = get_protection_domain(mgr, name)
    except NotFound:
        pd = create_protection_domain(mgr, name, [])
    if pd.state != ACTIVE:
        return
    manage(mgr, policy.name, name)
    if container not in pd.containers():
        pd.add_container(container)
    _follow_schedules(pd, policy)


def _follow_schedules(pd: ProtectionDomain, policy: ProtectionPolicy) -> None:
    """Make `pd`'s schedules those of `policy` (compared by what they do, so an unchanged
    policy changes nothing and keeps each schedule's slots)."""
    wanted = []
    for s in policy.schedules:
        if s.kind != "synchronous":
            wanted.append((timedelta(seconds=s.every), s.keep_local,
                           {c: s.keep_remote for c in policy.recovery_clusters},
                           s.app_consistent))
    have = {(x.every, x.keep_local, tuple(sorted(x.keep_remote.items())), x.app_consistent): x
            for x in pd.schedules()}
    keep = set()
    for every, local, at_zones, app in wanted:
        key = (every, local, tuple(sorted(at_zones.items())), app)
        if key in have:
            keep.add(have[key].id)
        else:
            keep.add(pd.add_schedule(every, local, at_zones, app_consistent=app).id)
    for x in pd.schedules():
        if x.id not in keep:
            pd.remove_schedule(x.id)
    sync = next((s for s in policy.schedules if s.kind == "synchronous"), None)
    if sync is not None:
        try:
            pd.metro_state()
        except NotFound:
            pd.enable_metro(policy.recovery_clusters[0], sync.witness,
                            witness_secret=sync.witness_secret)


def _release(pd: ProtectionDomain) -> list[str]:
    """Stop protecting `pd`'s entities by policy: schedules removed, Metro disabled,
    entities removed; recovery points kept. The names released."""
    for x in pd.schedules():
        pd.remove_schedule(x.id)
    try:
        pd.metro_state()
    except (NotFound, InvalidArgument):
        pass
    else:
        pd.disable_metro()
    entities = pd.entities()
    if entities:
        pd.remove_entities(entities)
    # Tell every site that knows the PD (best effort: one that cannot be reached learns at
    # the PD's next sync): a PD without schedules is not recovered by category.
    mgr = pd._mgr
    for site in sorted(s.name for s in list_sites(mgr.catalog)):
        try:
            if remote.status(mgr.cluster, site, pd.name).get("exists"):
                sync_peer(mgr, pd.name, site)
        except NxError as exc:
            log.warning("PD %s released, but site %s not told yet: %s", pd.name, site, exc)
    return [e.name if isinstance(e, VM) else f"container {e.name}" for e in entities]


def migrate_pd_to_policy(mgr: ProtectionManager, pd_name: str, policy_name: str) -> None:
    """Move protection domain `pd_name` (active here, at the policy's primary cluster) into
    policy `policy_name`, keeping its recovery points: the policy manages it from now on
    (its schedules become the policy's), and each of its VMs gets the policy's first
    category so that membership stays true. Raises NotFound, InvalidArgument (the policy's
    primary cluster is not this site; the PD protects bare vDisks), InUse (the PD is not
    active here, or another policy manages it). Durable on return."""
    from .policies import get_policy

    policy = get_policy(mgr, policy_name)
    pd = get_protection_domain(mgr, pd_name)
    if policy.primary_cluster != mgr.cluster.site_name:
        raise InvalidArgument(f"policy {policy_name!r} protects from zone {policy.primary!r} "
                              f"(cluster {policy.primary_cluster!r}): move PDs into it there")
    pd.require_active(f"migrate to policy {policy_name!r}")
    owner = managed_pds(mgr).get(pd_name)
    if owner is not None and owner != policy_name:
        raise InUse(f"protection domain {pd_name!r} is managed by policy {owner!r}")
    if any(not isinstance(e, VM) for e in pd.entities()):
        raise InvalidArgument(f"protection domain {pd_name!r} protects bare vDisks: a policy "
                              "protects VMs (by category) and containers")
    if not policy.categories:
        raise InvalidArgument(f"policy {policy_name!r} applies to containers only")
    key, value = policy.categories[0]
    for vm in pd.vms():
        if not policy.matches(vm.categories):
            vm.add_category(key, value)
    manage(mgr, policy_name, pd_name)
    _follow_schedules(pd, policy)
