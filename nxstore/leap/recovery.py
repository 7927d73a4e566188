"""Recovery plan actions, run at the plan's recovery zone: validate, test failover and its
cleanup, planned and unplanned failover, reverse.

A plan names zones; its clusters are those the policies protecting its VMs name: it runs at
their recovery cluster (this site, a member of the plan's recovery zone) and its primary
cluster is theirs (a zone's one cluster when no policy says).

Each action returns a `PlanReport`: every step with its timing and status, and the plan's
status, also kept here as the plan's `last_failover_status` ("Running" while it runs,
"Succeeded", or "Failed: <step>"). A step that fails stops the action there; running the
action again resumes (steps already done are skipped: a protection domain already here is
not moved again, a VM already on stays on). Misuse (the wrong zone, a test still present)
raises instead.

What each does (VMs are those of the stages: named ones in boot order, then those with a
stage category, by name; each is found through the protection domain that holds it here):
- `validate`: every problem at once (a VM not protected to this zone, no recovery point of
  it here, a NIC on a network the plan does not map, a stage category matching no VM, the
  primary cluster down, a policy naming a cluster that is not a member of its zone, or
  protecting to another cluster of this zone); blocking ones fail the step.
- `test_failover(point)`: clones each VM from its newest recovery point (at or before the
  cluster-clock time `point`) as `<plan>-test-<VM>` on the test networks, powered on by
  stage; production and replication are untouched. `cleanup_test` removes exactly what it
  made.
- `planned_failover`: the primary zone, per protection domain, powers its VMs off, takes
  and ships a last snapshot, removes them and registers them here (nxstore.protection
  migrate, VMs left off); then this zone powers them on by stage on the mapped networks.
  No data is lost.
- `unplanned_failover(point)`: each protection domain is activated here from its newest
  recovery point (or the newest at or before `point`), the primary being unreachable; then
  the VMs power on by stage.
- `reverse`: after a failover, swap primary and recovery (networks with them) in the plan
  and in the policies that protect its VMs, so replication runs the other way; a planned
  failover run at the other zone is then the failback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgument, NotFound, NxError
from ..nearsync.compose import restore, restore_points
from ..protection.domain import (
    ACTIVE,
    INACTIVE,
    ProtectionDomain,
    get_protection_domain,
    list_protection_domains,
)
from ..protection.failover import activate
from ..protection.manager import ProtectionManager
from ..protection.modes import RestorePoint
from ..protection.rows import PDSnapshotRow
from ..protection.vm import VM, create_vm, delete_vm, get_vm, list_vms
from . import definitions, membership, remote
from .plans import PlanSpec, get_plan_spec, store_plan
from .policies import ProtectionPolicy
from .policies import from_definition as policy_from_definition
from .rows import PlanRunRow, TestItemRow
from .zones import site_up, zone_sites

log = logging.getLogger(__name__)

RUNNING, SUCCEEDED = "Running", "Succeeded"
STAGE_HOOK_TIMEOUT_S = 300.0  # seconds a stage hook may run before the step fails
StageHook = Callable[[list[VM]], object]


@dataclass(frozen=True)
class PlanStep:
    name: str
    status: str          # "ok" | "failed" | "skipped"
    started_at: float    # wall clock (time.time())
    seconds: float
    detail: str = ""


@dataclass
class PlanReport:
    plan: str
    action: str
    status: str = RUNNING
    steps: list[PlanStep] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "action": self.action, "status": self.status,
                "problems": self.problems,
                "steps": [s.__dict__ for s in self.steps]}


# progress(step): called as each step of a plan action ends (ok, skipped or failed)
StepProgress = Callable[[PlanStep], None]


class _StepFailed(Exception):
    pass


@dataclass(frozen=True)
class VMEntry:
    """A VM as the recovery zone knows it."""

    name: str
    pd: str | None         # the protection domain holding it here (None: not protected)
    here: bool             # registered at this site (its PD is active here)
    released: bool         # its PD is a policy's that released it (no schedules, no Metro)
    categories: dict[str, str]
    nics: list[dict[str, str]]
    owner: str             # the site its PD is owned by, as known here
    points: tuple[RestorePoint, ...]  # usable here, oldest first: PD snapshots and LWSs


def inventory(mgr: ProtectionManager) -> dict[str, VMEntry]:
    """Every VM this site knows: its own VMs, and those of the protection domains it holds
    replicas of (from their newest PD snapshot's manifest)."""
    found: dict[str, VMEntry] = {}
    for pd in list_protection_domains(mgr):
        if pd.state == ACTIVE:
            for vm in pd.vms():
                found[vm.name] = VMEntry(vm.name, pd.name, True, False, vm.categories,
                                         vm.nics, mgr.cluster.site_name, ())
            continue
        if pd.state != INACTIVE:
            continue
        points = recovery_points(mgr, pd)
        rows = mgr.catalog.rows(PDSnapshotRow, "pd_id = ? AND complete = 1", (pd.id,))
        if not rows:
            continue
        newest = max(rows, key=lambda r: (r.created_at, r.id))
        released = (pd.name.startswith(membership.VM_PD_PREFIX) and not pd.schedules()
                    and not _metro_standby(pd))
        for e in json.loads(newest.manifest):
            if e["kind"] == "vm":
                found[e["name"]] = VMEntry(e["name"], pd.name, False, released,
                                           e.get("categories", {}), e.get("nics", []),
                                           pd.owner_site, points)
    for vm_name in (v.name for v in list_vms(mgr)):
        if vm_name not in found:
            vm = get_vm(mgr, vm_name)
            found[vm_name] = VMEntry(vm_name, None, True, True, vm.categories, vm.nics,
                                     mgr.cluster.site_name, ())
    return found


def recovery_points(mgr: ProtectionManager, pd: ProtectionDomain) -> tuple[RestorePoint, ...]:
    """The points `pd` (owned elsewhere) can come up at here, oldest first: its complete PD
    snapshots, and the LWSs NearSync shipped here."""
    points = [RestorePoint("snapshot", s.name, s.created_at, 0, ()) for s in pd.snapshots()]
    with contextlib.suppress(NotFound):  # NotFound: no NearSync episodes of it here
        points += [p for p in restore_points(mgr.cluster, pd.name) if p.kind == "lws"]
    return tuple(sorted(points, key=lambda p: (p.created_at, p.seq)))


def _zone_policies(mgr: ProtectionManager, plan: PlanSpec, *, any_cluster: bool = False
                   ) -> list[ProtectionPolicy]:
    """The policies from the plan's primary zone to its recovery zone's cluster that is
    this site (to any of its clusters if `any_cluster`)."""
    return [p for p in (policy_from_definition(d)
                        for d in definitions.list_definitions(mgr, "policy"))
            if p.primary == plan.primary and plan.recovery in p.recovery
            and (any_cluster or p.cluster(plan.recovery) == mgr.cluster.site_name)]


def primary_site(mgr: ProtectionManager, plan: PlanSpec) -> str:
    """The plan's primary cluster: the one its policies name in the primary zone (the
    first by name), else the zone's one cluster (else a site called like the zone)."""
    named = [p.cluster(plan.primary) for p in _zone_policies(mgr, plan)]
    members = zone_sites(mgr, plan.primary)
    return named[0] if named else members[0] if len(members) == 1 else plan.primary


def _primary_sites(mgr: ProtectionManager, plan: PlanSpec) -> set[str]:
    """Every cluster of the plan's primary zone known here (its VMs' PDs are owned there)."""
    return set(zone_sites(mgr, plan.primary)) | {primary_site(mgr, plan)}


def _location_problems(mgr: ProtectionManager, plan: PlanSpec) -> tuple[list[str], list[str]]:
    """(blocking, other): policies of the plan's zones naming a cluster that is not a member
    of its zone here; policies protecting to another cluster of the recovery zone."""
    blocking, other = [], []
    for p in _zone_policies(mgr, plan, any_cluster=True):
        for zone in (plan.primary, plan.recovery):
            members = zone_sites(mgr, zone)
            if p.cluster(zone) not in members:
                blocking.append(f"policy {p.name!r} names cluster {p.cluster(zone)!r} of zone "
                                f"{zone!r}, which is not a member of it here (members: "
                                f"{', '.join(members) or 'none'})")
        if p.cluster(plan.recovery) != mgr.cluster.site_name:
            other.append(f"policy {p.name!r} protects to cluster {p.cluster(plan.recovery)!r} "
                         f"of zone {plan.recovery!r}, not to this one: run the plan there")
    return blocking, other


def _ours(mgr: ProtectionManager, plan: PlanSpec) -> set[str]:
    """The PDs active here that a failover of `plan` brought (managed here by one of its
    zone policies)."""
    names = {p.name for p in _zone_policies(mgr, plan)}
    return {pd for pd, policy in membership.managed_pds(mgr).items() if policy in names}


def stage_vms(plan: PlanSpec, known: dict[str, VMEntry], ours: set[str],
              primary_sites: set[str]) -> tuple[list[list[str]], list[str]]:
    """The VMs of each stage in boot order, and the problems met resolving them. A stage
    category recovers only VMs protected from the plan's primary zone (replicated here by a
    PD one of its clusters, `primary_sites`, owns that no policy released), or brought here
    by a failover of this plan (their PDs: `ours`); never a VM of this zone, nor one another
    policy protects elsewhere."""
    problems: list[str] = []
    placed: set[str] = set()
    stages: list[list[str]] = []
    for number, stage in enumerate(plan.stages, 1):
        names = list(stage.vms)
        placed.update(names)
        for key, value in stage.categories:
            tagged = {n for n, e in known.items()
                      if e.categories.get(key) == value and e.pd and not e.released
                      and (e.pd in ours if e.here else e.owner in primary_sites)}
            matching = sorted(tagged - placed)
            if not tagged:
                problems.append(f"stage {number}: category {key}:{value} matches no VM "
                                f"protected to zone {plan.recovery!r}")
            names += matching
            placed.update(matching)
        stages.append(names)
    return stages, problems


def _mapped(plan: PlanSpec, network: str, test: bool) -> str:
    """The network a NIC on `network` comes up on at the recovery zone ("" if unmapped).
    A NIC already on a recovery-side production network (a recovery point taken before
    the plan was reversed) is mapped like one on the matching primary network."""
    for m in plan.networks:
        if network in (m.primary, m.recovery):
            return m.recovery_test if test else m.recovery
    return ""


def _problems(mgr: ProtectionManager, plan: PlanSpec, *, test: bool, need_primary: bool
              ) -> tuple[list[str], list[str], list[list[str]]]:
    """(blocking problems, other problems, stage VMs)."""
    known = inventory(mgr)
    stages, blocking = stage_vms(plan, known, _ours(mgr, plan), _primary_sites(mgr, plan))
    blocking_locations, other = _location_problems(mgr, plan)
    blocking += blocking_locations
    for name in (n for s in stages for n in s):
        entry = known.get(name)
        if entry is None:
            blocking.append(f"VM {name!r} is not protected to zone {plan.recovery!r}: no "
                            "protection domain here holds it")
            continue
        if entry.pd is None:
            blocking.append(f"VM {name!r} is in no protection domain or policy")
            continue
        if not entry.here and not entry.points:
            blocking.append(f"no recovery point of VM {name!r} at zone {plan.recovery!r} yet")
        if entry.here:
            continue  # already failed over here: its NICs carry this zone's networks
        for nic in entry.nics:
            if not _mapped(plan, nic["network"], test):
                blocking.append(f"VM {name!r}: network {nic['network']!r} has no "
                                f"{'test' if test else 'production'} network mapped at zone "
                                f"{plan.recovery!r} in plan {plan.name!r}")
    site = primary_site(mgr, plan)
    why = site_up(mgr, site)
    if why:
        at = f" (cluster {site!r})" if site != plan.primary else ""
        (blocking if need_primary else other).append(f"zone {plan.primary!r} is down{at}: {why}")
    return blocking, other, stages


class _Run:
    """One action's report, step by step, with the plan's status kept in the catalogue."""

    def __init__(self, mgr: ProtectionManager, plan: PlanSpec, action: str,
                 progress: StepProgress | None) -> None:
        self.mgr = mgr
        self.report = PlanReport(plan.name, action)
        self.progress = progress
        with mgr.lock, mgr.catalog.transaction():
            self.row = mgr.catalog.insert(PlanRunRow(0, plan.name, action, RUNNING, "[]",
                                                     mgr.now()))

    def step(self, name: str, fn: Callable[[], str | None]) -> None:
        started = time.time()
        t0 = time.perf_counter()
        try:
            detail = fn() or ""
        except (NxError, _StepFailed, OSError, subprocess.SubprocessError) as exc:
            self._ended(PlanStep(name, "failed", started, time.perf_counter() - t0, str(exc)))
            log.error("plan %s %s: step %s failed: %s", self.report.plan, self.report.action,
                      name, exc)
            raise _StepFailed(name) from exc
        status = "skipped" if detail.startswith("skipped") else "ok"
        self._ended(PlanStep(name, status, started, time.perf_counter() - t0, detail))

    def _ended(self, step: PlanStep) -> None:
        self.report.steps.append(step)
        if self.progress is not None:
            self.progress(step)

    def finish(self, status: str) -> PlanReport:
        self.report.status = status
        with self.mgr.lock, self.mgr.catalog.transaction():
            self.row.status = status
            self.row.report = json.dumps(self.report.to_json()["steps"])
            self.mgr.catalog.update(self.row)
        log.info("plan %s %s: %s", self.report.plan, self.report.action, status)
        return self.report


def last_status(mgr: ProtectionManager, plan: str) -> str:
    """The status of the plan's newest action here ("" if none ran)."""
    rows = mgr.catalog.rows(PlanRunRow, "plan = ?", (plan,))
    return max(rows, key=lambda r: r.id).status if rows else ""


def _require_recovery_zone(mgr: ProtectionManager, plan: PlanSpec, action: str) -> None:
    if mgr.cluster.site_name not in zone_sites(mgr, plan.recovery):
        raise InvalidArgument(f"{action} of plan {plan.name!r} runs at its recovery zone "
                              f"{plan.recovery!r}, not at {mgr.cluster.site_name!r}")


def _action(mgr: ProtectionManager, name: str, action: str,
            body: Callable[[_Run, PlanSpec], None], progress: StepProgress | None
            ) -> PlanReport:
    plan = get_plan_spec(mgr, name)
    _require_recovery_zone(mgr, plan, action)
    run = _Run(mgr, plan, action, progress)
    try:
        body(run, plan)
    except _StepFailed as exc:
        return run.finish(f"Failed: {exc}")
    except BaseException:
        run.finish("Failed: interrupted")
        raise
    return run.finish(SUCCEEDED)


def _validate_step(run: _Run, plan: PlanSpec, *, test: bool, need_primary: bool
                   ) -> list[list[str]]:
    stages: list[list[str]] = []

    def check() -> str:
        blocking, other, found = _problems(run.mgr, plan, test=test, need_primary=need_primary)
        run.report.problems = blocking + other
        stages.extend(found)
        if blocking:
            raise _StepFailed("; ".join(blocking))
        return "; ".join(other)

    run.step("validate", check)
    return stages


def validate(mgr: ProtectionManager, name: str, progress: StepProgress | None = None
             ) -> PlanReport:
    """Every problem of plan `name` at once (module docstring); Succeeded when none blocks
    a failover. Every action calls `progress` (if given) as each of its steps ends."""
    return _action(mgr, name, "validate",
                   lambda run, plan: _validate_step(run, plan, test=False, need_primary=False),
                   progress)


# -- bringing VMs up by stage ------------------------------------------------------------------

def _power_on_stages(run: _Run, plan: PlanSpec, stages: list[list[str]], *, test: bool,
                     prefix: str, hooks: dict[tuple[str, int], StageHook],
                     sleep: Callable[[float], None]) -> None:
    mgr = run.mgr
    for number, (stage, names) in enumerate(zip(plan.stages, stages, strict=True), 1):
        if stage.delay and number > 1:
            run.step(f"stage {number}: wait {stage.delay:g} s",
                     lambda d=stage.delay: sleep(d))  # type: ignore[misc]
        vms = []
        for name in names:
            vm = get_vm(mgr, prefix + name)
            vms.append(vm)
            run.step(f"stage {number}: {vm.name}",
                     lambda vm=vm, name=name: _bring_up(plan, vm, name, test))  # type: ignore[misc]
        hook = hooks.get((plan.name, number)) or stage.hook
        if hook:
            run.step(f"stage {number}: hook",
                     lambda h=hook, v=vms: _run_stage_hook(h, plan, run.report.action, v))  # type: ignore[misc]


def _bring_up(plan: PlanSpec, vm: VM, name: str, test: bool) -> str:
    nics = []
    for nic in vm.nics:
        target = _mapped(plan, nic["network"], test)
        nics.append({**nic, "network": target} if target else dict(nic))
    if nics != vm.nics:
        vm.set_nics(nics)
    networks = ",".join(n["network"] for n in nics) or "no NICs"
    if name in plan.stay_off:
        return f"skipped power-on (stays off); networks {networks}"
    vm.power_on()
    return f"on; networks {networks}"


def _run_stage_hook(hook: StageHook | str, plan: PlanSpec, action: str, vms: list[VM]) -> str:
    if callable(hook):
        hook(vms)
        return "callable hook ok"
    done = subprocess.run([hook, plan.name, action, *(v.name for v in vms)],
                          capture_output=True, text=True, timeout=STAGE_HOOK_TIMEOUT_S,
                          check=False)
    if done.returncode:
        tail = (done.stderr or done.stdout)[-400:].strip()
        raise _StepFailed(f"hook {hook} exited {done.returncode}: {tail}")
    return f"hook {hook} ok"


# -- the failovers -----------------------------------------------------------------------------

def _plan_pds(mgr: ProtectionManager, stages: list[list[str]]) -> list[str]:
    known = inventory(mgr)
    pds = [known[n].pd for s in stages for n in s if n in known and known[n].pd]
    return list(dict.fromkeys(p for p in pds if p))


def _plan_policies(mgr: ProtectionManager, plan: PlanSpec, known: dict[str, VMEntry],
                   stages: list[list[str]]) -> list[ProtectionPolicy]:
    """The policies protecting the plan's VMs: from its primary to its recovery zone, and
    naming a category of its stages or matching one of its VMs."""
    named = {c for stage in plan.stages for c in stage.categories}
    vms = [known[n].categories for s in stages for n in s if n in known]
    return [p for p in _zone_policies(mgr, plan)
            if named & set(p.categories) or any(p.matches(c) for c in vms)]


def _adopt_membership(mgr: ProtectionManager, plan: PlanSpec, stages: list[list[str]],
                      pds: list[str]) -> None:
    """PDs a failover brought here stay managed by the plan's policy that protects their
    VMs (or its first one): the Leap tick then keeps or releases them."""
    known = inventory(mgr)
    policies = _plan_policies(mgr, plan, known, stages)
    if not policies:
        return
    for entry in known.values():
        if entry.pd in pds and entry.here:
            policy = next((p for p in policies if p.matches(entry.categories)), policies[0])
            membership.manage(mgr, policy.name, entry.pd)


def _metro_standby(pd: ProtectionDomain) -> bool:
    try:
        return pd.metro_state().role == "standby"
    except (NotFound, InvalidArgument):
        return False


def _point_for(mgr: ProtectionManager, pd_name: str, point: float | None
               ) -> RestorePoint | None:
    """The newest recovery point of `pd_name` here at or before cluster-clock time `point`
    (any if None; None if it has none). NotFound if `point` is before all of them."""
    found = recovery_points(mgr, get_protection_domain(mgr, pd_name))
    if point is not None:
        found = tuple(p for p in found if p.created_at <= point)
        if not found:
            raise NotFound(f"protection domain {pd_name!r} has no recovery point at or "
                           f"before {point} here")
    return found[-1] if found else None


def _activation_point(p: RestorePoint | None) -> RestorePoint | str | None:
    """How activate names `p`: a PD snapshot by its name, an LWS as NearSync listed it."""
    return p.name if p is not None and p.kind == "snapshot" else p


def planned_failover(mgr: ProtectionManager, name: str,
                     hooks: dict[tuple[str, int], StageHook],
                     sleep: Callable[[float], None] = time.sleep,
                   progress: StepProgress | None = None) -> PlanReport:
    """Planned failover of plan `name` to this (its recovery) zone (module docstring)."""
    def body(run: _Run, plan: PlanSpec) -> None:
        stages = _validate_step(run, plan, test=False, need_primary=True)
        pds = _plan_pds(mgr, stages)
        source = primary_site(mgr, plan)
        for pd in pds:
            here = mgr.pd_row(pd).state == ACTIVE

            def move(pd: str = pd, here: bool = here) -> str:
                if here:
                    return "skipped: already here"
                out = remote.call(mgr.cluster, source, "migrate", {"pds": [pd]},
                                  remote.MIGRATE_TIMEOUT_S)
                return "; ".join(f"snapshot {r['snapshot']}, epoch {r['epoch']}"
                                 for r in out["results"]) or "skipped: moved already"
            run.step(f"migrate {pd} from {plan.primary}", move)
            _adopt_membership(mgr, plan, stages, [pd])  # per PD: a re-run finds it ours
        _power_on_stages(run, plan, stages, test=False, prefix="", hooks=hooks, sleep=sleep)

    return _action(mgr, name, "planned_failover", body, progress)


def unplanned_failover(mgr: ProtectionManager, name: str, point: float | None,
                       hooks: dict[tuple[str, int], StageHook],
                       sleep: Callable[[float], None] = time.sleep,
                   progress: StepProgress | None = None) -> PlanReport:
    """Unplanned failover of plan `name` to this (its recovery) zone from the newest
    recovery points (or the newest at or before cluster-clock time `point`)."""
    def body(run: _Run, plan: PlanSpec) -> None:
        stages = _validate_step(run, plan, test=False, need_primary=False)
        # validate just asked the primary: if it did not answer, each PD's activation takes
        # it as gone instead of waiting for it again (a connect timeout per PD).
        gone = [primary_site(mgr, plan)] if any(p.startswith(f"zone {plan.primary!r} is down")
                                     for p in run.report.problems) else []
        pds = _plan_pds(mgr, stages)
        for pd in pds:
            def up(pd: str = pd) -> str:
                if mgr.pd_row(pd).state == ACTIVE:
                    return "skipped: already active here"
                domain = get_protection_domain(mgr, pd)
                if _metro_standby(domain) and point is None:
                    # Synchronous: the replicas hold every acknowledged write; the witness
                    # decides (Metro refuses if the old active still holds the epoch).
                    state = domain.metro_promote(power_on=False)
                    return f"Metro promote (epoch {state.epoch}): no acknowledged write lost"
                chosen = None if point is None else _point_for(mgr, pd, point)
                res = activate(mgr, pd, False, _activation_point(chosen), power_on=False,
                               gone=gone)
                return f"from {res.lws or res.snapshot} (epoch {res.epoch})"
            run.step(f"activate {pd}", up)
            _adopt_membership(mgr, plan, stages, [pd])  # per PD: a re-run finds it ours
        _power_on_stages(run, plan, stages, test=False, prefix="", hooks=hooks, sleep=sleep)

    return _action(mgr, name, "unplanned_failover", body, progress)


def test_prefix(plan: str) -> str:
    return f"{plan}-test-"


def test_failover(mgr: ProtectionManager, name: str, point: float | None,
                  hooks: dict[tuple[str, int], StageHook],
                  sleep: Callable[[float], None] = time.sleep,
                  progress: StepProgress | None = None) -> PlanReport:
    """Test failover of plan `name` at this (its recovery) zone (module docstring). Raises
    InvalidArgument if an earlier test's VMs are still here (run cleanup_test)."""
    if mgr.catalog.rows(TestItemRow, "plan = ?", (name,)):
        raise InvalidArgument(f"a test failover of plan {name!r} is still up: run "
                              "cleanup_test() first")

    def body(run: _Run, plan: PlanSpec) -> None:
        stages = _validate_step(run, plan, test=True, need_primary=False)
        prefix = test_prefix(plan.name)
        for pd_name in _plan_pds(mgr, stages):
            def clone(pd_name: str = pd_name) -> str:
                pd = get_protection_domain(mgr, pd_name)
                if pd.state == ACTIVE:  # failed over here already: its own snapshots
                    chosen = RestorePoint("snapshot", pd.snapshots()[-1].name, 0.0, 0, ())
                    if point is not None:
                        older = [s for s in pd.snapshots() if s.created_at <= point]
                        if not older:
                            raise NotFound(f"protection domain {pd_name!r} has no snapshot "
                                           f"at or before {point}")
                        chosen = RestorePoint("snapshot", older[-1].name, 0.0, 0, ())
                else:
                    chosen = _point_for(mgr, pd_name, point)
                    if chosen is None:
                        raise NotFound(f"no recovery point of protection domain {pd_name!r} "
                                       "here")
                vms, vdisks = _clone_point(mgr, pd, chosen, prefix)
                with mgr.lock, mgr.catalog.transaction():
                    for kind, names in (("vm", vms), ("vdisk", vdisks)):
                        for n in names:
                            mgr.catalog.insert(TestItemRow(0, plan.name, kind, n))
                return f"from {chosen.name}: {', '.join(vms)}"
            run.step(f"clone {pd_name}", clone)
        _power_on_stages(run, plan, stages, test=True, prefix=prefix, hooks=hooks, sleep=sleep)

    return _action(mgr, name, "test_failover", body, progress)


def _clone_point(mgr: ProtectionManager, pd: ProtectionDomain, point: RestorePoint,
                 prefix: str) -> tuple[list[str], list[str]]:
    """Clone PD `pd` at `point` as `<prefix><name>` VMs and vDisks, powered off; the names
    made. A PD snapshot goes through the PD's clone restore; an LWS through NearSync's
    restore, with the VMs configured as in the newest PD snapshot's manifest."""
    if point.kind == "snapshot":
        res = pd.restore(pd.get_snapshot(point.name), mode="clone", prefix=prefix)
        return list(res.vms), list(res.vdisks)
    manifest = pd.snapshots()[-1].manifest  # the VM configuration the episodes lack
    made = [vd.name for vd in restore(mgr.cluster, point, prefix)]
    vms = []
    try:
        for e in manifest:
            if e["kind"] == "vm":
                create_vm(mgr, prefix + e["name"], [prefix + v for v in e["vdisks"]],
                          e["nics"], e["categories"], power="off")
                vms.append(prefix + e["name"])
    except BaseException:
        for vm in vms:
            delete_vm(mgr, vm, keep_vdisks=True)
        for vd in made:
            mgr.cluster.delete_vdisk(vd, with_snapshots=True)
        raise
    return vms, made


def cleanup_test(mgr: ProtectionManager, name: str, progress: StepProgress | None = None
                 ) -> PlanReport:
    """Remove exactly the VMs and vDisks the plan's test failover made here."""
    def body(run: _Run, plan: PlanSpec) -> None:
        items = mgr.catalog.rows(TestItemRow, "plan = ?", (plan.name,))
        for item in sorted(items, key=lambda r: r.kind != "vm"):  # VMs before their vDisks
            def remove(item: TestItemRow = item) -> str:
                try:
                    if item.kind == "vm":
                        delete_vm(mgr, item.name, keep_vdisks=True)
                    else:
                        mgr.cluster.delete_vdisk(item.name, with_snapshots=True)
                    detail = "removed"
                except NotFound:
                    detail = "skipped: already gone"
                with mgr.lock, mgr.catalog.transaction():
                    mgr.catalog.delete(TestItemRow, item.id)
                return detail
            run.step(f"remove {item.kind} {item.name}", remove)

    return _action(mgr, name, "cleanup_test", body, progress)


def reverse(mgr: ProtectionManager, name: str, progress: StepProgress | None = None
            ) -> PlanReport:
    """Swap primary and recovery in plan `name` and in the policies protecting its VMs
    (module docstring). Runs where the VMs now are: the plan's recovery zone, after a
    failover. Raises InvalidArgument if a VM of the plan is not running from here."""
    plan = get_plan_spec(mgr, name)
    _require_recovery_zone(mgr, plan, "reverse")
    known = inventory(mgr)
    stages, _ = stage_vms(plan, known, _ours(mgr, plan), _primary_sites(mgr, plan))
    away = [n for s in stages for n in s if not (n in known and known[n].here)]
    if away:
        raise InvalidArgument(f"VM {away[0]!r} of plan {name!r} is not at zone "
                              f"{plan.recovery!r}: fail over before reversing")
    run = _Run(mgr, plan, "reverse", progress)
    try:
        for policy in _plan_policies(mgr, plan, known, stages):
            d = definitions.get_definition(mgr, "policy", policy.name)

            def swap(d: definitions.Definition = d) -> str:
                spec = dict(d.spec)
                others = [z for z in spec["recovery"] if z != plan.recovery]
                spec["primary"], spec["recovery"] = plan.recovery, [plan.primary, *others]
                stored = definitions.store(mgr, "policy", d.name, spec, new=False)
                return (f"now {plan.recovery} -> {', '.join(spec['recovery'])}" +
                        (f" (owed to {', '.join(stored.owed)})" if stored.owed else ""))
            run.step(f"reverse policy {d.name}", swap)
        run.step(f"reverse plan {name}", lambda: (store_plan(mgr, plan.reversed()), "")[1] or
                 f"now {plan.recovery} -> {plan.primary}")
    except _StepFailed as exc:
        return run.finish(f"Failed: {exc}")
    return run.finish(SUCCEEDED)
