"""Protection domains: entities, consistency groups, PD snapshots, restore, persistence."""

from __future__ import annotations

import json
import threading
import time

import pytest
from pd_helpers import BS, MB, read_block, write_block

from nxstore import PDSnapshot, ProtectionDomain
from nxstore.errors import AlreadyExists, InUse, InvalidArgument, NotFound, NxError
from nxstore.protection.rows import PDSnapshotRow


def _setup(cl):
    """Three VMs (web, app, db) with one vDisk each, plus a bare vDisk 'files'."""
    vms = {}
    for name in ("web", "app", "db"):
        vd = cl.create_vdisk(f"{name}-os", MB)
        write_block(vd, 0, 1)
        vms[name] = cl.create_vm(name, vdisks=[vd], nics=[{"network": "VLAN50"}],
                                 categories={"tier": name})
    files = cl.create_vdisk("files", MB)
    write_block(files, 3, 1)
    return vms, files


def test_entities_belong_to_one_pd(cl):
    vms, files = _setup(cl)
    pd = cl.create_protection_domain("pd-web", entities=[vms["web"], "app", files])
    assert isinstance(pd, ProtectionDomain)
    assert [getattr(e, "name", None) for e in pd.entities()] == ["web", "app", "files"]
    assert pd.state == "active" and pd.owner_site == "france" and pd.epoch == 1
    assert vms["web"].protection_domain == "pd-web"
    with pytest.raises(InUse, match="already protected by protection domain 'pd-web'"):
        cl.create_protection_domain("pd-other", entities=[vms["web"]])
    with pytest.raises(InUse):  # a protected VM's vDisk cannot be protected on its own
        cl.create_protection_domain("pd-other", entities=["web-os"])
    with pytest.raises(InUse):
        pd.add_entities(["files"])
    assert [p.name for p in cl.protection_domains()] == ["pd-web"]  # nothing half-created
    with pytest.raises(InvalidArgument, match="covered twice"):  # a VM and its own vDisk
        cl.create_protection_domain("pd-other", entities=["db", "db-os"])
    with pytest.raises(AlreadyExists):
        cl.create_protection_domain("pd-web")
    with pytest.raises(NotFound):
        cl.create_protection_domain("pd-other", entities=["ghost"])
    with pytest.raises(InvalidArgument):
        cl.create_protection_domain("pd/bad")
    with pytest.raises(InUse):  # a protected bare vDisk cannot join a VM
        cl.create_vm("vm-files", vdisks=["files"])
    pd.remove_entities([vms["web"]])
    other = cl.create_protection_domain("pd-other", entities=["web", "db"])
    assert vms["web"].protection_domain == "pd-other"
    cl.delete_protection_domain("pd-other")
    assert vms["web"].protection_domain is None
    with pytest.raises(NotFound):
        cl.protection_domain("pd-other")
    assert other.name == "pd-other"


def test_consistency_group_rules(cl):
    vms, files = _setup(cl)
    pd = cl.create_protection_domain("pd", entities=list(vms.values()) + [files])
    pd.add_consistency_group("app+db", [vms["app"], vms["db"]])
    assert pd.consistency_groups() == {"app+db": ["app", "db"]}
    with pytest.raises(AlreadyExists):
        pd.add_consistency_group("app+db", [vms["web"]])
    with pytest.raises(InUse, match="already in consistency group"):
        pd.add_consistency_group("g2", [vms["db"]])
    cl.create_vdisk("stray", MB)
    with pytest.raises(NotFound):
        pd.add_consistency_group("g2", ["stray"])
    pd.remove_consistency_group("app+db")
    assert pd.consistency_groups() == {}
    with pytest.raises(NotFound):
        pd.remove_consistency_group("app+db")


