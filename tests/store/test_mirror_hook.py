"""The engine's write mirror (nxstore.store.mirror): what a vDisk hands its mirror, when,
and the replica side (apply_mirrored_write / apply_mirrored_trim)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nxstore.constants import OPLOG_BYPASS_BYTES
from nxstore.errors import InUse, InvalidArgument, NotFound, OutOfRange, ReadOnly
from nxstore.store.engine import Engine
from nxstore.store.vdisk import VDisk

BS = 4096
DISK = 2 << 20


class Recorder:
    """A WriteMirror that records its calls; `fail` makes write/trim/flush raise it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.fail: Exception | None = None
        self.on_flush = None

    def write(self, vd: VDisk, offset: int, data: memoryview) -> None:
        assert vd._lock._is_owned(), "write must be called under the vDisk's lock"
        self.calls.append(("write", vd.name, offset, bytes(data)))
        if self.fail:
            raise self.fail

    def trim(self, vd: VDisk, offset: int, length: int) -> None:
        assert vd._lock._is_owned()
        self.calls.append(("trim", vd.name, offset, length))
        if self.fail:
            raise self.fail

    def prepare_flush(self, vd: VDisk) -> None:
        self.calls.append(("prepare", vd.name, vd._ctx.oplog.durable_seq))

    def flush(self, vd: VDisk) -> None:
        self.calls.append(("flush", vd.name))
        if self.on_flush:
            self.on_flush(vd)
        if self.fail:
            raise self.fail

    def check_change(self, vd: VDisk, what: str) -> None:
        self.calls.append(("check", vd.name, what))
        raise InUse(f"{vd.name}: {what} refused by the mirror")


@pytest.fixture
def engine(tmp_path):
    e = Engine.create(str(tmp_path / "c"), block_size=BS, background=False)
    yield e
    e.close()


def test_scattered_block_writes_reach_the_mirror_as_runs(engine):
    vd = engine.create_vdisk("vol", DISK)
    rec = Recorder()
    engine.set_mirror("vol", rec)
    rows = np.frombuffer(os.urandom(4 * BS), np.uint8).reshape(4, BS)
    vd.write_blocks(np.array([3, 4, 9, 10]), rows)
    assert rec.calls == [("write", "vol", 3 * BS, rows[:2].tobytes()),
                         ("write", "vol", 9 * BS, rows[2:].tobytes())]
    assert vd.read(3 * BS, 8 * BS) == rows[:2].tobytes() + bytes(4 * BS) + rows[2:].tobytes()


def replica(e: Engine, name: str, size: int = DISK) -> VDisk:
    return e.new_vdisk(name, size, e.container("default").id, parent_layer=0, read_only=True)


def test_both_write_paths_trim_and_flush_reach_the_mirror(engine):
    vd = engine.create_vdisk("vol", DISK)
    rec = Recorder()
    engine.set_mirror("vol", rec)
    small = os.urandom(5000)
    vd.write(100, small)  # OpLog path, unaligned
    big = os.urandom(OPLOG_BYPASS_BYTES + 3 * BS + 17)
    vd.write(BS - 5, big)  # bypass path: logged head and tail, extents in between
    vd.trim(7, 3 * BS)
    assert rec.calls == [("write", "vol", 100, small), ("write", "vol", BS - 5, big),
                         ("trim", "vol", 7, 3 * BS)]
    oplog = engine.ctx.oplog

    def durable_and_unlocked(v: VDisk) -> None:
        assert oplog.durable_seq >= v._last_seq, "mirror.flush before local durability"
        taken = []

        def take() -> None:
            if v._lock.acquire(timeout=5):
                taken.append(True)
                v._lock.release()

        t = threading.Thread(target=take)
        t.start()
        t.join()
        assert taken == [True], "mirror.flush called with the vDisk's lock held"

    rec.on_flush = durable_and_unlocked
    durable = oplog.durable_seq
    vd.flush()
    assert rec.calls[-2:] == [("prepare", "vol", durable), ("flush", "vol")]
    assert oplog.durable_seq > durable  # prepare_flush came before the local sync


