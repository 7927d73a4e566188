"""One naming rule for every named thing (nxstore/names.py), through every entry point of the
API and the CLI: arbitrary text either succeeds and reads back by that name, or is refused
with InvalidArgument (one `nxstore: error:` line on the command line); never another
exception. Names an older version stored that break the rule still read and delete."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nxstore
from nxstore.cli import main
from nxstore.errors import AlreadyExists, InvalidArgument, NotFound
from nxstore.names import MAX_NAME_CHARS
from nxstore.store.catalog import SnapshotRow, VDiskRow
from nxstore.store.lws import LWSRow

SECRET = "a shared secret of 32 characters"
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

# Names the issue found accepted, and neighbours of the rule's edges.
REGRESSIONS = ["a/b", "a\0b", " a", "a ", "line\nbreak", "x" * 100_000, "src:db", "a@b", "",
               "\udcff", "tab\there", "\u200bzero-width", "\u2028", "é", "名前", "a b",
               "x" * MAX_NAME_CHARS, "x" * (MAX_NAME_CHARS + 1), "-dash", ".", "..", "a=b"]
NAMES = st.one_of(
    st.sampled_from(REGRESSIONS),
    st.text(st.characters(exclude_categories=()), max_size=12),  # surrogates included
    st.text(" ab@/:\n\0\t\x7f\u00a0", max_size=6),
    st.builds(lambda c, n: c * n, st.sampled_from("ab "), st.integers(MAX_NAME_CHARS - 2,
                                                                      MAX_NAME_CHARS + 2)),
)


def valid(name: str) -> bool:
    """The rule, stated independently of nxstore/names.py."""
    printable = all(
        c == " " or unicodedata.category(c)[0] not in "CZ" for c in name)
    return (0 < len(name) <= MAX_NAME_CHARS and printable and name[0] != " "
            and name[-1] != " " and not set(name) & set("@/:"))


# -- the API ---------------------------------------------------------------------------

@dataclass
class Entry:
    kind: str
    create: Callable[[nxstore.Cluster, str], object]
    names: Callable[[nxstore.Cluster], list[str]]
    delete: Callable[[nxstore.Cluster, str], object] | None


def _pd_snapshot_delete(c: nxstore.Cluster, name: str) -> None:
    c.protection_domain("pd0").get_snapshot(name).delete()


def _promote(c: nxstore.Cluster, name: str) -> None:
    c.create_vdisk("rep", 4096)
    c.make_replica("rep", "0" * 32, "src")
    try:
        c.promote_replica("rep", name)
    except BaseException:
        c.delete_vdisk("rep")
        raise


API = [
    Entry("vDisk", lambda c, n: c.create_vdisk(n, 4096),
          lambda c: [v.name for v in c.vdisks()], lambda c, n: c.delete_vdisk(n)),
    Entry("clone", lambda c, n: c.clone(c.snapshot("snapbase", "s"), n),
          lambda c: [v.name for v in c.vdisks()], lambda c, n: c.delete_vdisk(n)),
    Entry("promoted replica", _promote,
          lambda c: [v.name for v in c.vdisks()], lambda c, n: c.delete_vdisk(n)),
    Entry("snapshot", lambda c, n: c.vdisk("snapbase").snapshot(n),
          lambda c: [s.name for s in c.vdisk("snapbase").snapshots()],
          lambda c, n: c.snapshot("snapbase", n).delete()),
    Entry("snapshot group", lambda c, n: c.snapshot_group([c.vdisk("snapbase")], n),
          lambda c: [s.name for s in c.vdisk("snapbase").snapshots()],
          lambda c, n: c.snapshot("snapbase", n).delete()),
    Entry("container", lambda c, n: c.create_container(n),
          lambda c: [r.name for r in c.containers()], None),
    Entry("site", lambda c, n: c.add_remote_site(n, "127.0.0.1:1", SECRET),
          lambda c: [s.name for s in c.remote_sites()], lambda c, n: c.remove_remote_site(n)),
    Entry("VM", lambda c, n: c.create_vm(n),
          lambda c: [v.name for v in c.vms()], lambda c, n: c.delete_vm(n)),
    Entry("category", lambda c, n: c.create_vm("vmcat", categories={n: "v"}),
          lambda c: [k for v in c.vms() if v.name == "vmcat" for k in v.categories],
          lambda c, n: c.delete_vm("vmcat")),
    Entry("category value", lambda c, n: c.create_vm("vmcat", categories={"k": n}),
          lambda c: [v.categories["k"] for v in c.vms() if v.name == "vmcat"],
          lambda c, n: c.delete_vm("vmcat")),
    Entry("protection domain", lambda c, n: c.create_protection_domain(n),
          lambda c: [p.name for p in c.protection_domains()],
          lambda c, n: c.delete_protection_domain(n)),
    Entry("consistency group",
          lambda c, n: c.protection_domain("pd0").add_consistency_group(n, ["pdbase"]),
          lambda c: list(c.protection_domain("pd0").consistency_groups()),
          lambda c, n: c.protection_domain("pd0").remove_consistency_group(n)),
    Entry("PD snapshot", lambda c, n: c.protection_domain("pd0").snapshot(name=n),
          lambda c: [s.name for s in c.protection_domain("pd0").snapshots()],
          _pd_snapshot_delete),
    Entry("LWS", lambda c, n: c.vdisk("lwsbase").lws(n),
          lambda c: [r.name for r in c._ctx.catalog.rows(LWSRow)], None),
]


@pytest.fixture
def cluster(tmp_path):
    c = nxstore.Cluster.create(str(tmp_path / "c"), block_size=4096, background=False)
    for name in ("snapbase", "pdbase", "lwsbase"):
        c.create_vdisk(name, 1 << 20)
    c.vdisk("snapbase").snapshot("s")
    c.create_protection_domain("pd0", ["pdbase"])
    yield c
    c.close()


def attempt(entry: Entry, c: nxstore.Cluster, name: str, seen: set[str]) -> None:
    """Create a `entry.kind` called `name`: it must succeed and read back iff the name is
    valid (AlreadyExists only for a name made before), then delete it where possible."""
    try:
        entry.create(c, name)
    except InvalidArgument as exc:
        assert not valid(name), f"{entry.kind} {name!r} refused: {exc}"
        assert entry.names(c).count(name) == (name in seen)
        return
    except AlreadyExists:
        assert name in seen, f"{entry.kind} {name!r}: AlreadyExists, never made"
        return
    assert valid(name), f"{entry.kind} {name!r} accepted"
    assert name in entry.names(c)
    if entry.delete is None:
        seen.add(name)
    else:
        entry.delete(c, name)
        assert name not in entry.names(c)


@pytest.mark.parametrize("entry", API, ids=[e.kind for e in API])
def test_api_names_follow_the_rule(cluster, entry):
    seen = set(entry.names(cluster))  # made by the fixture

    @SETTINGS
    @given(NAMES)
    def check(name):
        attempt(entry, cluster, name, seen)

    check()


def test_api_names_survive_reopen(tmp_path):
    path = str(tmp_path / "c")
    c = nxstore.Cluster.create(path, block_size=4096, background=False)
    names = ["é", "名前", "a b", "x" * MAX_NAME_CHARS, "dots.and-dash_ok"]
    for n in names:
        c.create_vdisk(n, 4096).snapshot(n)
    c.close()
    c = nxstore.Cluster.open(path, background=False)
    try:
        assert sorted(v.name for v in c.vdisks()) == sorted(names)
        assert all(c.snapshot(n, n).name == n for n in names)
    finally:
        c.close()


@SETTINGS
@given(NAMES)
def test_site_name_at_create(tmp_path, name):
    path = tempfile.mkdtemp(dir=tmp_path)
    name = name or "c"  # "" (or None): the directory's name
    try:
        c = nxstore.Cluster.create(os.path.join(path, "c"), site_name=name, background=False)
    except InvalidArgument:
        assert not valid(name)
        assert not os.path.exists(os.path.join(path, "c"))
        return
    c.close()
    assert valid(name)
    c = nxstore.Cluster.open(os.path.join(path, "c"), background=False)
    assert c.site_name == name
    c.close()


@SETTINGS
@given(NAMES)
def test_lookups_find_nothing_or_refuse(cluster, name):
    lookups = [
        lambda: cluster.vdisk(name), lambda: cluster.delete_vdisk(name),
        lambda: cluster.snapshot("snapbase", name), lambda: cluster.snapshot(name, "s"),
        lambda: cluster.vm(name), lambda: cluster.delete_vm(name),
        lambda: cluster.protection_domain(name),
        lambda: cluster.delete_protection_domain(name),
        lambda: cluster.remove_remote_site(name),
        lambda: cluster.protection_domain("pd0").get_snapshot(name),
        lambda: cluster.protection_domain("pd0").remove_consistency_group(name),
    ]
    if name in ("snapbase", "pdbase", "lwsbase", "pd0", "s"):
        return  # these exist
    for lookup in lookups:
        with pytest.raises((NotFound, InvalidArgument)):
            lookup()


def test_replica_names_keep_their_colon(cluster):
    """':' is the replicas' (SITE:VDISK): a local vDisk cannot take such a name, so it can
    never block a replica; replicas are still created with it."""
    from nxstore.replication.replica import apply_snapshot

    with pytest.raises(InvalidArgument, match="':'"):
        cluster.create_vdisk("src:db", 4096)
    with pytest.raises(InvalidArgument, match="':'"):
        cluster.clone(cluster.snapshot("snapbase", "s"), "src:db")
    snap = apply_snapshot(cluster, source_cluster="0" * 32, source_site="src", vdisk="db",
                          container="default", snapshot="s1", created_at=0.0, size=4096,
                          base_snapshot=None, indices=[], fingerprints=[])
    assert snap.vdisk_name == "src:db"
    assert cluster.vdisk("src:db").read_only


# -- names stored by an older version --------------------------------------------------

LEGACY = ["src:db", "a/b", " padded ", "y" * 300, "new\nline"]


def _store_legacy_names(path: str) -> None:
    """vDisks and snapshots whose names break today's rule, written straight into the
    catalogue as an older nxstore could have."""
    c = nxstore.Cluster.create(path, block_size=4096, background=False)
    cat = c._ctx.catalog
    for i, name in enumerate(LEGACY):
        vd = c.create_vdisk(f"v{i}", 4096)
        vd.write(0, bytes([i + 1]) * 4096)
        vd.flush()
        vd.snapshot(f"s{i}")
        with cat.transaction():
            row = cat.rows(VDiskRow, "name = ?", (f"v{i}",))[0]
            row.name = name
            cat.update(row)
            (snap,) = cat.rows(SnapshotRow, "vdisk_id = ?", (row.id,))
            snap.name = name
            cat.update(snap)
    c.close()


def test_legacy_names_still_read_and_delete(tmp_path):
    path = str(tmp_path / "c")
    _store_legacy_names(path)
    c = nxstore.Cluster.open(path, background=False)
    try:
        assert sorted(v.name for v in c.vdisks()) == sorted(LEGACY)
        for i, name in enumerate(LEGACY):
            assert c.vdisk(name).read(0, 4096) == bytes([i + 1]) * 4096
            assert c.snapshot(name, name).read(0, 4096) == bytes([i + 1]) * 4096
        c.snapshot(LEGACY[0], LEGACY[0]).delete()
        c.delete_vdisk(LEGACY[0])
        c.delete_vdisk(LEGACY[1], with_snapshots=True)
        assert sorted(v.name for v in c.vdisks()) == sorted(LEGACY[2:])
    finally:
        c.close()


def test_legacy_names_on_the_command_line(tmp_path, capsys):
    path = str(tmp_path / "c")
    _store_legacy_names(path)
    assert main(["vdisk", "list", path]) == 0
    assert "src:db" in capsys.readouterr().out
    assert main(["export", path, "a/b@a/b", str(tmp_path / "img")]) == 0
    assert (tmp_path / "img").read_bytes()[:4096] == bytes([2]) * 4096
    assert main(["snapshot", "delete", path, " padded @ padded "]) == 0
    assert main(["vdisk", "delete", path, " padded "]) == 0
    assert main(["vdisk", "delete", path, "src:db", "--with-snapshots"]) == 0
    capsys.readouterr()
    assert main(["vdisk", "list", path, "--json"]) == 0
    assert " padded " not in capsys.readouterr().out


# -- the command line ------------------------------------------------------------------

def run(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, err.getvalue()


@dataclass
class Command:
    kind: str
    argv: Callable[[str, str], list[str]]  # (cluster path, name) -> arguments
    api: Entry  # how to read the name back and delete it


def _entry(kind: str) -> Entry:
    return next(e for e in API if e.kind == kind)


CLI = [
    Command("vDisk", lambda p, n: ["vdisk", "create", p, n, "4K"], _entry("vDisk")),
    Command("snapshot", lambda p, n: ["snapshot", "create", p, "snapbase", n],
            _entry("snapshot")),
    Command("clone", lambda p, n: ["clone", p, "snapbase@s", n], _entry("clone")),
    Command("container", lambda p, n: ["container", "create", p, n], _entry("container")),
    Command("site", lambda p, n: ["site", "add", p, n, "127.0.0.1:1", "--secret-file",
                                  os.path.join(os.path.dirname(p), "secret")], _entry("site")),
    Command("VM", lambda p, n: ["vm", "create", p, n], _entry("VM")),
    Command("category value", lambda p, n: ["vm", "create", p, "vmcat", "--category", f"k={n}"],
            _entry("category value")),
    Command("protection domain", lambda p, n: ["pd", "create", p, n],
            _entry("protection domain")),
    Command("PD snapshot", lambda p, n: ["pd", "snapshot", p, "pd0", "--name", n],
            _entry("PD snapshot")),
    Command("LWS", lambda p, n: ["lws", p, "lwsbase", "--name", n], _entry("LWS")),
]


@pytest.mark.parametrize("command", CLI, ids=[c.kind for c in CLI])
def test_cli_names_follow_the_rule(tmp_path, command):
    path = str(tmp_path / "c")
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    nxstore.Cluster.create(path, block_size=4096, background=False).close()
    for argv in (["vdisk", "create", path, "snapbase", "1M"], ["snapshot", "create", path,
                 "snapbase@s"], ["vdisk", "create", path, "pdbase", "1M"],
                 ["vdisk", "create", path, "lwsbase", "1M"], ["pd", "create", path, "pd0",
                 "pdbase"]):
        assert run(*argv)[0] == 0
    with nxstore.Cluster.open(path, background=False) as c:
        seen = set(command.api.names(c))  # made above

    @settings(SETTINGS, max_examples=30)
    @given(NAMES)
    def check(name):
        rc, err = run(*command.argv(path, name))
        c = nxstore.Cluster.open(path, background=False)
        try:
            if rc != 0:
                lines = err.splitlines()
                assert len(lines) == 1 and lines[0].startswith("nxstore: error: "), err
                assert "internal error" not in err, err
                # A valid name the shell could pass fails only as a duplicate.
                assert not valid(name) or name.startswith("-") or name in seen, err
                return
            assert valid(name), f"{command.kind} {name!r} accepted"
            assert name in command.api.names(c)
            if command.api.delete is None:
                seen.add(name)
            else:
                command.api.delete(c, name)
        finally:
            c.close()

    check()


def test_undecodable_argv_bytes_are_one_error_line(tmp_path):
    """Bytes that are not UTF-8 reach Python as lone surrogates: one clean error line."""
    path = tmp_path / "c"
    nxstore.Cluster.create(str(path), block_size=4096, background=False).close()
    for args in ([b"vdisk", b"create", bytes(path), b"bad\xff", b"4K"],
                 [b"vdisk", b"delete", bytes(path), b"bad\xff"],
                 [b"vm", b"show", bytes(path), b"\xfe"],
                 [b"pd", b"show", bytes(path), b"\xfe"]):
        proc = subprocess.run([os.fsencode(sys.executable), b"-m", b"nxstore.cli", *args],
                              capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
                              cwd=Path(__file__).parent.parent)
        err = proc.stderr.decode(errors="replace")
        assert proc.returncode == 1, err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("nxstore: error: "), err
        assert "internal error" not in err, err