def test_pd_snapshot_members_and_names(cl):
    vms, files = _setup(cl)
    pd = cl.create_protection_domain("pd", entities=list(vms.values()) + [files])
    pd.add_consistency_group("cg", [vms["app"], vms["db"]])
    snap = pd.snapshot()
    assert isinstance(snap, PDSnapshot) and snap.consistency == "crash"
    members = {m.snapshot.vdisk_name: m for m in snap.members()}
    assert set(members) == {"web-os", "app-os", "db-os", "files"}
    assert {m.snapshot.name for m in members.values()} == {snap.name}
    assert members["app-os"].cg == "cg" and members["web-os"].cg == ""
    assert members["files"].entity_kind == "vdisk" and members["web-os"].entity_name == "web"
    snap2 = pd.snapshot(name="before-upgrade")
    assert [s.name for s in pd.snapshots()] == [snap.name, "before-upgrade"]
    with pytest.raises(AlreadyExists):
        pd.snapshot(name="before-upgrade")
    with pytest.raises(NotFound, match="no remote site 'canada'"):
        pd.snapshot(replicate_to=["canada"])
    assert len(pd.snapshots()) == 2  # the unknown site was refused before any snapshot
    snap2.delete()
    assert [s.name for s in pd.snapshots()] == [snap.name]
    assert all(len(cl.vdisk(n).snapshots()) == 1 for n in members)
    empty = cl.create_protection_domain("empty")
    with pytest.raises(InvalidArgument, match="protects no vDisks"):
        empty.snapshot()


