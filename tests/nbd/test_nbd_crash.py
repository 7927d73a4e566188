"""SIGKILL of the `nxstore nbd` process and of its writer (qemu-io) mid-write: every write
acknowledged as durable (a FUA write, or any write before a flush that returned) reads back
after the cluster is reopened; nothing else reads as anything but its old or new bytes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

import pytest
from nbd_helpers import READY_TIMEOUT_S, need, start_cli_export

import nxstore

CHUNK = 64 << 10
N = 512
_DONE_RE = re.compile(r"^(?:qemu-io> )*(wrote|read) (\d+)/\d+ bytes at offset (\d+)")


def _pattern(k: int) -> int:
    return k % 250 + 1


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_server_and_writer_mid_write(tmp_path, seed):
    need("qemu-io")
    path = str(tmp_path / "cl")
    with nxstore.Cluster.create(path, block_size=4096, background=False) as c:
        c.create_vdisk("disk", CHUNK * N)
    server = start_cli_export(path, "disk", "--unix", str(tmp_path / "s.sock"))
    writer = subprocess.Popen(["qemu-io", "-f", "raw", server.uri], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    # Writes k = 0..N-1 of pattern k: every 3rd with FUA; after every 5th a flush and then
    # a small read of that chunk, whose reply line says the flush before it returned.
    script = []
    for k in range(N):
        fua = " -f" if k % 3 == 0 else ""
        script.append(f"write{fua} -P {_pattern(k)} {k * CHUNK} {CHUNK}\n")
        if k % 5 == 4:
            script.append(f"flush\nread -P {_pattern(k)} {k * CHUNK} 512\n")
    durable: set[int] = set()
    flushed_through = -1
    enough = threading.Event()
    kill_after = 60 + 80 * seed  # durable acknowledgements before the kill

    def follow() -> None:
        nonlocal flushed_through
        for line in writer.stdout:
            m = _DONE_RE.match(line)
            if not m:
                continue
            k = int(m.group(3)) // CHUNK
            if m.group(1) == "read":
                flushed_through = k
            elif k % 3 == 0:
                durable.add(k)  # FUA: durable once acknowledged
            if len(durable) + flushed_through >= kill_after:
                enough.set()
        enough.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    feeder = threading.Thread(target=lambda: _feed(writer, script), daemon=True)
    feeder.start()
    assert enough.wait(READY_TIMEOUT_S * 2)
    os.kill(server.proc.pid, signal.SIGKILL)
    os.kill(writer.pid, signal.SIGKILL)
    server.kill()
    writer.wait()
    reader.join(READY_TIMEOUT_S)
    assert len(durable) + flushed_through >= kill_after
    survivors = durable | set(range(flushed_through + 1))
    with nxstore.Cluster.open(path, background=False) as c:
        vd = c.vdisk("disk")
        for k in range(N):
            data = vd.read(k * CHUNK, CHUNK)
            if k in survivors:
                assert data == bytes([_pattern(k)]) * CHUNK, f"acknowledged write {k} lost"
            else:
                assert data in (bytes(CHUNK), bytes([_pattern(k)]) * CHUNK), f"chunk {k} torn"
        assert c.scrub() == []


def _feed(writer: subprocess.Popen, script: list[str]) -> None:
    try:
        for line in script:
            writer.stdin.write(line)
            writer.stdin.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass  # killed mid-script
