"""The active site's write gate (nxstore.metro.gate): what writes and flushes do per mode.

The link here is a recorder standing in for the mirror link; the real link, standby and
witness are exercised by tests/metro/test_metro_*.py with real processes.
"""

from __future__ import annotations

import threading

import pytest

from nxstore.errors import InUse, LinkDown, MetroFenced
from nxstore.metro.gate import ALONE, FENCED, HOLD, SYNC, TRACK, WriteGate


class RecordingLink:
    def __init__(self) -> None:
        self.ops: list[tuple] = []
        self.flushes = 0
        self.fail_flush = False
        self.flushed = threading.Event()

    def write(self, vd, offset, data) -> None:  # noqa: ANN001
        self.ops.append(("w", vd, offset, bytes(data)))

    def trim(self, vd, offset, length) -> None:  # noqa: ANN001
        self.ops.append(("t", vd, offset, length))

    def flush(self, timeout: float) -> None:
        self.flushes += 1
        self.flushed.set()
        if self.fail_flush:
            raise LinkDown("no answer")


def gate(mode: str = TRACK, controlled: bool = True) -> WriteGate:
    g = WriteGate("pd", flush_timeout=1.0)
    g.controlled = controlled
    g.set_mode(mode)
    return g


def test_alone_acknowledges_locally_and_mirrors_nothing() -> None:
    g = gate(ALONE)
    g.write("vd", 0, memoryview(b"x"))
    g.flush("vd")


def test_sync_forwards_in_order_and_flushes_the_link() -> None:
    g, link = gate(), RecordingLink()
    g.hold()
    g.start(link)
    g.write("a", 0, memoryview(b"1"))
    g.trim("a", 4096, 4096)
    g.flush("a")
    assert link.ops == [("w", "a", 0, b"1"), ("t", "a", 4096, 4096)]
    assert link.flushes == 1 and g.last_sync_flush > 0


def test_held_writes_go_first_when_the_stream_starts() -> None:
    g, link = gate(), RecordingLink()
    g.hold()
    buf = bytearray(b"old")
    g.write("a", 0, memoryview(buf))
    buf[:] = b"new"  # the caller reuses its buffer: the gate kept a copy
    g.trim("b", 0, 512)
    done = threading.Event()
    t = threading.Thread(target=lambda: (g.flush("a"), done.set()))
    t.start()
    assert not done.wait(0.2)  # a flush waits while writes are held
    g.start(link)
    g.write("a", 8, memoryview(b"later"))
    t.join(5)
    assert done.is_set()
    assert link.ops[:2] == [("w", "a", 0, b"old"), ("t", "b", 0, 512)]
    assert link.ops[2] == ("w", "a", 8, b"later")


def test_a_failed_link_makes_flushes_wait_until_a_break() -> None:
    g, link = gate(), RecordingLink()
    g.hold()
    g.start(link)
    link.fail_flush = True
    result: list[BaseException | None] = []

    def flusher() -> None:
        try:
            g.flush("a")
            result.append(None)
        except BaseException as exc:  # noqa: BLE001
            result.append(exc)

    t = threading.Thread(target=flusher)
    t.start()
    assert link.flushed.wait(5)
    assert g.waiting_since() is not None
    t.join(0.3)
    assert t.is_alive() and g.mode == TRACK  # stalled: never a false acknowledgement
    g.set_mode(ALONE)  # the witness granted the break
    t.join(5)
    assert result == [None] and g.waiting_since() is None


def test_fenced_refuses_writes_and_flushes() -> None:
    g = gate()
    waiting: list[BaseException] = []
    t = threading.Thread(target=lambda: waiting.append(pytest.raises(MetroFenced, g.flush, "a")))
    t.start()
    g.set_mode(FENCED, "site b is active in epoch 3")
    t.join(5)
    assert waiting
    with pytest.raises(MetroFenced, match="epoch 3"):
        g.write("a", 0, memoryview(b"x"))


def test_without_a_metro_thread_a_flush_that_must_wait_fails_at_once() -> None:
    with pytest.raises(LinkDown, match="nxstore serve"):
        gate(TRACK, controlled=False).flush("a")


def test_restore_and_resize_are_refused_while_mirrored() -> None:
    class VD:
        name = "db"

    with pytest.raises(InUse, match="Metro"):
        gate(SYNC).check_change(VD(), "restore")


def test_modes_are_the_documented_ones() -> None:
    assert {SYNC, HOLD, TRACK, ALONE, FENCED} == {"sync", "hold", "track", "alone", "fenced"}