def test_consistency_group_snapshot_under_concurrent_writers(cl, monkeypatch):
    """Writers bump a counter in block k of vDisks d0, d1, ... d5, in that order. At any
    single point the counters along the chain are non-increasing and d0 - d5 <= 1; a
    CG snapshot must show exactly that (snapshots taken one by one would not: a pause
    after every engine snapshot call widens the window in which writers move on)."""
    from nxstore.protection import pdsnapshot

    original = pdsnapshot.take_snapshots

    def slow_take_snapshots(*args, **kwargs):
        snaps = original(*args, **kwargs)
        time.sleep(0.005)
        return snaps

    monkeypatch.setattr(pdsnapshot, "take_snapshots", slow_take_snapshots)
    vds = [cl.create_vdisk(f"d{i}", MB) for i in range(6)]
    vm = cl.create_vm("vm", vdisks=vds[:3])
    pd = cl.create_protection_domain("pd", entities=[vm, *vds[3:]])
    pd.add_consistency_group("cg", [vm, *vds[3:]])
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        i = 0
        try:
            while not stop.is_set():
                i += 1
                for vd in vds:
                    write_block(vd, k, i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        snaps = [pd.snapshot() for _ in range(10)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    seen = set()
    for snap in snaps:
        by = {m.snapshot.vdisk_name: m.snapshot for m in snap.members()}
        for k in range(2):
            chain = [read_block(by[f"d{i}"], k) for i in range(6)]
            assert chain == sorted(chain, reverse=True) and chain[0] - chain[-1] <= 1, (
                snap.name, k, chain)
            seen.add(chain[0])
    assert len(seen) > 2  # the writers made progress between snapshots


def test_restore_overwrite(cl):
    vms, files = _setup(cl)
    pd = cl.create_protection_domain("pd", entities=[vms["web"], vms["db"], files])
    snap = pd.snapshot()
    write_block(cl.vdisk("web-os"), 0, 99)
    write_block(files, 3, 99)
    write_block(cl.vdisk("app-os"), 0, 99)  # not protected: untouched by the restore
    result = pd.restore(snap, mode="overwrite")
    assert set(result.vms) == {"web", "db"}
    assert set(result.vdisks) == {"web-os", "db-os", "files"}
    assert read_block(cl.vdisk("web-os"), 0) == 1 and read_block(files, 3) == 1
    assert read_block(cl.vdisk("app-os"), 0) == 99
    assert vms["web"].power_state == "off" and vms["db"].power_state == "off"
    assert vms["app"].power_state == "on"
    pd.restore(snap, power_on=True)
    assert vms["web"].power_state == "on"
    with pytest.raises(InvalidArgument):
        pd.restore(snap, mode="sideways")


def test_restore_clone(cl):
    vms, files = _setup(cl)
    pd = cl.create_protection_domain("pd", entities=[vms["web"], files])
    snap = pd.snapshot()
    write_block(cl.vdisk("web-os"), 0, 7)
    result = pd.restore(snap, mode="clone", prefix="restored-")
    assert result.vms == ("restored-web",)
    assert set(result.vdisks) == {"restored-web-os", "restored-files"}
    clone = cl.vm("restored-web")
    assert clone.vdisk_names == ["restored-web-os"]
    assert clone.nics == [{"network": "VLAN50"}] and clone.categories == {"tier": "web"}
    assert clone.power_state == "off" and clone.protection_domain is None
    assert read_block(cl.vdisk("restored-web-os"), 0) == 1
    assert read_block(cl.vdisk("restored-files"), 3) == 1
    assert read_block(cl.vdisk("web-os"), 0) == 7  # original untouched
    assert vms["web"].power_state == "on"
    before = ({v.name for v in cl.vms()}, {v.name for v in cl.vdisks()})
    with pytest.raises(AlreadyExists):
        pd.restore(snap, mode="clone", prefix="restored-")
    assert ({v.name for v in cl.vms()}, {v.name for v in cl.vdisks()}) == before


def test_pd_persists_across_reopen(make_cluster, clock):
    c = make_cluster("p", site_name="france", clock=clock)
    vms, files = _setup(c)
    pd = c.create_protection_domain("pd", entities=[vms["app"], vms["db"], files])
    pd.add_consistency_group("cg", ["app", "db"])
    snap = pd.snapshot()
    c = make_cluster.reopen(c, clock=clock)
    pd = c.protection_domain("pd")
    assert [e.name for e in pd.entities()] == ["app", "db", "files"]
    assert pd.consistency_groups() == {"cg": ["app", "db"]}
    assert [s.name for s in pd.snapshots()] == [snap.name]
    assert read_block(pd.snapshots()[0].members()[0].snapshot, 0) == 1
    assert c.vm("app").protection_domain == "pd"


def test_incomplete_pd_snapshot_is_removed_at_open(make_cluster, clock):
    """A crash between the first vDisk snapshot and the completing commit leaves an
    incomplete row; the next open removes it and the vDisk snapshots it names."""
    c = make_cluster("p", clock=clock)
    vd = c.create_vdisk("a", MB)
    pd = c.create_protection_domain("pd", entities=[vd])
    good = pd.snapshot()
    manifest = [{"kind": "vdisk", "name": "a", "cg": "", "members": [{"vdisk": "a", "size": MB}]}]
    with c._ctx.catalog.transaction():
        c._ctx.catalog.insert(PDSnapshotRow(0, pd.id, "pd.half", clock(), 0, "crash", False,
                                            json.dumps(manifest), "[]"))
    vd.snapshot("pd.half")
    c = make_cluster.reopen(c, clock=clock)
    assert [s.name for s in c.protection_domain("pd").snapshots()] == [good.name]
    assert [s.name for s in c.vdisk("a").snapshots()] == [good.name]


def test_failed_group_snapshot_leaves_nothing(cl):
    a, b = cl.create_vdisk("a", MB), cl.create_vdisk("b", MB)
    pd = cl.create_protection_domain("pd", entities=[a, b])
    b.snapshot("pd.000001")  # the name the PD snapshot will want: b's group fails
    with pytest.raises(AlreadyExists):
        pd.snapshot()
    assert pd.snapshots() == [] and a.snapshots() == []


def test_inactive_pd_takes_no_snapshots(cl):
    vd = cl.create_vdisk("a", MB)
    vd.write(0, b"x" * BS)
    pd = cl.create_protection_domain("pd", entities=[vd])
    assert pd._set_ownership("inactive", "canada", "peer-id") == 2
    with pytest.raises(InUse, match="inactive"):
        pd.snapshot()
    assert pd.owner_site == "canada" and pd.epoch == 2


def test_delete_pd_keeps_or_deletes_snapshots(cl):
    a, b = cl.create_vdisk("a", MB), cl.create_vdisk("b", MB)
    cl.create_protection_domain("p1", entities=[a]).snapshot()
    cl.create_protection_domain("p2", entities=[b]).snapshot()
    cl.delete_protection_domain("p1")
    cl.delete_protection_domain("p2", delete_snapshots=True)
    assert len(a.snapshots()) == 1 and b.snapshots() == []
    assert cl.protection_domains() == []


def test_snapshot_replication_failure_keeps_the_snapshot(cl):
    vd = cl.create_vdisk("a", MB)
    pd = cl.create_protection_domain("pd", entities=[vd])
    cl.add_remote_site("canada", "127.0.0.1:1", "secret" * 3)  # nothing listens there
    with pytest.raises(NxError, match="was taken but replication to canada failed"):
        pd.snapshot(replicate_to=["canada"])
    (snap,) = pd.snapshots()
    assert snap.replicated_to() == []
