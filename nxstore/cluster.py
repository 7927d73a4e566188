"""Cluster: the one-stop facade, an Engine with every layer above it attached.

`nxstore.Cluster` *is* an `Engine` (nxstore/store/engine.py), so every engine method, and
every function of a lower layer that takes an Engine, accepts it. At open it composes the
layers through the Engine's registration points, bottom to top: replication drops replica
rows with their vDisk, protection guards the vDisks VMs and PDs use, NearSync keeps its
episodes from the drain and gc and loads its settings, and the replication targets learn to
serve NearSync episodes and PD metadata (`TargetProtocols`), and Metro puts its vDisks
behind their write gates and answers its peer; then the drain and Metro threads start. The
methods below forward to the layer that owns each concept; their contracts are documented
on the functions they forward to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial

from .constants import CHAIN_COLLAPSE_DEPTH
from .errors import InvalidArgument
from .leap import definitions as leap_definitions
from .leap import membership as leap_membership
from .leap import plans as leap_plans
from .leap import policies as leap_policies
from .leap import recovery as leap_recovery
from .leap import remote as leap_remote
from .leap import zones as leap_zones
from .leap.membership import Reconciled
from .leap.plans import PlanSpec
from .leap.policies import ProtectionPolicy
from .leap.recovery import PlanReport, StageHook, StepProgress
from .leap.service import LeapService
from .leap.zones import AvailabilityZone, Endpoint
from .metro.service import MetroService
from .names import check_name
from .nearsync import lws as nearsync_lws
from .nearsync import receive as nearsync_receive
from .nearsync import state as nearsync_state
from .nearsync.compose import compose_pending, restore, restore_points
from .nearsync.lws import LWS
from .nearsync.mode import NearSyncMode
from .nearsync.state import NearSyncConfig
from .protection import categories, domain, guards, schedule, vm
from .protection import remote as protection_remote
from .protection.categories import Category
from .protection.domain import ProtectionDomain
from .protection.failover import ActivateResult, activate
from .protection.manager import ProtectionManager
from .protection.modes import RestorePoint
from .protection.schedule import ScheduleRun
from .protection.vm import VM
from .replication import replica, sites, source
from .replication.protocols import target_protocols
from .replication.replica import ReplicaInfo
from .replication.sites import RemoteSite
from .replication.source import ReplicationResult
from .store.engine import Engine
from .store.snapshot import Snapshot
from .store.vdisk import VDisk


class Cluster(Engine):
    """An open cluster with replication, protection, NearSync, Metro and Leap attached. Use
    `Cluster.create` / `Cluster.open` (see `Engine.create` / `Engine.open`), ideally as a
    context manager."""

    def __init__(self, path: str, *, clock: Callable[[], float] | None = None,
                 salvage: bool = False, background: bool = True,
                 collapse_depth: int = CHAIN_COLLAPSE_DEPTH) -> None:
        """Open the cluster at `path` (prefer `Cluster.open`)."""
        super().__init__(path, clock=clock, salvage=salvage, background=False,
                         collapse_depth=collapse_depth)
        self._protection_mgr: ProtectionManager | None = None
        try:
            replica.attach(self)
            self.add_vdisk_guard(partial(guards.check_unprotected, self.ctx.catalog))
            self._nearsync = NearSyncMode.attach(self)
            protocols = target_protocols(self)  # what this site's replication targets serve
            nearsync_receive.register(protocols, self)
            protection_remote.register(protocols, self._protection)
            self._metro = MetroService(self, self._protection)
            self._metro.attach()
            self._leap = LeapService(self._protection)
            leap_remote.register(protocols, self._protection, lambda: self._leap.endpoint)
        except BaseException:
            Engine.close(self)
            raise
        if background:
            self.start_background()
            self._metro.start()

    def close(self) -> None:
        """Stop Metro's thread and links, then close the engine (see `Engine.close`)."""
        metro = getattr(self, "_metro", None)
        if metro is not None:
            metro.close()
        super().close()

    # -- replication (nxstore.replication) -----------------------------------------------
    def add_remote_site(self, name: str, address: str, secret: str,
                        network_mapping: dict[str, str] | None = None,
                        vstore_mapping: dict[str, str] | None = None,
                        tls_ca: str | None = None) -> RemoteSite:
        """Register a peer cluster reached at `address` (HOST:PORT of its `nxstore serve`),
        authenticated with the shared `secret`. vstore_mapping maps local containers
        to the peer's (default: same name). `tls_ca`: connect over TLS and require
        the site's certificate to chain to this PEM CA file (the site runs
        `nxstore serve --tls-cert/--tls-key`). Raises AlreadyExists, InvalidArgument."""
        self._check_open()
        check_name("site", name)
        return sites.add_site(self.ctx.catalog, RemoteSite(
            name, address, secret, network_mapping or {}, vstore_mapping or {}, tls_ca or ""))

    def remote_sites(self) -> list[RemoteSite]:
        """The registered remote sites, by name."""
        self._check_open()
        return sites.list_sites(self.ctx.catalog)

    def remove_remote_site(self, name: str) -> None:
        """Forget remote site `name` (NotFound otherwise)."""
        self._check_open()
        sites.remove_site(self.ctx.catalog, name)

    def replicate(self, snapshot_or_group: Snapshot | Sequence[Snapshot], site: str,
                  progress: Callable[[str, int, int, int], None] | None = None,
                  bandwidth_limit: float | None = None) -> ReplicationResult:
        """Ship a snapshot or a consistency group's snapshots to remote `site`; see
        `nxstore.replication.source.replicate_snapshots`."""
        self._check_open()
        return source.replicate_snapshots(self, snapshot_or_group, site, progress,
                                          bandwidth_limit)

    def replicas(self) -> list[ReplicaInfo]:
        """The replica vDisks this cluster holds for other sites, with their snapshots."""
        self._check_open()
        return replica.list_replicas(self)

    def prune_remote(self, site: str, vdisk_name: str, keep: int) -> list[str]:
        """Remote retention; see `nxstore.replication.source.prune_remote_snapshots`."""
        self._check_open()
        return source.prune_remote_snapshots(self, site, vdisk_name, keep)

    def promote_replica(self, name: str, new_name: str | None = None) -> VDisk:
        """Make replica vDisk `name` writable; see `nxstore.replication.replica.promote_replica`."""
        self._check_open()
        return replica.promote_replica(self, name, new_name)

    def make_replica(self, name: str, source_cluster: str, source_site: str,
                     source_vdisk: str | None = None) -> None:
        """Make vDisk `name` a read-only replica; see `nxstore.replication.replica.make_replica`."""
        self._check_open()
        replica.make_replica(self, name, source_cluster, source_site, source_vdisk)

    # -- data protection: VMs, protection domains, schedules (nxstore.protection) -----------
    def _protection(self) -> ProtectionManager:
        """The protection layer's state, made on first use (it finishes what a crash
        interrupted then)."""
        self._check_open()
        mgr = self._protection_mgr
        if mgr is None:
            with self._registry_lock:
                if self._protection_mgr is None:
                    self._protection_mgr = ProtectionManager(self, (self._nearsync,),
                                                             self._metro)
                    self._protection_mgr.category_users.append(
                        partial(leap_definitions.category_user, self._protection_mgr))
                mgr = self._protection_mgr
        return mgr

    def create_vm(self, name: str, vdisks: Sequence[VDisk | str] = (),
                  nics: Sequence[dict[str, str]] | None = None,
                  categories: dict[str, str] | None = None, power: str = "on") -> VM:
        """Register VM `name` owning `vdisks`; see `nxstore.protection.vm.create_vm`."""
        return vm.create_vm(self._protection(), name, vdisks, nics, categories, power)

    def vm(self, name: str) -> VM:
        """The VM called `name` (NotFound otherwise)."""
        return vm.get_vm(self._protection(), name)

    def vms(self) -> list[VM]:
        """Every VM, by name."""
        return vm.list_vms(self._protection())

    def delete_vm(self, name: str, keep_vdisks: bool = False) -> None:
        """Delete a VM and (unless keep_vdisks) its vDisks; see `nxstore.protection.vm`."""
        vm.delete_vm(self._protection(), name, keep_vdisks)

    def create_category(self, key: str, values: Sequence[str], description: str = "") -> Category:
        """Define category `key` allowing `values`; see `nxstore.protection.categories`."""
        return categories.create_category(self._protection(), key, values, description)

    def add_category_values(self, key: str, values: Sequence[str]) -> Category:
        """Allow more values for category `key`; see `nxstore.protection.categories`."""
        return categories.add_category_values(self._protection(), key, values)

    def categories(self) -> list[Category]:
        """Every category of the registry, by key."""
        return categories.list_categories(self._protection())

    def category(self, key: str) -> Category:
        """The category called `key` (NotFound otherwise)."""
        return categories.get_category(self._protection(), key)

    def delete_category(self, key: str) -> None:
        """Forget category `key` (InUse while used); see `nxstore.protection.categories`."""
        categories.delete_category(self._protection(), key)

    def create_protection_domain(self, name: str,
                                 entities: Sequence[VM | VDisk | str] = ()) -> ProtectionDomain:
        """A new protection domain owned by this cluster, protecting `entities`; see
        `nxstore.protection.domain.create_protection_domain`."""
        return domain.create_protection_domain(self._protection(), name, entities)

    def protection_domain(self, name: str) -> ProtectionDomain:
        """The protection domain called `name` (NotFound otherwise)."""
        return domain.get_protection_domain(self._protection(), name)

    def protection_domains(self) -> list[ProtectionDomain]:
        """Every protection domain, by name."""
        return domain.list_protection_domains(self._protection())

    def delete_protection_domain(self, name: str, delete_snapshots: bool = False) -> None:
        """Delete a PD; see `nxstore.protection.domain.delete_protection_domain`."""
        domain.delete_protection_domain(self._protection(), name, delete_snapshots)

    def activate(self, pd_name: str, force: bool = False,
                 point: RestorePoint | str | int | None = None) -> ActivateResult:
        """Unplanned failover of `pd_name` here; see `nxstore.protection.failover.activate`."""
        return activate(self._protection(), pd_name, force, point)

    def run_schedules(self) -> list[ScheduleRun]:
        """Run the Leap tick (`leap_tick`), then every PD schedule due on the cluster clock;
        see `nxstore.protection.schedule.run_schedules`."""
        self.leap_tick()
        return schedule.run_schedules(self._protection())

    # -- NearSync: light-weight snapshots (nxstore.nearsync) ---------------------------------
    def lws_group(self, vdisks: Sequence[VDisk] = (), name: str | None = None, *,
                  pd: str | None = None) -> LWS:
        """A light-weight snapshot of several vDisks or of PD `pd`; see
        `nxstore.nearsync.lws.take_group`."""
        return nearsync_lws.take_group(self._protection(), vdisks, name, pd)

    def configure_nearsync(self, **settings: float) -> NearSyncConfig:
        """Change NearSync settings; see `nxstore.nearsync.state.configure`."""
        return nearsync_state.configure(self, **settings)

    def nearsync_config(self) -> NearSyncConfig:
        """The NearSync settings in force (defaults for those never configured)."""
        return nearsync_state.config(self)

    def restore_points(self, pd: str) -> list[RestorePoint]:
        """At a remote: the restore points of PD `pd` held here, oldest first; see
        `nxstore.nearsync.compose.restore_points`."""
        self._check_open()
        return restore_points(self, pd)

    def restore_point(self, point: RestorePoint, prefix: str) -> list[VDisk]:
        """New writable vDisks `<prefix><vDisk>` reading exactly as restore point `point`;
        see `nxstore.nearsync.compose.restore`."""
        self._check_open()
        return restore(self, point, prefix)

    def compose_pending(self) -> list[Snapshot]:
        """At a remote: compose the vDisk snapshots received LWS episodes ask for; see
        `nxstore.nearsync.compose.compose_pending`."""
        self._check_open()
        return compose_pending(self)

    # -- Leap: zones, categories' policies, recovery plans (nxstore.leap) -----------------
    def set_endpoint(self, address: str, secret: str) -> None:
        """How peers reach this cluster (HOST:PORT and the secret it accepts): `nxstore
        serve` sets it; zone pairing needs it."""
        self._leap.endpoint = Endpoint(address, secret)

    def leap_tick(self) -> Reconciled:
        """Deliver policy and plan definitions owed to zones and make the protection
        domains follow the policies whose primary zone is this site; see
        `nxstore.leap.service.LeapService.tick`."""
        return self._leap.tick()

    def connect_zone(self, name: str, address: str, secret: str,
                     local_address: str | None = None, tls_ca: str = "",
                     cluster: str | None = None) -> AvailabilityZone:
        """Pair with availability zone `name` served at `address`, in both directions: its
        cluster `cluster` (that site's name; default `name`), so calling again with another
        cluster groups several in one zone; `local_address`: how it reaches this site
        (default: where `nxstore serve` serves it). See `nxstore.leap.zones.connect_zone`."""
        mgr = self._protection()
        local = (Endpoint(local_address, secret) if local_address is not None
                 else self._leap.endpoint)
        return leap_zones.connect_zone(mgr, name, address, secret, local, tls_ca, cluster)

    def zones(self) -> list[AvailabilityZone]:
        """The paired availability zones (not this site's own), by name."""
        return leap_zones.list_zones(self._protection())

    def local_zone(self) -> AvailabilityZone:
        """This site's own availability zone: this site and its fellow clusters."""
        return leap_zones.local_zone(self._protection())

    def remove_zone(self, name: str, cluster: str | None = None) -> None:
        """Unpair zone `name`, or only its cluster `cluster`; see
        `nxstore.leap.zones.remove_zone`."""
        leap_zones.remove_zone(self._protection(), name, cluster)

    def zone_up(self, name: str, cluster: str | None = None) -> str:
        """"" if every cluster of zone `name` (or `cluster`) answers a status request now,
        else why not (never raises for an unreachable zone)."""
        return leap_zones.zone_up(self._protection(), name, cluster)

    def create_policy(self, name: str, primary: object, recovery: Sequence[object] | str,
                      schedules: Sequence[object], categories: Sequence[object] = (),
                      containers: Sequence[str] = ()) -> ProtectionPolicy:
        """Define a protection policy; see `nxstore.leap.policies.create_policy`."""
        return leap_policies.create_policy(self._protection(), name, primary, recovery,
                                           schedules, categories, containers)

    def update_policy(self, name: str, **changes: object) -> ProtectionPolicy:
        """Change a policy; see `nxstore.leap.policies.update_policy`."""
        return leap_policies.update_policy(self._protection(), name, **changes)

    def policy(self, name: str) -> ProtectionPolicy:
        """Protection policy `name` (NotFound otherwise)."""
        return leap_policies.get_policy(self._protection(), name)

    def policies(self) -> list[ProtectionPolicy]:
        """Every protection policy this zone holds, by name."""
        return leap_policies.list_policies(self._protection())

    def delete_policy(self, name: str) -> None:
        """Delete a policy here and at its zones; see `nxstore.leap.policies.delete_policy`."""
        leap_policies.delete_policy(self._protection(), name)

    def migrate_pd_to_policy(self, pd: str, policy: str) -> None:
        """Move a protection domain into a policy, keeping its recovery points; see
        `nxstore.leap.membership.migrate_pd_to_policy`."""
        leap_membership.migrate_pd_to_policy(self._protection(), pd, policy)

    def create_recovery_plan(self, name: str, primary: str, recovery: str,
                             stages: Sequence[object], networks: Sequence[object] = (),
                             stay_off: Sequence[str] = ()) -> RecoveryPlan:
        """Define a recovery plan; see `nxstore.leap.plans.create_plan`."""
        leap_plans.create_plan(self._protection(), name, primary, recovery, stages, networks,
                               stay_off)
        return RecoveryPlan(self, name)

    def recovery_plan(self, name: str) -> RecoveryPlan:
        """Recovery plan `name` (NotFound otherwise)."""
        leap_plans.get_plan_spec(self._protection(), name)
        return RecoveryPlan(self, name)

    def recovery_plans(self) -> list[RecoveryPlan]:
        """Every recovery plan this zone holds, by name."""
        return [RecoveryPlan(self, p.name) for p in leap_plans.list_plan_specs(self._protection())]

    def delete_recovery_plan(self, name: str) -> None:
        """Delete a recovery plan here and at its other zone."""
        leap_definitions.delete(self._protection(), "plan", name)


