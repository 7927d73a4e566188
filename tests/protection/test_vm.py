"""VM entities: registration, power, hooks configuration, deletion, persistence."""

from __future__ import annotations

import pytest
from pd_helpers import MB, script

from nxstore import VM
from nxstore.errors import AlreadyExists, InUse, InvalidArgument, NotFound


def test_create_vm_and_properties(cl):
    a, b = cl.create_vdisk("web-os", MB), cl.create_vdisk("web-data", MB)
    vm = cl.create_vm("web", vdisks=[a, "web-data"], nics=[{"network": "VLAN50"}],
                      categories={"env": "prod"})
    assert isinstance(vm, VM)
    assert vm.vdisk_names == ["web-os", "web-data"]
    assert [v.name for v in vm.vdisks] == ["web-os", "web-data"]
    assert vm.nics == [{"network": "VLAN50"}]
    assert vm.categories == {"env": "prod"}
    assert vm.power_state == "on"
    assert vm.protection_domain is None
    vm.power_off()
    assert cl.vm("web").power_state == "off"
    vm.power_off()  # idempotent
    vm.power_on()
    assert vm.power_state == "on"
    assert cl.vms() == [vm]
    assert b.name in vm.vdisk_names


def test_vm_bad_input(cl):
    a = cl.create_vdisk("a", MB)
    cl.create_vdisk("b", MB)
    cl.create_vm("vm1", vdisks=[a])
    with pytest.raises(AlreadyExists):
        cl.create_vm("vm1", vdisks=["b"])
    with pytest.raises(InUse, match="already belongs to VM 'vm1'"):
        cl.create_vm("vm2", vdisks=["a"])
    with pytest.raises(NotFound):
        cl.create_vm("vm2", vdisks=["nope"])
    with pytest.raises(NotFound):
        cl.vm("nope")
    for kwargs in ({"power": "standby"}, {"nics": [{"vlan": "x"}]}, {"nics": "VLAN50"},
                   {"categories": {"env": 3}}, {"vdisks": ["b", "b"]}, {"vdisks": [42]}):
        with pytest.raises(InvalidArgument):
            cl.create_vm("vm2", **{"vdisks": ["b"], **kwargs})
    with pytest.raises(InvalidArgument):
        cl.create_vm("bad/name")
    assert [v.name for v in cl.vms()] == ["vm1"]  # nothing half-created


def test_delete_vm(cl):
    cl.create_vdisk("a", MB).snapshot("s1")
    cl.create_vdisk("b", MB)
    cl.create_vm("keep", vdisks=["a"])
    cl.create_vm("drop", vdisks=["b"])
    cl.delete_vm("keep", keep_vdisks=True)
    assert cl.vdisk("a").snapshots()
    cl.delete_vm("drop")
    with pytest.raises(NotFound):
        cl.vdisk("b")
    with pytest.raises(NotFound):
        cl.delete_vm("drop")
    vm = cl.create_vm("again", vdisks=["a"])  # "a" is free again
    cl.create_protection_domain("pd", entities=[vm])
    with pytest.raises(InUse, match="protection domain 'pd'"):
        cl.delete_vm("again")


def test_hook_configuration(cl, tmp_path):
    vm = cl.create_vm("vm", vdisks=[cl.create_vdisk("a", MB)])
    with pytest.raises(InvalidArgument, match="not an executable"):
        vm.set_hooks(pre_freeze=str(tmp_path / "missing.sh"))
    with pytest.raises(InvalidArgument):
        vm.set_hooks(pre_freeze=lambda v: None, timeout=0)
    with pytest.raises(InvalidArgument):
        vm.set_hooks(pre_freeze=42)
    path = script(tmp_path, "thaw.sh", "exit 0")
    fn = lambda v: None  # noqa: E731
    vm.set_hooks(pre_freeze=fn, post_thaw=path, timeout=5)
    hooks, timeout = vm.hooks()
    assert hooks == {"pre-freeze": fn, "post-thaw": path} and timeout == 5.0
    vm.clear_hooks()
    assert vm.hooks()[0] == {}


def test_vms_persist_across_reopen(make_cluster, clock, tmp_path):
    c = make_cluster("p", clock=clock)
    c.create_vdisk("a", MB)
    vm = c.create_vm("vm", vdisks=["a"], nics=[{"network": "n1"}, {"network": "n2", "mac": "m"}],
                     categories={"app": "db"}, power="off")
    path = script(tmp_path, "freeze.sh", "exit 0")
    vm.set_hooks(pre_freeze=path, post_thaw=lambda v: None, timeout=7)
    c = make_cluster.reopen(c, clock=clock)
    vm = c.vm("vm")
    assert vm.vdisk_names == ["a"]
    assert vm.nics == [{"network": "n1"}, {"network": "n2", "mac": "m"}]
    assert vm.categories == {"app": "db"} and vm.power_state == "off"
    hooks, timeout = vm.hooks()
    assert hooks == {"pre-freeze": path} and timeout == 7.0  # callables are runtime-only
