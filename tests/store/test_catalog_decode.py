"""Damaged text in the catalogue (issue 11, item 8): bytes that are not UTF-8 made
sqlite3 raise UnicodeDecodeError (from the schema) or a bare decode error; both are
Corruption naming the catalogue, and for a row its table and id."""

from __future__ import annotations

import os

import pytest

import nxstore
from nxstore import errors


def _damage(path: str, needle: bytes, at: int) -> None:
    """Replace byte `at` of every `needle` in the catalogue file (table rows and index
    entries) by 0x93, which is never UTF-8 on its own."""
    db = os.path.join(path, "catalog.db")
    with open(db, "rb") as f:
        data = bytearray(f.read())
    i = data.find(needle)
    assert i >= 0, needle
    while i >= 0:
        data[i + at] = 0x93
        i = data.find(needle, i + 1)
    with open(db, "wb") as f:
        f.write(data)


@pytest.fixture
def closed_cluster(tmp_path) -> str:
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, background=False) as c:
        c.create_vdisk("first-disk", 1 << 20)
        c.create_vdisk("second-disk", 1 << 20)
    return path  # closed: SQLite has checkpointed everything into catalog.db


def test_damaged_schema_text(closed_cluster: str) -> None:
    _damage(closed_cluster, b"sqlite_autoindex_snapshots_1", 20)
    with pytest.raises(errors.Corruption, match="catalog.db: unreadable schema text"):
        nxstore.Cluster.open(closed_cluster, background=False)


def test_damaged_row_text_names_table_and_row(closed_cluster: str) -> None:
    _damage(closed_cluster, b"second-disk", 0)
    with pytest.raises(errors.Corruption, match=r"catalog.db: vdisks row id 2: .*decode"):
        nxstore.Cluster.open(closed_cluster, background=False)


def test_damaged_meta_text(closed_cluster: str) -> None:
    _damage(closed_cluster, b"format_version", 3)
    with pytest.raises(errors.Corruption, match="catalog.db: meta"):
        nxstore.Cluster.open(closed_cluster, background=False)
