"""The catalogue's row registry: each layer declares its own tables (register_table), the
on-disk format stays what it was before the layers owned their rows, and a table registered
after a catalogue opened is created at its first use."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, fields, make_dataclass

import pytest

import nxstore
from nxstore.constants import CATALOG_FILE
from nxstore.errors import InvalidArgument
from nxstore.nearsync.rows import LWSEpisodeRow, NearSyncRow
from nxstore.protection.rows import PDScheduleRow, VMRow
from nxstore.replication.rows import RemoteSiteRow, ReplicaRow
from nxstore.store import catalog
from nxstore.store.catalog import Catalog, ContainerRow, register_table, registered_row_types
from nxstore.store.lws import LWSRow

BEFORE = os.path.join(os.path.dirname(__file__), "data", "catalog_before_registry.sql")


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, restored after the test (so test tables leak nowhere)."""
    monkeypatch.setattr(catalog, "_TABLES", dict(catalog._TABLES))
    return catalog._TABLES


def schema(path: str) -> dict[str, str]:
    """{table: the CREATE statement SQLite stores} of the database at `path`."""
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    finally:
        db.close()


def test_every_layer_registers_its_rows():
    names = {t: e.name for t, e in catalog._TABLES.items()}
    assert names[ContainerRow] == "containers" and names[LWSRow] == "lws"
    assert names[RemoteSiteRow] == "remote_sites" and names[ReplicaRow] == "replicas"
    assert names[VMRow] == "vms" and names[PDScheduleRow] == "pd_schedules"
    assert names[NearSyncRow] == "nearsync" and names[LWSEpisodeRow] == "lws_episodes"
    assert set(registered_row_types()) == set(names)


def test_catalogue_from_before_the_registry_opens_and_verifies(tmp_path):
    """A catalogue written when the engine defined every layer's rows: same tables, same
    DDL text, every row's checksum verifies, booleans come back as bool."""
    os.mkdir(tmp_path / "old")
    os.mkdir(tmp_path / "new")
    old = str(tmp_path / "old" / CATALOG_FILE)
    db = sqlite3.connect(old)
    with open(BEFORE) as f:
        db.executescript(f.read())
    db.close()
    old_schema = schema(old)
    # Layers added since (Metro, ...) register tables of their own: those are created,
    # every table of the old catalogue must stay exactly as it was.
    old_types = [t for t in registered_row_types() if catalog._TABLES[t].name in old_schema]
    assert len(old_types) >= 14
    cat = Catalog(old, repair_generation=True)  # the dump has no catalog.gen beside it
    try:
        assert cat.meta()["site_name"] == "a"
        for row_type in old_types:
            (row,) = cat.rows(row_type)  # Corruption if a checksum changed
            for f in fields(row_type):
                if f.type in ("bool", bool):
                    assert getattr(row, f.name) is True, (row_type.__name__, f.name)
    finally:
        cat.close()
    assert {t: sql for t, sql in schema(old).items() if t in old_schema} == old_schema, \
        "opening changed the schema of an existing table"

    new = str(tmp_path / "new" / CATALOG_FILE)
    Catalog(new, create=True).close()
    assert {t: sql for t, sql in schema(new).items() if t in old_schema} == old_schema, \
        "the DDL of a fresh catalogue differs from the old one"