class RecoveryPlan:
    """A handle on a recovery plan of an open cluster; its actions run at the plan's
    recovery zone and are documented in `nxstore.leap.recovery`."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self._cluster = cluster
        self.name = name

    def __repr__(self) -> str:
        return f"RecoveryPlan({self.name!r})"

    @property
    def spec(self) -> PlanSpec:
        """The plan as defined now."""
        return leap_plans.get_plan_spec(self._cluster._protection(), self.name)

    @property
    def last_failover_status(self) -> str:
        """"Succeeded", "Failed: <step>", "Running", or "" if no action ran here."""
        return leap_recovery.last_status(self._cluster._protection(), self.name)

    def set_hook(self, stage: int, hook: StageHook | None) -> None:
        """Run callable `hook(vms)` after stage `stage` (1-based) powers on, at this site
        (kept in memory only; an executable hook is part of the stage's definition)."""
        if not 1 <= stage <= len(self.spec.stages):
            raise InvalidArgument(f"plan {self.name!r} has no stage {stage}")
        if hook is None:
            self._cluster._leap.hooks.pop((self.name, stage), None)
        else:
            self._cluster._leap.hooks[(self.name, stage)] = hook

    def update(self, **changes: object) -> PlanSpec:
        """Change some fields of the plan (stages, networks, stay_off, ...); checked like
        at creation."""
        return leap_plans.store_plan(self._cluster._protection(),
                                     dataclasses.replace(self.spec, **changes))

    # Every action takes `progress`: called with each PlanStep as it ends.
    def validate(self, progress: StepProgress | None = None) -> PlanReport:
        return leap_recovery.validate(self._cluster._protection(), self.name, progress)

    def test_failover(self, point: float | None = None,
                      progress: StepProgress | None = None) -> PlanReport:
        return leap_recovery.test_failover(self._cluster._protection(), self.name, point,
                                           self._cluster._leap.hooks, progress=progress)

    def cleanup_test(self, progress: StepProgress | None = None) -> PlanReport:
        return leap_recovery.cleanup_test(self._cluster._protection(), self.name, progress)

    def planned_failover(self, progress: StepProgress | None = None) -> PlanReport:
        return leap_recovery.planned_failover(self._cluster._protection(), self.name,
                                              self._cluster._leap.hooks, progress=progress)

    def unplanned_failover(self, point: float | None = None,
                           progress: StepProgress | None = None) -> PlanReport:
        return leap_recovery.unplanned_failover(self._cluster._protection(), self.name, point,
                                                self._cluster._leap.hooks, progress=progress)

    def reverse(self, progress: StepProgress | None = None) -> PlanReport:
        return leap_recovery.reverse(self._cluster._protection(), self.name, progress)
