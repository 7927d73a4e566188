"""The category registry (nxstore.protection.categories) and what VMs do with it: define,
list, extend, delete (refused while a VM or a registered user holds the key), persistence,
name checks; add_category / remove_category / set_nics on a VM."""

from __future__ import annotations

import pytest
from pd_helpers import MB

from nxstore.errors import AlreadyExists, InUse, InvalidArgument, NotFound
from nxstore.protection import Category


def test_create_list_get_extend(cl):
    assert cl.categories() == []
    made = cl.create_category("replicated-vm", ["from-canada"], description="Leap demo")
    assert made == Category("replicated-vm", ("from-canada",), "Leap demo")
    cl.create_category("env", values=["prod", "test"])
    assert [c.key for c in cl.categories()] == ["env", "replicated-vm"]
    assert cl.category("env") == Category("env", ("prod", "test"), "")
    with pytest.raises(AlreadyExists, match="category 'env' exists"):
        cl.create_category("env", ["dev"])
    grown = cl.add_category_values("env", ["dev", "prod"])  # "prod" is there already
    assert grown.values == ("prod", "test", "dev") and cl.category("env") == grown
    with pytest.raises(NotFound, match="no category 'nope'"):
        cl.category("nope")
    with pytest.raises(NotFound):
        cl.add_category_values("nope", ["x"])
    with pytest.raises(NotFound):
        cl.delete_category("nope")


@pytest.mark.parametrize("key,values,description", [
    ("bad/key", ["v"], ""), ("", ["v"], ""), (" env", ["v"], ""), (3, ["v"], ""),
    ("env", [], ""), ("env", "prod", ""), ("env", ["a:b"], ""), ("env", ["v", "v"], ""),
    ("env", [7], ""), ("env", ["v"], "two\nlines"), ("env", ["v"], 5),
])
def test_bad_input_changes_nothing(cl, key, values, description):
    with pytest.raises(InvalidArgument):
        cl.create_category(key, values, description)
    assert cl.categories() == []


def test_bad_values_when_extending(cl):
    cl.create_category("env", ["prod"])
    for values in ([], ["a@b"], ["x", "x"], "prod"):
        with pytest.raises(InvalidArgument):
            cl.add_category_values("env", values)
    assert cl.category("env").values == ("prod",)


def test_delete_refused_while_a_vm_carries_it(cl):
    cl.create_category("env", ["prod", "test"])
    cl.create_category("spare", ["x"])
    a = cl.create_vm("a", vdisks=[cl.create_vdisk("a", MB)])
    cl.create_vm("b", vdisks=[cl.create_vdisk("b", MB)], categories={"env": "test"})
    a.add_category("env", "prod")
    with pytest.raises(InUse, match="category 'env' is in use by VM 'a', VM 'b'"):
        cl.delete_category("env")
    a.remove_category("env")
    cl.delete_vm("b")
    cl.delete_category("env")
    cl.delete_category("spare")
    assert cl.categories() == []


def test_delete_refused_while_a_registered_user_uses_it(cl):
    cl.create_category("tier", ["gold"])
    cl.create_category("other", ["x"])
    mgr = cl._protection()
    using = {"tier"}
    mgr.category_users.append(lambda key: "protection policy 'gold'" if key in using else None)
    mgr.category_users.append(lambda key: None)
    with pytest.raises(InUse, match="in use by protection policy 'gold'"):
        cl.delete_category("tier")
    assert cl.category("tier").values == ("gold",)
    cl.delete_category("other")  # the user does not name it
    using.clear()
    cl.delete_category("tier")
    assert cl.categories() == []


def test_registry_and_vm_tags_survive_reopen(make_cluster, clock):
    c = make_cluster("p", clock=clock)
    c.create_category("env", ["prod", "test"], description="where it runs")
    c.create_category("app", ["db"])
    vm = c.create_vm("vm", vdisks=[c.create_vdisk("a", MB)], nics=[{"network": "n1"}])
    vm.add_category("env", "prod")
    vm.set_nics([{"network": "n2", "mac": "m"}])
    c = make_cluster.reopen(c, clock=clock)
    assert c.categories() == [Category("app", ("db",), ""),
                              Category("env", ("prod", "test"), "where it runs")]
    vm = c.vm("vm")
    assert vm.categories == {"env": "prod"} and vm.nics == [{"network": "n2", "mac": "m"}]
    with pytest.raises(InUse):
        c.delete_category("env")


def test_vm_add_category_checks_the_registry_and_replaces(cl):
    vm = cl.create_vm("vm", vdisks=[cl.create_vdisk("a", MB)], categories={"legacy": "x"})
    with pytest.raises(NotFound, match="no category 'env'"):
        vm.add_category("env", "prod")
    cl.create_category("env", ["prod", "test"])
    with pytest.raises(NotFound, match="category 'env' has no value 'dev'"):
        vm.add_category("env", "dev")
    assert vm.categories == {"legacy": "x"}  # create_vm took an undefined category as given
    vm.add_category("env", "prod")
    vm.add_category("env", "test")  # one value per key: replaced
    assert vm.categories == {"env": "test", "legacy": "x"}
    vm.remove_category("legacy")
    assert cl.vm("vm").categories == {"env": "test"}
    with pytest.raises(NotFound, match="VM 'vm' has no category 'legacy'"):
        vm.remove_category("legacy")
    cl.delete_vm("vm")
    with pytest.raises(NotFound, match="no VM 'vm'"):
        vm.add_category("env", "prod")
    with pytest.raises(NotFound, match="no VM 'vm'"):
        vm.remove_category("env")


def test_vm_set_nics(cl):
    vm = cl.create_vm("vm", vdisks=[cl.create_vdisk("a", MB)], nics=[{"network": "VLAN50"}])
    vm.set_nics([{"network": "VLAN51"}, {"network": "VLAN52", "mac": "52:54:00:00:00:01"}])
    assert cl.vm("vm").nics == [{"network": "VLAN51"},
                                {"network": "VLAN52", "mac": "52:54:00:00:00:01"}]
    for bad in ([{"vlan": "x"}], "VLAN50", [{"network": ""}], [{"network": "n", "mtu": 9000}]):
        with pytest.raises(InvalidArgument):
            vm.set_nics(bad)
    assert len(vm.nics) == 2  # nothing changed by a refused call
    vm.set_nics([])
    assert vm.nics == []
