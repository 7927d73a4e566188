"""The seed's scenario, shared by the Leap tests: zone canada protects VMs with category
replicated-vm:from-canada to zone france (policy every hour, app-consistent), and recovery
plan `ca-plan` brings db up first, then the web tier, mapping production VLAN50 to
FR-VLAN50 and the test network VLAN51 to FR-VLAN51."""

from __future__ import annotations

from leap_helpers import BS, SECRET, Zones

from nxstore.leap import NetworkMapping, PolicySchedule, Stage

SIZE = 32 * BS
VMS = {"db": ["db-os", "db-data"], "web1": ["web1-os"], "web2": ["web2-os"]}
TIERS = {"db": "db", "web1": "web", "web2": "web"}
NETWORKS = [NetworkMapping("VLAN50", "FR-VLAN50", "VLAN51", "FR-VLAN51")]
STAGES = [Stage(vms=("db",)), Stage(categories=(("tier", "web"),))]


def fill(vd, seed: int, blocks=range(0, 32, 3)) -> None:
    for i in blocks:
        vd.write(i * BS, (seed * 1_000_003 + i).to_bytes(8, "little") * (BS // 8))


def disk_images(c, vm_name: str) -> list[bytes]:
    vm = c.vm(vm_name)
    return [vd.read(0, vd.size) for vd in vm.vdisks]


def build(z: Zones, *, schedule_every: float = 3600.0, with_plan: bool = True,
          background: bool = False):
    """Zones canada and france paired, the VMs at canada, the policy (and the plan)."""
    ca, fr = z.add("canada", background), z.add("france", background)
    ca.connect_zone("france", z.address("france"), SECRET)
    ca.create_category("replicated-vm", ["from-canada"])
    ca.create_category("tier", ["db", "web"])
    for seed, (vm, disks) in enumerate(VMS.items(), 1):
        vds = [ca.create_vdisk(d, SIZE) for d in disks]
        for j, vd in enumerate(vds):
            fill(vd, seed * 10 + j)
        ca.create_vm(vm, vdisks=vds, nics=[{"network": "VLAN50"}])
        ca.vm(vm).add_category("replicated-vm", "from-canada")
        ca.vm(vm).add_category("tier", TIERS[vm])
    ca.create_policy("ca-to-fr", "canada", ["france"],
                     [PolicySchedule(every=schedule_every, keep_local=3, keep_remote=3,
                                     app_consistent=True)],
                     categories=["replicated-vm:from-canada"])
    if with_plan:
        ca.create_recovery_plan("ca-plan", "canada", "france", STAGES, NETWORKS)
    return ca, fr
