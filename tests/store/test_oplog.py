"""OpLog: round trips, seq space, group commit, release and back-pressure, model test."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nxstore.errors import ClosedError, InvalidArgument
from nxstore.store import oplog as oplog_mod
from nxstore.store.oplog import OpLog, Record, RecordType
from nxstore.store.oplog_record import RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES


def _payload(seq: int, n: int = 100) -> bytes:
    return (seq.to_bytes(8, "little") * (n // 8 + 1))[:n]


def test_round_trip_all_types(tmp_path):
    ids = np.array([7, 0, 2**64 - 1, 42], dtype=np.uint64)
    with OpLog(tmp_path / "log") as lg:
        s1 = lg.append_write(3, 4096, b"hello")
        s2 = lg.append_trim(3, 8192, 1 << 40)
        s3 = lg.append_map(4, 17, ids)
        s4 = lg.append_marker(0, b"lws-1:[3,4]")
        s5 = lg.append_write(5, 0, memoryview(np.arange(4, dtype=np.uint32)))
        s6 = lg.append_write(5, 1, bytearray(b""))
        assert [s1, s2, s3, s4, s5, s6] == [1, 2, 3, 4, 5, 6]
        expected = [
            Record(1, RecordType.WRITE, 3, 4096, 5, b"hello"),
            Record(2, RecordType.TRIM, 3, 8192, 1 << 40, b""),
            Record(3, RecordType.MAP, 4, 17, 4, ids.astype("<u8").tobytes()),
            Record(4, RecordType.MARKER, 0, 0, 0, b"lws-1:[3,4]"),
            Record(5, RecordType.WRITE, 5, 0, 16, np.arange(4, dtype=np.uint32).tobytes()),
            Record(6, RecordType.WRITE, 5, 1, 0, b""),
        ]
        assert list(lg.records()) == expected  # from the in-memory buffer
        lg.sync()
        assert lg.durable_seq == 6
        assert list(lg.records()) == expected  # from the file
    with OpLog(tmp_path / "log") as lg:
        got = list(lg.records())
        assert got == expected
        assert got[2].extent_ids().tolist() == ids.tolist()
        assert lg.last_seq == lg.durable_seq == 6


def test_bad_arguments(tmp_path):
    with OpLog(tmp_path) as lg:
        with pytest.raises(InvalidArgument):
            lg.append_write(-1, 0, b"x")
        with pytest.raises(InvalidArgument):
            lg.append_trim(1, 2**64, 1)
        with pytest.raises(InvalidArgument):
            lg.append_map(1, 0, np.array([[1, 2]]))
        with pytest.raises(InvalidArgument):
            lg.append_map(1, 0, np.array([-1]))
        assert lg.last_seq == 0
    with pytest.raises(InvalidArgument):
        OpLog(tmp_path, segment_bytes=0)


def test_closed(tmp_path):
    lg = OpLog(tmp_path)
    lg.append_write(1, 0, b"x")
    lg.close()
    lg.close()  # idempotent
    for call in (
        lambda: lg.append_write(1, 0, b"x"),
        lambda: lg.sync(),
        lambda: list(lg.records()),
        lambda: lg.release(1),
        lambda: lg.wait_for_space(1),
    ):
        with pytest.raises(ClosedError):
            call()


def test_seq_continues_after_reopen(tmp_path):
    d = tmp_path / "log"
    with OpLog(d, segment_bytes=1000) as lg:
        for i in range(20):
            lg.append_write(1, i, _payload(i))
        lg.sync()
    with OpLog(d, segment_bytes=1000) as lg:
        assert lg.last_seq == 20
        assert lg.append_marker(0, b"m") == 21
        lg.sync()
        lg.release(21)  # everything: even the active segment goes
        assert lg.first_retained_seq == 22
        assert lg.bytes_used == SEGMENT_HEADER_BYTES
    with OpLog(d, segment_bytes=1000) as lg:
        assert lg.last_seq == 21
        assert list(lg.records()) == []
        assert lg.append_trim(1, 0, 1) == 22


def test_records_range_across_segments(tmp_path):
    with OpLog(tmp_path, segment_bytes=700) as lg:
        for i in range(1, 101):
            assert lg.append_write(i % 3, i * 100, _payload(i)) == i
            if i % 7 == 0:
                lg.sync()
        assert len(lg.segment_paths) > 10
        assert [r.seq for r in lg.records(33, 71)] == list(range(33, 72))
        assert [r.seq for r in lg.records(95)] == list(range(95, 101))  # file + buffer
        assert [r.seq for r in lg.records(200)] == []
        assert [r.seq for r in lg.records(to_seq=3)] == [1, 2, 3]
        for r in lg.records(50, 60):
            assert r.payload == _payload(r.seq) and r.offset == r.seq * 100
        # a snapshot iterator survives a release of the segments it reads
        it = lg.records(10, 40)
        lg.sync()
        lg.release(60)
        assert lg.first_retained_seq > 10
        assert [r.seq for r in it] == list(range(10, 41))
        assert [r.seq for r in lg.records(10, 70)][-1] == 70


def test_records_start_at_the_sparse_index(tmp_path, monkeypatch):
    """records(from_seq) starts within one index stride of from_seq (appended, written out,
    in the buffer, recovered at open), and returns exactly what a full walk does."""
    from nxstore.store import oplog_record

    stride = 2_000
    monkeypatch.setattr(oplog_record, "OPLOG_INDEX_STRIDE_BYTES", stride)
    starts: list[int] = []  # file offset each walk starts at (segment file or buffer)
    walk_file, walk_bytes = oplog_record.iter_file, oplog_record.iter_bytes

    def spy_file(f, path, start, end, lo, hi):
        starts.append(start)
        return walk_file(f, path, start, end, lo, hi)

    def spy_bytes(data, base, name, lo, hi):
        starts.append(base)
        return walk_bytes(data, base, name, lo, hi)

    monkeypatch.setattr(oplog_record, "iter_file", spy_file)
    monkeypatch.setattr(oplog_record, "iter_bytes", spy_bytes)
    rec = RECORD_HEADER_BYTES + 100
    for reopen in (False, True):
        with OpLog(tmp_path / "log", segment_bytes=40_000) as lg:
            if not reopen:
                for i in range(1, 1001):
                    lg.append_write(1, i, _payload(i))
                    if i % 50 == 7:
                        lg.sync()
                assert lg.durable_seq < lg.last_seq  # the newest records are still buffered
            full = list(lg.records())
            assert [r.seq for r in full] == list(range(1, 1001)) and len(lg.segment_paths) > 3
            for lo in (1, 2, 117, 333, 334, 499, 990, 1000):
                starts.clear()
                assert list(lg.records(lo, lo + 40)) == full[lo - 1:lo + 40]
                seg_first = max(int(os.path.basename(p)[6:26]) for p in lg.segment_paths
                                if int(os.path.basename(p)[6:26]) <= lo)
                # the walk starts at most one stride (+ one record) before the wanted record
                wanted = SEGMENT_HEADER_BYTES + (lo - seg_first) * rec
                assert 0 <= wanted - starts[0] <= stride + rec, (lo, starts)


def test_big_appends_write_out_early_and_rotate(tmp_path):
    data = os.urandom(300_000)
    with OpLog(tmp_path, segment_bytes=2_000_000) as lg:
        for _ in range(10):
            lg.append_write(1, 0, data)
        assert len(lg.segment_paths) == 2  # rotated once past 2 MB
        assert lg.durable_seq >= 6  # rotation synced the old segment
        assert all(r.payload == data for r in lg.records())
        used = lg.bytes_used
        assert used == sum(os.path.getsize(p) for p in lg.segment_paths) + len(lg._buf)
        assert used >= 10 * (300_000 + RECORD_HEADER_BYTES)


class _CountingSync:
    def __init__(self, real):
        self.real = real
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, fd):
        with self.lock:
            self.calls += 1
        time.sleep(0.002)  # make the window for group commit visible on a fast disk
        self.real(fd)


def test_group_commit(tmp_path, monkeypatch):
    d = tmp_path / "log"
    lg = OpLog(d)
    counter = _CountingSync(os.fdatasync)
    monkeypatch.setattr(oplog_mod.os, "fdatasync", counter)
    n_threads, per_thread = 16, 20
    synced: list[int] = []
    synced_lock = threading.Lock()
    barrier = threading.Barrier(n_threads)

    def worker(t):
        barrier.wait()
        for i in range(per_thread):
            seq = lg.append_write(t, i, _payload(t * 1000 + i))
            lg.sync(seq)
            assert lg.durable_seq >= seq
            with synced_lock:
                synced.append((seq, t * 1000 + i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    callers = n_threads * per_thread
    assert len(synced) == callers
    assert counter.calls < callers / 2, counter.calls
    calls = counter.calls
    lg.sync()  # already durable: no fdatasync
    lg.sync(3)
    assert counter.calls == calls
    monkeypatch.undo()
    # simulate a crash: copy the files without closing (the buffer is empty anyway)
    shutil.copytree(d, tmp_path / "copy")
    lg.close()
    with OpLog(tmp_path / "copy") as lg2:
        got = {r.seq: r.payload for r in lg2.records()}
    for seq, key in synced:
        assert got[seq] == _payload(key)


def test_release_deletes_exactly_released_segments(tmp_path):
    with OpLog(tmp_path, segment_bytes=1000) as lg:
        for i in range(1, 41):
            lg.append_write(1, 0, _payload(i, 200))
        lg.sync()
        segs = lg.segment_paths
        firsts = [int(os.path.basename(p)[6:26]) for p in segs]
        # release up to the middle of segment 3: segments 0..1 go (their last seq <= upto)
        upto = firsts[3] - 1 + 1  # first record of segment 3 released, the rest not
        lg.release(upto)
        assert lg.segment_paths == segs[3:]
        assert [os.path.exists(p) for p in segs] == [False] * 3 + [True] * (len(segs) - 3)
        assert lg.first_retained_seq == firsts[3]
        lg.release(upto)  # idempotent
        assert lg.segment_paths == segs[3:]
        assert [r.seq for r in lg.records()][0] == firsts[3]


def test_wait_for_space_unblocked_by_release(tmp_path):
    lg = OpLog(tmp_path, segment_bytes=4096, cap_bytes=16384)
    kicked = threading.Event()
    lg.on_pressure = kicked.set
    for i in range(1, 80):
        lg.append_write(1, 0, _payload(i, 200))
        if lg.bytes_used > 16384 - 1000:
            break
    lg.sync()
    assert not lg.wait_for_space(2000, timeout=0.05)  # over the cap: times out
    assert kicked.is_set()
    kicked.clear()
    result = []
    waiter = threading.Thread(target=lambda: result.append(lg.wait_for_space(2000, timeout=10)))
    waiter.start()
    assert kicked.wait(5)  # the waiter asked for a drain
    time.sleep(0.05)
    assert waiter.is_alive() and not result
    lg.release(lg.last_seq // 2)
    waiter.join(5)
    assert result == [True]
    assert lg.bytes_used + 2000 <= 16384
    assert lg.wait_for_space(10**9, timeout=0) is False
    lg.release(lg.last_seq)
    assert lg.wait_for_space(10**9, timeout=0) is True  # nothing retained: never blocks
    lg.close()


def test_close_wakes_space_waiter(tmp_path):
    lg = OpLog(tmp_path, cap_bytes=1000)
    lg.append_write(1, 0, b"x" * 2000)
    errors = []

    def wait():
        try:
            lg.wait_for_space(10)
        except ClosedError as e:
            errors.append(e)

    th = threading.Thread(target=wait)
    th.start()
    time.sleep(0.05)
    lg.close()
    th.join(5)
    assert len(errors) == 1


# --- model test ---------------------------------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 600)),
        st.tuples(st.just("sync"), st.just(0)),
        st.tuples(st.just("release"), st.integers(0, 100)),
        st.tuples(st.just("reopen"), st.just(0)),
        st.tuples(st.just("crash"), st.integers(0, 10_000)),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_ops)
def test_model(tmp_path_factory, ops):
    """Random append/sync/release/reopen/crash against a list model.

    After a crash (process death + loss of unsynced page-cache data beyond a random point),
    every synced record survives, and what survives is a prefix of what was appended.
    """
    base = tmp_path_factory.mktemp("model")
    d = str(base / "log")
    kw = {"segment_bytes": 1500}
    lg = OpLog(d, **kw)
    model: dict[int, bytes] = {}  # seq -> payload of every record that may exist
    durable = 0  # every seq <= this must exist
    released = 0
    gen = 0
    for op, arg in ops:
        if op == "append":
            data = os.urandom(arg)
            before = lg.last_seq
            seq = lg.append_write(1, arg, data)
            assert seq == before + 1 == lg.last_seq
            model[seq] = data
        elif op == "sync":
            lg.sync()
            durable = lg.last_seq
        elif op == "release":
            upto = min(arg, lg.last_seq)
            lg.release(upto)
            released = max(released, upto)
        elif op == "reopen":
            lg.close()  # writes the buffer: nothing lost
            lg = OpLog(d, **kw)
            durable = lg.last_seq
        else:  # crash: copy the files as a killed process leaves them, cut unsynced bytes
            gen += 1
            copy = str(base / f"crash{gen}")
            if arg % 2:  # sometimes the buffer had been written out
                with lg._lock:
                    lg._write_buffer_locked()
            shutil.copytree(d, copy)
            active = os.path.join(copy, os.path.basename(lg.segment_paths[-1]))
            size = os.path.getsize(active)
            cut = lg._durable_size + arg % (size - lg._durable_size + 1)
            os.truncate(active, cut)
            lg.close()
            d = copy
            lg = OpLog(d, **kw)
            assert lg.last_seq >= durable
            for s in [s for s in model if s > lg.last_seq]:
                del model[s]
            durable = lg.last_seq
        got = {r.seq: r.payload for r in lg.records()}
        first = lg.first_retained_seq
        assert first <= released + 1 or first == lg.last_seq + 1
        for s, data in model.items():
            if first <= s <= lg.last_seq:
                assert got[s] == data
        assert sorted(got) == list(range(first, lg.last_seq + 1))
    lg.close()
