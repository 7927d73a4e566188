"""Damaged extent groups, table checkpoints and index files: detected, named, reported."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

import nxstore.store.extent_store as es_mod
from nxstore.constants import EXTENT_TABLE_FILE, INDEX_FILE
from nxstore.errors import Corruption, InvalidArgument
from nxstore.store.extent_group import HEADER_BYTES, group_file_name
from nxstore.store.extent_store import ExtentStore

BS = 4096


def read(store, ids):
    out = np.empty(len(ids) * store.block_size, np.uint8)
    store.read_blocks(np.asarray(ids, np.uint64), out)
    return out


def flip(path, offset, mask=0x01):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(11)
    d = str(tmp_path / "ex")
    s = ExtentStore.open(d, BS, create=True)
    data = rng.integers(0, 256, 6 * BS, dtype=np.uint8)
    data[4 * BS : 5 * BS] = np.frombuffer((b"compress me! " * 400)[:BS], np.uint8)
    ids = s.put_blocks(data)
    assert s.stats()["compressed_extents"] == 1
    s.close()
    return d, data, ids


def reopen(d):
    return ExtentStore.open(d, BS)


@pytest.mark.parametrize("which", ["raw", "compressed"])
def test_flipped_payload_byte(store, which, monkeypatch):
    d, data, ids = store
    monkeypatch.setattr(es_mod, "EXTENT_GROUP_BYTES", 4 * BS)  # group 1 is sealed
    s = reopen(d)
    k = 2 if which == "raw" else 4
    e = int(ids[k])
    off = int(s._table.offset[e])
    flip(os.path.join(d, group_file_name(1)), off + HEADER_BYTES + 5)
    query = np.array([ids[0], 0, e, ids[1]], np.uint64)
    with pytest.raises(Corruption) as ei:
        read(s, query)
    exc = ei.value
    assert exc.extent_id == e and exc.batch_index == 2
    assert group_file_name(1) in str(exc) and f"offset {off}" in str(exc)
    assert (read(s, ids[[0, 1, 3]]) == data.reshape(6, BS)[[0, 1, 3]].reshape(-1)).all()
    problems = s.scrub()
    assert len(problems) == 1 and f"extent {e}" in problems[0]
    # gc leaves a damaged group alone (and says so) instead of copying garbage
    stats = s.gc(ids[[2, 4]])
    assert stats["groups_compacted"] == 0 and any("damaged" in p for p in s.scrub())
    s.close()


@pytest.mark.parametrize("field_offset", [0, 5, 9, 17, 21, 25, 40, 58])
def test_flipped_header_byte(store, field_offset):
    d, data, ids = store
    s = reopen(d)
    e = int(ids[3])
    flip(os.path.join(d, group_file_name(1)), int(s._table.offset[e]) + field_offset)
    with pytest.raises(Corruption) as ei:
        read(s, ids)
    assert ei.value.extent_id == e and ei.value.batch_index == 3
    assert group_file_name(1) in str(ei.value)
    assert any(f"extent {e}" in p for p in s.scrub())
    s.close()


def test_read_error_names_the_extent(store):
    """A run whose preadv fails (the group's cached fd swapped for a directory's:
    EISDIR) fails each extent in it with the OS error, naming the first one the
    batch asked for; the store reads again once the fd is back."""
    d, data, ids = store
    s = reopen(d)
    assert (read(s, ids) == data).all()
    good, s._fds[1] = s._fds[1], os.open(d, os.O_RDONLY)
    with pytest.raises(Corruption, match="Is a directory") as ei:
        read(s, ids[::-1])
    assert ei.value.extent_id == int(ids[-1]) and ei.value.batch_index == 0
    os.close(s._fds[1])
    s._fds[1] = good
    assert (read(s, ids) == data).all()
    s.close()


def test_missing_group(store, caplog):
    d, data, ids = store
    os.unlink(os.path.join(d, group_file_name(1)))
    with caplog.at_level(logging.ERROR):
        s = reopen(d)
    assert "missing" in caplog.text
    with pytest.raises(Corruption, match=group_file_name(1)):
        read(s, ids[:1])
    assert any("missing" in p for p in s.scrub())
    s.close()


def test_table_checkpoint_rebuilt_from_groups(store, caplog):
    d, data, ids = store
    s = reopen(d)
    before = s.stats()
    s.close()
    flip(os.path.join(d, EXTENT_TABLE_FILE), 300)
    with caplog.at_level(logging.WARNING):
        s = reopen(d)
    assert "rebuilding the extent table" in caplog.text
    assert (read(s, ids) == data).all()
    for k in ("extents", "stored_bytes", "compressed_extents", "index_entries"):
        assert s.stats()[k] == before[k]
    assert (s.put_blocks(data) == ids).all()
    # Issue 11: the damage is reported (not silently papered over) until a new checkpoint
    problems = s.scrub()
    assert len(problems) == 1 and "rebuilding the extent table" in problems[0]
    s.close()
    s = reopen(d)
    assert s.scrub() == []
    s.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "stale"])
def test_index_rebuilt_from_table(store, caplog, damage):
    d, data, ids = store
    path = os.path.join(d, INDEX_FILE)
    if damage == "flip":
        flip(path, os.path.getsize(path) - 7)
    elif damage == "truncate":
        os.truncate(path, 60)
    elif damage == "delete":
        os.unlink(path)
    else:  # an index from an older checkpoint
        shutil.copy(path, path + ".old")
        s = reopen(d)
        s.put_blocks(np.full(BS, 7, np.uint8))
        s.close()
        os.replace(path + ".old", path)
    with caplog.at_level(logging.INFO):
        s = reopen(d)
    assert "rebuilt fingerprint index" in caplog.text
    assert (s.put_blocks(data) == ids).all()
    if damage == "stale":
        assert s.stats()["index_entries"] == 7  # includes the later extent
    s.close()


def test_corruption_mid_group_is_reported_not_truncated(tmp_path, caplog):
    rng = np.random.default_rng(12)
    d = str(tmp_path / "ex")
    s = ExtentStore.open(d, BS, create=True)
    data = rng.integers(0, 256, 4 * BS, dtype=np.uint8)
    ids = s.put_blocks(data)
    s.sync()
    for fd in s._fds.values():  # crash: no checkpoint, so open scans the group
        os.close(fd)
    s._fds.clear()
    s._closed = True
    path = os.path.join(d, group_file_name(1))
    size = os.path.getsize(path)
    rec = HEADER_BYTES + BS
    flip(path, rec + 10)  # header of the 2nd record
    flip(path, 2 * rec + HEADER_BYTES + 1)  # payload of the 3rd
    with caplog.at_level(logging.ERROR):
        s = reopen(d)
    assert os.path.getsize(path) == size  # valid data follows: nothing truncated
    assert (read(s, ids[[0, 3]]) == data.reshape(4, BS)[[0, 3]].reshape(-1)).all()
    with pytest.raises(Corruption) as ei:
        read(s, ids[1:2])
    assert ei.value.extent_id == int(ids[1])
    with pytest.raises(Corruption) as ei:
        read(s, ids[2:3])
    assert ei.value.extent_id == int(ids[2]) and group_file_name(1) in str(ei.value)
    problems = s.scrub()
    assert any("unreadable bytes" in p for p in problems)
    assert any(f"extent {int(ids[2])}" in p for p in problems)
    assert s.put_blocks(data[2 * BS : 3 * BS])[0] != ids[2]  # no dedup onto bad data
    s.close()


def test_wrong_block_size_never_truncates(store):
    d, data, ids = store
    os.unlink(os.path.join(d, EXTENT_TABLE_FILE))
    size = os.path.getsize(os.path.join(d, group_file_name(1)))
    with pytest.raises(InvalidArgument):
        ExtentStore.open(d, 2 * BS)
    assert os.path.getsize(os.path.join(d, group_file_name(1))) == size
    s = reopen(d)
    assert (read(s, ids) == data).all()
    s.close()