def test_table_registered_after_open_is_created_at_first_use(tmp_path, registry):
    """An engine-only catalogue (no layer above imported yet) gets an upper layer's tables
    when the layer registers them later: at their first use, not "no such table"."""
    upper = {t: e for t, e in registry.items() if not t.__module__.startswith("nxstore.store.")}
    assert VMRow in upper and ReplicaRow in upper and NearSyncRow in upper
    for row_type in upper:
        del registry[row_type]
    path = str(tmp_path / CATALOG_FILE)
    cat = Catalog(path, create=True)
    try:
        assert "vms" not in schema(path) and "lws" in schema(path)
        for row_type, entry in upper.items():  # what importing the rows modules does
            register_table(row_type, entry.name, entry.ddl)
        assert cat.rows(NearSyncRow) == []
        with cat.transaction():
            vm = cat.insert(VMRow(0, "web", "[]", "[]", "{}", "on", "", "", 5.0, 1.0))
        assert cat.rows(VMRow) == [vm]
        assert {"vms", "nearsync"} <= set(schema(path)) and "replicas" not in schema(path)
    finally:
        cat.close()
    cat = Catalog(path)  # reopened with every layer registered: all tables, rows intact
    try:
        assert cat.rows(VMRow) == [vm] and cat.rows(ReplicaRow) == []
        assert {e.name for e in upper.values()} <= set(schema(path))
    finally:
        cat.close()


# made at run time, so `flag`'s type is the class bool, not the string this module's
# `from __future__ import annotations` would make it
LateRow = make_dataclass("LateRow", [("id", int), ("name", str), ("flag", bool)])


LATE_DDL = """CREATE TABLE IF NOT EXISTS test_late (id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT, flag INTEGER, ck INTEGER NOT NULL)"""


def test_first_use_in_a_rolled_back_transaction_creates_it_again(tmp_path, registry):
    cat = Catalog(str(tmp_path / CATALOG_FILE), create=True)
    try:
        register_table(LateRow, "test_late", LATE_DDL)
        with pytest.raises(RuntimeError), cat.transaction():
            cat.insert(LateRow(0, "gone", True))
            raise RuntimeError("roll back")
        assert "test_late" not in schema(cat.path)
        with cat.transaction():
            cat.insert(LateRow(0, "kept", False))
        (row,) = cat.rows(LateRow)
        assert row.name == "kept" and row.flag is False
    finally:
        cat.close()


def test_registering_again_differently_is_an_error(tmp_path, registry):
    register_table(LateRow, "test_late", LATE_DDL)
    register_table(LateRow, "test_late", LATE_DDL)  # the same again: nothing changes
    with pytest.raises(InvalidArgument, match="LateRow is already registered differently"):
        register_table(LateRow, "test_late", LATE_DDL.replace("name TEXT", "name TEXT UNIQUE"))
    with pytest.raises(InvalidArgument, match="VMRow is already registered differently"):
        register_table(VMRow, "test_late", LATE_DDL)

    @dataclass
    class Other:
        id: int

    with pytest.raises(InvalidArgument, match="table 'test_late' already holds LateRow"):
        register_table(Other, "test_late", LATE_DDL)
    with pytest.raises(InvalidArgument, match="CREATE TABLE IF NOT EXISTS other"):
        register_table(Other, "other", LATE_DDL)
    assert Other not in registered_row_types()
    cat = Catalog(str(tmp_path / CATALOG_FILE), create=True)
    try:
        with pytest.raises(InvalidArgument, match="Other is not a registered catalogue row"):
            cat.rows(Other)
    finally:
        cat.close()


def test_scrub_verifies_every_layers_rows(make_cluster):
    """A damaged row of a table an upper layer registered is a scrub problem like any."""
    c = make_cluster()
    vd = c.create_vdisk("v", 1 << 20)
    c.create_vm("web", vdisks=[vd])
    c.add_remote_site("b", "127.0.0.1:1", "s" * 16)
    vd.lws("mark")
    path = c.path
    assert c.scrub() == []
    c.close()
    db = sqlite3.connect(os.path.join(path, CATALOG_FILE))
    for table in ("vms", "remote_sites", "lws"):
        db.execute(f"UPDATE {table} SET name = 'tampered'")
    db.commit()
    db.close()
    c = nxstore.Cluster.open(path, background=False)
    try:
        problems = c.scrub()
    finally:
        c.close()
    for table in ("vms", "remote_sites", "lws"):
        assert any(f"{table} row id 1 fails its checksum" in p for p in problems), problems
