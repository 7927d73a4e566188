"""OpLog recovery: torn tails, flipped bytes, salvage, format versions, kill -9."""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from nxstore.errors import Corruption, FormatError
from nxstore.store.oplog import OpLog
from nxstore.store.oplog_record import (
    RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
    encode_segment_header,
)


def _payload(seq: int, n: int = 64) -> bytes:
    return (seq.to_bytes(8, "little") * (n // 8 + 1))[:n]


def _make(d, n=10, segment_bytes=1 << 20, size=64, unsynced=0) -> list[str]:
    """A log of n records, all synced but the last `unsynced` (written out at close only)."""
    with OpLog(d, segment_bytes=segment_bytes) as lg:
        for i in range(1, n + 1):
            lg.append_write(i, i * 10, _payload(i, size))
            if i == n - unsynced:
                lg.sync()
        return lg.segment_paths


def _record_offset(k: int, size=64) -> int:
    """Byte offset of the k-th record (0-based) of a segment of equal-size records."""
    return SEGMENT_HEADER_BYTES + k * (RECORD_HEADER_BYTES + size)


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def _seqs(d, **kw):
    with OpLog(d, **kw) as lg:
        recs = list(lg.records())
        assert all(r.payload == _payload(r.seq, len(r.payload)) for r in recs)
        return [r.seq for r in recs]


def test_torn_tail_every_offset(tmp_path, caplog):
    d = tmp_path / "log"
    (seg,) = _make(d, n=5, unsynced=1)
    with open(seg, "rb") as f:
        original = f.read()
    start = _record_offset(4)
    assert len(original) == _record_offset(5)
    caplog.set_level(logging.INFO, logger="nxstore.store.oplog")
    for cut in range(start, len(original)):
        with open(seg, "wb") as f:
            f.write(original[:cut])
        with OpLog(d) as lg:
            assert [r.seq for r in lg.records()] == [1, 2, 3, 4]
            assert lg.last_seq == 4 and lg.salvaged is None
            assert os.path.getsize(seg) == start  # cut durably
            assert lg.append_marker(0, b"again") == 5  # the dropped seq is reused: it never was
    assert "torn tail" in caplog.text


def test_bad_checksum_in_last_record_is_a_torn_tail(tmp_path):
    d = tmp_path / "log"
    (seg,) = _make(d, n=5, unsynced=1)
    _flip(seg, _record_offset(4) + RECORD_HEADER_BYTES + 10)  # payload byte of the last record
    assert _seqs(d) == [1, 2, 3, 4]


@pytest.mark.parametrize("cut", [1, 8, 48, 64 + RECORD_HEADER_BYTES])  # the last record is 112 bytes
def test_cutting_a_synced_tail_is_corruption(tmp_path, cut):
    """Issue 11: a clean close leaves the last record synced; cutting even one byte of it
    is damage (the watermark says it was acknowledged), never a torn tail."""
    d = tmp_path / "log"
    (seg,) = _make(d, n=5)
    size = os.path.getsize(seg)
    os.truncate(seg, size - cut)
    with pytest.raises(Corruption, match=os.path.basename(seg)) as info:
        OpLog(d)
    assert "synced" in str(info.value)
    with OpLog(d, salvage=True) as lg:
        assert lg.salvaged is not None and lg.salvaged.acknowledged_lost
        assert lg.last_seq == 4  # the cut record (seq 5) is what salvage says it lost
    assert _seqs(d) == [1, 2, 3, 4]


def test_flipped_byte_in_last_synced_record_is_corruption(tmp_path):
    d = tmp_path / "log"
    (seg,) = _make(d, n=5)
    _flip(seg, _record_offset(4) + RECORD_HEADER_BYTES + 10)
    with pytest.raises(Corruption, match=f"at byte {_record_offset(4)}"):
        OpLog(d)


def test_salvage_lists_the_intact_records_it_drops(tmp_path):
    d = tmp_path / "log"
    (seg,) = _make(d, n=6)
    _flip(seg, _record_offset(2) + 5)
    with OpLog(d, salvage=True) as lg:
        lost = lg.salvaged.lost
        assert [r.seq for r in lost] == [4, 5, 6]
        assert all(r.acknowledged and r.type == "WRITE" for r in lost)
        assert [(r.vdisk_id, r.offset, r.length) for r in lost] == [(i, i * 10, 64) for i in (4, 5, 6)]


def test_damaged_watermark_slot_is_harmless(tmp_path):
    d = tmp_path / "log"
    (seg,) = _make(d, n=5)
    _flip(seg, 35)  # inside the watermark slot
    with OpLog(d) as lg:
        assert [r.seq for r in lg.records()] == [1, 2, 3, 4, 5]
        assert lg.problems and "watermark" in lg.problems[0]
    with OpLog(d) as lg:  # rewritten at open
        assert not lg.problems


def test_damaged_watermark_with_a_zeroed_tail_is_damage(tmp_path):
    """Slot and last records zeroed: not a crash (the slot is never torn), so the log is
    refused, and salvage reports what it cut instead of cutting silently."""
    d = tmp_path / "log"
    (seg,) = _make(d, n=5)
    with open(seg, "rb") as f:
        data = f.read()
    cut = _record_offset(3)
    with open(seg, "wb") as f:
        f.write(data[:32] + bytes(16) + data[48:cut] + bytes(len(data) - cut))
    with pytest.raises(Corruption, match="watermark is unreadable"):
        OpLog(d)
    with OpLog(d, salvage=True) as lg:
        assert [r.seq for r in lg.records()] == [1, 2, 3]
        assert lg.salvaged is not None and lg.salvaged.offset == cut


def test_zero_filled_tail_is_torn(tmp_path):
    d = tmp_path / "log"
    (seg,) = _make(d, n=3)
    with open(seg, "ab") as f:
        f.write(bytes(5000))
    assert _seqs(d) == [1, 2, 3]


@pytest.mark.parametrize("where", [5, RECORD_HEADER_BYTES + 3, 12])  # header, payload, seq field
def test_flipped_byte_in_middle_record(tmp_path, where):
    d = tmp_path / "log"
    (seg,) = _make(d, n=6)
    bad = _record_offset(2)
    _flip(seg, bad + where)
    with pytest.raises(Corruption) as info:
        OpLog(d)
    assert os.path.basename(seg) in str(info.value)
    assert f"byte {bad}" in str(info.value)
    # reading back through records() of a live log also refuses it... after salvage:
    with OpLog(d, salvage=True) as lg:
        assert [r.seq for r in lg.records()] == [1, 2]
        assert lg.salvaged is not None
        assert lg.salvaged.path == str(seg) and lg.salvaged.offset == bad
        assert lg.salvaged.last_kept_seq == 2
        assert lg.append_write(0, 0, _payload(3)) == 3
    assert _seqs(d) == [1, 2, 3]


def test_flipped_byte_in_older_segment_even_last_record(tmp_path):
    d = tmp_path / "log"
    segs = _make(d, n=30, segment_bytes=600)
    assert len(segs) >= 4
    with open(segs[1], "rb") as f:
        size = len(f.read())
    _flip(segs[1], size - 1)  # last record of a non-newest segment: not a torn tail
    with pytest.raises(Corruption, match=os.path.basename(segs[1])):
        OpLog(d, segment_bytes=600)
    with OpLog(d, segment_bytes=600, salvage=True) as lg:
        s = lg.salvaged
        assert s.path == segs[1] and s.dropped_segments == tuple(segs[2:])
        assert all(not os.path.exists(p) for p in segs[2:])
        kept = [r.seq for r in lg.records()]
        assert kept == list(range(1, s.last_kept_seq + 1))
        assert lg.last_seq == s.last_kept_seq


def test_flipped_byte_in_segment_header(tmp_path):
    d = tmp_path / "log"
    segs = _make(d, n=30, segment_bytes=600)
    _flip(segs[2], 17)  # the first-seq field
    with pytest.raises(Corruption, match=os.path.basename(segs[2])):
        OpLog(d, segment_bytes=600)
    with OpLog(d, segment_bytes=600, salvage=True) as lg:
        assert lg.salvaged.dropped_segments[0] == segs[2]
        assert lg.segment_paths[:2] == segs[:2]
        kept = [r.seq for r in lg.records()]
        assert kept == list(range(1, lg.last_seq + 1)) and len(kept) < 30


def test_missing_middle_segment(tmp_path):
    d = tmp_path / "log"
    segs = _make(d, n=30, segment_bytes=600)
    os.unlink(segs[1])
    with pytest.raises(Corruption, match="gap"):
        OpLog(d, segment_bytes=600)


def test_newer_version_is_format_error(tmp_path):
    d = tmp_path / "log"
    segs = _make(d, n=3)
    with open(segs[0], "r+b") as f:
        f.write(encode_segment_header(1, version=3))
    with pytest.raises(FormatError, match="version 3"):
        OpLog(d)
    with pytest.raises(FormatError):  # salvage does not touch what it cannot read
        OpLog(d, salvage=True)
    with open(segs[0], "r+b") as f:
        f.write(b"NOTOPLOG")
    with pytest.raises(FormatError):
        OpLog(d)


def test_records_detects_corruption_after_open(tmp_path):
    d = tmp_path / "log"
    (seg,) = _make(d, n=6)
    with OpLog(d) as lg:
        _flip(seg, _record_offset(3) + RECORD_HEADER_BYTES + 1)
        it = lg.records()
        assert [next(it).seq for _ in range(3)] == [1, 2, 3]
        with pytest.raises(Corruption, match=f"byte {_record_offset(3)}"):
            next(it)


def test_leftover_tmp_segment_is_removed(tmp_path):
    d = tmp_path / "log"
    _make(d, n=3)
    tmp = d / "oplog-00000000000000000004.seg.tmp"
    tmp.write_bytes(b"NXOPL")
    assert _seqs(d) == [1, 2, 3]
    assert not tmp.exists()


_CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from nxstore.store.oplog import OpLog
    lg = OpLog(sys.argv[1], segment_bytes=256 * 1024)
    out = sys.stdout
    while True:
        for _ in range(int.from_bytes(os.urandom(1), "little") % 32 + 1):
            seq = lg.last_seq + 1
            n = 16 + seq % 3000
            got = lg.append_write(seq % 7, seq, (seq.to_bytes(8, "little") * (n // 8 + 1))[:n])
            assert got == seq
        lg.sync()
        out.write(f"{seq}\\n")
        out.flush()
    """
)


def _wait_ready(child: subprocess.Popen, timeout: float = 60.0) -> int:
    """Block until `child` reports its first synced seq (its imports are done and the OpLog
    is open and writing): the kill delay counts from there, not from the process start,
    which a busy machine can stretch to seconds. Returns that seq."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    line = child.stdout.readline() if ready else b""
    if not line:
        child.kill()
        _, err = child.communicate()
        raise AssertionError(f"writer not ready within {timeout} s (rc {child.returncode}): "
                             + err.decode()[-2000:])
    return int(line)


def test_kill_9_keeps_every_synced_record(tmp_path):
    """SIGKILL a writer at random moments; every seq it reported as synced must be there."""
    d = str(tmp_path / "log")
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__import__("nxstore").__file__)))
    rng = random.Random(1234)
    best = 0
    for rnd in range(1, 13):
        child = subprocess.Popen(
            [sys.executable, str(script), d, pkg_root],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            reported = [_wait_ready(child)]
            time.sleep(rng.uniform(0.0, 0.35))  # a random point of the write/sync loop
        finally:
            child.kill()
        out, err = child.communicate(timeout=60)
        reported += [int(x) for x in out.split()]
        assert child.returncode == -signal.SIGKILL, err.decode()
        best = max(best, reported[-1])
        with OpLog(d, segment_bytes=256 * 1024) as lg:
            assert lg.last_seq >= best
            lo = max(1, best - 500, lg.first_retained_seq)
            seqs = []
            for r in lg.records(lo, best):
                n = 16 + r.seq % 3000
                assert r.payload == (r.seq.to_bytes(8, "little") * (n // 8 + 1))[:n]
                seqs.append(r.seq)
            assert seqs == list(range(lo, best + 1))
            if rnd % 4 == 0:
                lg.release(lg.last_seq - 100)  # keep the directory small
