"""Protection domains protecting whole containers: vDisks created later, replicas and VMs'
vDisks left out, conflicts, restore, replication, migrate and activate (real `nxstore
serve` peers, failover_helpers.Sites), the CLI."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from failover_helpers import BS, SIZE, Sites, fill, image, images

from nxstore.errors import InUse, InvalidArgument, NotFound

HOUR = 3600.0


def members(snap) -> dict[str, str]:
    """{vDisk: entity kind} of a PD snapshot."""
    return {m.snapshot.vdisk_name: m.entity_kind for m in snap.members()}


def test_container_covers_vdisks_created_later(cl):
    cl.create_container("ctr")
    a = cl.create_vdisk("a", SIZE, container="ctr")
    vm_disk = cl.create_vdisk("vm-disk", SIZE, container="ctr")
    cl.create_vm("web", vdisks=[vm_disk])
    cl.create_vdisk("elsewhere", SIZE)  # container "default": not covered
    fill(a, 1, [0, 1])
    pd = cl.create_protection_domain("pd-c")
    pd.add_container("ctr")
    assert pd.containers() == ["ctr"] and [e.name for e in pd.entities()] == ["ctr"]
    assert pd.vdisk_names() == ["a"]
    s1 = pd.snapshot()
    assert members(s1) == {"a": "container"}
    [entry] = s1.manifest
    assert entry["kind"] == "container" and entry["name"] == "ctr"
    assert [m["vdisk"] for m in entry["members"]] == ["a"]
    b = cl.create_vdisk("b", SIZE, container="ctr")  # after protection: in the next snapshot
    fill(b, 2, [3])
    # a replica (read-only copy of another site's vDisk) in the container stays out
    cl.create_vdisk("from-uk", SIZE, container="ctr")
    cl.make_replica("from-uk", "uk-cluster-id", "uk")
    s2 = pd.snapshot()
    assert members(s2) == {"a": "container", "b": "container"}
    assert image(cl.snapshot("b", s2.name)) == image(b)
    # a vDisk attached to a VM leaves the container entity (protected through the VM)
    cl.create_vm("app", vdisks=["b"])
    assert pd.vdisk_names() == ["a"]
    # deleting a covered vDisk is allowed: it leaves the PD at the next snapshot
    cl.delete_vm("app", keep_vdisks=True)
    cl.delete_vdisk("b", with_snapshots=True)
    assert members(pd.snapshot()) == {"a": "container"}
    pd.remove_container("ctr")
    assert pd.containers() == []
    with pytest.raises(InvalidArgument, match="protects no vDisks"):
        pd.snapshot()
    pd.add_entities(["container:ctr"])  # the same entity by name
    assert pd.vdisk_names() == ["a"]
    with pytest.raises(NotFound, match="no container 'ghost'"):
        pd.add_container("ghost")
    with pytest.raises(NotFound):
        pd.remove_container("default")
    # persisted: a reopened cluster sees the container entity
    path = cl.path
    cl.close()
    from nxstore import Cluster

    with Cluster.open(path, background=False) as again:
        assert again.protection_domain("pd-c").containers() == ["ctr"]


def test_container_conflicts_name_both_pds(cl):
    cl.create_container("ctr")
    cl.create_container("ctr2")
    cl.create_vdisk("a", SIZE, container="ctr")
    cl.create_vdisk("x", SIZE, container="ctr2")
    pa = cl.create_protection_domain("pd-a", entities=["container:ctr"])
    pb = cl.create_protection_domain("pd-b", entities=["x"])
    with pytest.raises(InUse, match="'pd-a'.*'pd-b'"):  # one container, two PDs
        pb.add_container("ctr")
    with pytest.raises(InUse, match="'pd-a'.*'pd-b'"):  # a covered vDisk on its own
        pb.add_entities(["a"])
    # created later in the protected container: still not protectable twice
    cl.create_vdisk("late", SIZE, container="ctr")
    with pytest.raises(InUse, match="container 'ctr'.*'pd-a'.*'pd-b'"):
        pb.add_entities(["late"])
    with pytest.raises(InUse, match="'pd-b'.*'pd-a'"):  # ctr2 holds x, protected by pd-b
        pa.add_container("ctr2")
    with pytest.raises(InUse):  # a container and one of its vDisks in one PD
        cl.create_protection_domain("pd-c", entities=["late", "container:ctr"])
    with pytest.raises(InUse):  # the same, other order
        cl.create_protection_domain("pd-c", entities=["container:ctr2", "x"])
    assert [p.name for p in cl.protection_domains()] == ["pd-a", "pd-b"]  # nothing half-made
    # a covered vDisk may join a VM, which another PD then protects: no double protection
    cl.create_vm("app", vdisks=["late"])
    pb.add_entities(["app"])
    assert pa.vdisk_names() == ["a"] and sorted(pb.vdisk_names()) == ["late", "x"]
    assert members(pa.snapshot()) == {"a": "container"}


def test_restore_overwrite_and_clone(cl):
    cl.create_container("ctr")
    a = cl.create_vdisk("a", SIZE, container="ctr")
    fill(a, 1, range(8))
    pd = cl.create_protection_domain("pd-c", entities=["container:ctr"])
    snap = pd.snapshot(name="s1")
    at_snap = image(a)
    fill(a, 9, [0, 5])
    later = cl.create_vdisk("later", SIZE, container="ctr")
    fill(later, 4, [1])
    res = pd.restore(snap, mode="overwrite")
    assert res.vdisks == ("a",) and image(a) == at_snap
    assert image(later) != bytes(SIZE)  # created after the snapshot: left as it is
    res = pd.restore(snap, mode="clone", prefix="old-")
    assert res.vdisks == ("old-a",) and image(cl.vdisk("old-a")) == at_snap
    assert cl.vdisk("old-a").container == "ctr"
    # the clone is a bare vDisk in the protected container: in the PD from now on
    assert sorted(pd.vdisk_names()) == ["a", "later", "old-a"]


# -- two sites ------------------------------------------------------------------------------

@pytest.fixture
def sites(tmp_path, clock):
    s = Sites(tmp_path, clock, ["france", "canada"])
    s.vstore = {("france", "canada"): {"ctr": "ctr-ca"}, ("canada", "france"): {"ctr-ca": "ctr"}}
    fr = s.open("france")
    fr.create_container("ctr")
    s.close("france")
    ca = s.open("canada")
    ca.create_container("ctr-ca")
    s.close("canada")
    yield s
    s.cleanup()


def _protect(fr):
    """pd-c: VM web (container default) and container ctr (vDisk a), hourly keep 2 + 2."""
    web_os = fr.create_vdisk("web-os", SIZE)
    fill(web_os, 1, [0, 2])
    fr.create_vm("web", vdisks=[web_os], nics=[{"network": "VLAN50"}])
    a = fr.create_vdisk("a", SIZE, container="ctr")
    fill(a, 2, range(0, 64, 5))
    pd = fr.create_protection_domain("pd-c", entities=["web", "container:ctr"])
    pd.add_schedule(every=timedelta(hours=1), keep_local=2, keep_remote={"canada": 2})
    return pd


def _run(sites, fr):
    runs = fr.run_schedules()
    assert runs and all(r.ok for r in runs), runs
    sites.advance(HOUR)
    return runs[-1]


def test_later_vdisk_is_replicated_then_migrate_and_back(sites, clock):
    sites.serve("canada")
    fr = sites.open("france")
    pd = _protect(fr)
    _run(sites, fr)
    b = fr.create_vdisk("b", SIZE, container="ctr")  # created after protection
    fill(b, 3, [1, 7])
    run = _run(sites, fr)
    assert run.replicated == ("canada",)
    assert members(pd.get_snapshot(run.snapshot)) == {"web-os": "vm", "a": "container",
                                                      "b": "container"}
    fill(b, 4, [9])  # after the newest scheduled snapshot: migrate's final one has it
    before = images(fr, ["web-os", "a", "b"])
    res = pd.migrate("canada")
    assert res.epoch == 2 and res.vms == ("web",)
    assert pd.state == "inactive"
    assert all(fr.vdisk(n).read_only for n in ("web-os", "a", "b"))
    sites.serve("france")
    ca = sites.open("canada")
    cpd = ca.protection_domain("pd-c")
    assert cpd.state == "active" and cpd.containers() == ["ctr-ca"]  # the vstore mapping
    assert images(ca, ["web-os", "a", "b"]) == before
    assert {ca.vdisk(n).container for n in ("a", "b")} == {"ctr-ca"}
    assert sorted(cpd.vdisk_names()) == ["a", "b", "web-os"]
    # canada's own later vDisk in its container joins the PD and replicates back to france
    c = ca.create_vdisk("c", SIZE, container="ctr-ca")
    fill(c, 5, [2])
    snap = cpd.snapshot(replicate_to=["france"])
    assert members(snap)["c"] == "container"
    back = images(ca, ["a", "b", "c"])
    cpd.migrate("france")
    sites.serve("canada")
    fr = sites.open("france")
    pd = fr.protection_domain("pd-c")
    assert pd.state == "active" and pd.epoch == 3 and pd.containers() == ["ctr"]
    assert images(fr, ["a", "b", "c"]) == back
    assert fr.vdisk("c").container == "ctr" and not fr.vdisk("c").read_only


def test_activate_with_a_container_and_the_old_owner_returns(sites, clock):
    sites.serve("canada")
    fr = sites.open("france")
    pd = _protect(fr)
    _run(sites, fr)
    b = fr.create_vdisk("b", SIZE, container="ctr")
    fill(b, 3, [4])
    _run(sites, fr)
    newest = pd.snapshots()[-1]
    at_snap = {m.snapshot.vdisk_name: image(m.snapshot) for m in newest.members()}
    assert sorted(at_snap) == ["a", "b", "web-os"]
    fill(fr.vdisk("a"), 8, [0])  # lost with france
    late = fr.create_vdisk("late", SIZE, container="ctr")  # in no PD snapshot yet
    fill(late, 6, [3])
    late_image = image(late)
    sites.close("france")
    sites.stop("canada")
    ca = sites.open("canada")
    res = ca.activate("pd-c")
    assert res.snapshot == newest.name and res.epoch == 2
    assert images(ca, sorted(at_snap)) == at_snap
    cpd = ca.protection_domain("pd-c")
    assert cpd.containers() == ["ctr-ca"] and sorted(cpd.vdisk_names()) == ["a", "b", "web-os"]
    # france returns and learns it was activated elsewhere: the vDisks canada has become
    # replicas; "late", which no PD snapshot holds, stays writable (and unprotected)
    sites.serve("canada")
    fr = sites.open("france")
    result = fr.protection_domain("pd-c").sync_ownership()
    assert result.demoted and result.state == "inactive"
    assert all(fr.vdisk(n).read_only for n in ("a", "b", "web-os"))
    assert not fr.vdisk("late").read_only and image(fr.vdisk("late")) == late_image


def test_adopt_refuses_a_container_protected_at_the_destination(sites, clock):
    ca = sites.open("canada")
    ca.create_vdisk("mine", SIZE, container="ctr-ca")
    ca.create_protection_domain("pd-local", entities=["container:ctr-ca"])
    sites.serve("canada")
    fr = sites.open("france")
    pd = _protect(fr)
    with pytest.raises(InUse, match="container 'ctr-ca' is protected at site 'canada' by "
                                    "protection domain 'pd-local'"):
        pd.migrate("canada")  # refused at step 2, by the destination's check
    assert pd.rollback_migrate() == []  # the VMs were still registered
    assert pd.state == "active" and pd.containers() == ["ctr"]
    assert not fr.vdisk("a").read_only


def test_cli_pd_add_remove_container(tmp_path, capsys):
    from nxstore import Cluster
    from nxstore.cli import main

    path = str(tmp_path / "c")
    Cluster.create(path, block_size=BS, background=False, site_name="france").close()
    assert main(["container", "create", path, "ctr"]) == 0
    assert main(["vdisk", "create", path, "a", str(SIZE), "--container", "ctr"]) == 0
    assert main(["vdisk", "create", path, "f", str(SIZE)]) == 0
    assert main(["pd", "create", path, "pd-c", "f"]) == 0
    assert main(["pd", "add", path, "pd-c", "container:ctr"]) == 0
    assert "added container:ctr" in capsys.readouterr().out
    assert main(["pd", "add", path, "pd-c", "container:nope"]) == 1
    assert "no container 'nope'" in capsys.readouterr().err
    assert main(["pd", "create", path, "pd-d", "container:ctr"]) == 1
    assert "'pd-c'" in capsys.readouterr().err
    assert main(["pd", "show", path, "pd-c", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entities"] == ["f", "container:ctr"]
    assert main(["pd", "snapshot", path, "pd-c", "--name", "s1"]) == 0
    assert main(["pd", "remove", path, "pd-c", "container:ctr"]) == 0
    assert main(["pd", "remove", path, "pd-c", "container:ctr"]) == 1
    capsys.readouterr()
    assert main(["pd", "list", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["entities"] == ["f"]
    with Cluster.open(path, background=False) as c:
        snap = c.protection_domain("pd-c").get_snapshot("s1")
        assert members(snap) == {"f": "vdisk", "a": "container"}