def test_mirror_errors_reach_the_caller_and_refusals_change_nothing(engine):
    vd = engine.create_vdisk("vol", DISK)
    snap = vd.snapshot("s")
    rec = Recorder()
    engine.set_mirror("vol", rec)
    with pytest.raises(InUse):
        vd.restore(snap)
    with pytest.raises(InUse):
        vd.resize(2 * DISK)
    assert vd.size == DISK and ("check", "vol", "restore") in rec.calls
    assert ("check", "vol", "resize") in rec.calls
    rec.fail = NotFound("mirror gone")
    with pytest.raises(NotFound, match="mirror gone"):
        vd.write(0, b"x" * 10)
    with pytest.raises(NotFound):
        vd.trim(0, 10)
    with pytest.raises(NotFound):
        vd.flush()
    engine.set_mirror("vol", None)  # removed: nothing is called any more
    n = len(rec.calls)
    vd.write(0, b"y" * 10)
    vd.flush()
    vd.resize(2 * DISK)
    assert len(rec.calls) == n and vd.read(0, 10) == b"y" * 10
    with pytest.raises(NotFound):
        engine.set_mirror("nope", rec)


def test_apply_mirrored_writes_a_read_only_replica(engine):
    rep = replica(engine, "site:vol")
    with pytest.raises(ReadOnly):
        rep.write(0, b"x")
    with pytest.raises(ReadOnly):
        rep.trim(0, 1)
    data = os.urandom(OPLOG_BYPASS_BYTES + BS)
    rep.apply_mirrored_write(0, data)
    rep.apply_mirrored_write(3, b"abc")
    rep.apply_mirrored_trim(BS, 2 * BS + 1)
    expect = bytearray(data)
    expect[3:6] = b"abc"
    expect[BS: 3 * BS + 1] = bytes(2 * BS + 1)
    rep.flush()
    assert rep.read(0, len(expect)) == bytes(expect)
    with pytest.raises(OutOfRange):
        rep.apply_mirrored_write(DISK - 1, b"ab")
    writable = engine.create_vdisk("own", DISK)
    with pytest.raises(InvalidArgument, match="writable"):
        writable.apply_mirrored_write(0, b"x")
    with pytest.raises(InvalidArgument, match="writable"):
        writable.apply_mirrored_trim(0, 1)


def test_mirrored_writes_are_durable_after_flush(tmp_path):
    path = str(tmp_path / "c")
    e = Engine.create(path, block_size=BS, background=False)
    rep = replica(e, "site:vol")
    data = os.urandom(3 * BS + 5)
    rep.apply_mirrored_write(11, data)
    rep.flush()
    e.close()
    with Engine.open(path, background=False) as e2:
        assert e2.vdisk("site:vol").read(11, len(data)) == data


@settings(max_examples=30)
@given(st.lists(st.tuples(st.sampled_from(["write", "trim"]), st.integers(0, DISK - 1),
                          st.sampled_from([1, 700, BS, 3 * BS + 1, OPLOG_BYPASS_BYTES + BS])),
                min_size=1, max_size=25))
def test_replaying_what_the_mirror_saw_rebuilds_the_vdisk(tmp_path_factory, ops):
    """Threads write one vDisk at once; the mirror sees the writes in the vDisk's order:
    applying them in that order to a replica gives the same image."""
    e = Engine.create(str(tmp_path_factory.mktemp("m") / "c"), block_size=BS, background=False)
    try:
        vd = e.create_vdisk("vol", DISK)
        rep = replica(e, "site:vol")
        rec = Recorder()
        e.set_mirror("vol", rec)
        lanes = [ops[i::3] for i in range(3)]

        def run(lane: list[tuple[str, int, int]]) -> None:
            for kind, offset, length in lane:
                length = min(length, DISK - offset)
                if kind == "write":
                    vd.write(offset, np.random.default_rng(offset).bytes(length))
                else:
                    vd.trim(offset, length)

        threads = [threading.Thread(target=run, args=(lane,)) for lane in lanes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for call in rec.calls:
            if call[0] == "write":
                rep.apply_mirrored_write(call[2], call[3])
            else:
                rep.apply_mirrored_trim(call[2], call[3])
        assert rep.read(0, DISK) == vd.read(0, DISK)
    finally:
        e.close()
