"""Holes seen through real clients: `qemu-img map` over an export of a thin vDisk reports
exactly its written ranges as data and the rest as zero holes (written in the OpLog, drained,
trimmed, on a vDisk and on a snapshot), `nbdinfo --map` agrees, and `qemu-img convert` out of
the export gives identical bytes and a sparse file."""

from __future__ import annotations

import json
import os

import numpy as np
from nbd_helpers import MiB, need, run

BS = 4096
SIZE = 64 * MiB
# (offset, length) written with random bytes; the third is trimmed again in the middle
WRITES = [(0, 8192), (5 * MiB + 4096, 3 * BS), (20 * MiB, 2 * MiB), (SIZE - BS, BS)]
TRIM = (20 * MiB + 256 * 1024, 512 * 1024)
DATA = [(0, 8192), (5 * MiB + 4096, 3 * BS), (20 * MiB, 256 * 1024),
        (20 * MiB + 768 * 1024, 2 * MiB - 768 * 1024), (SIZE - BS, BS)]


def _thin_vdisk(cluster, drain: bool):
    vd = cluster.create_vdisk("thin", SIZE)
    rng = np.random.default_rng(3)
    for off, n in WRITES:
        vd.write(off, rng.integers(1, 256, n, dtype=np.uint8).tobytes())
    vd.trim(*TRIM)
    if drain:
        vd.drain()
    return vd


def _qemu_map(uri: str) -> list[tuple[int, int, bool]]:
    """(start, length, data) runs of qemu-img map, neighbours of one kind merged."""
    entries = json.loads(run("qemu-img", "map", "--output=json", "-f", "raw", uri).stdout)
    runs: list[tuple[int, int, bool]] = []
    for e in entries:
        assert e["zero"] != e["data"], e  # data is never called zero here, holes always are
        if runs and runs[-1][2] == e["data"] and runs[-1][0] + runs[-1][1] == e["start"]:
            runs[-1] = (runs[-1][0], runs[-1][1] + e["length"], e["data"])
        else:
            runs.append((e["start"], e["length"], e["data"]))
    return runs


def _expected() -> list[tuple[int, int, bool]]:
    runs, pos = [], 0
    for off, n in DATA:
        if off > pos:
            runs.append((pos, off - pos, False))
        runs.append((off, n, True))
        pos = off + n
    if pos < SIZE:
        runs.append((pos, SIZE - pos, False))
    return runs


def test_qemu_img_map_shows_exactly_the_written_ranges(cluster, exported):
    need("qemu-img")
    vd = _thin_vdisk(cluster, drain=False)  # still in the OpLog (dirty blocks)
    server = exported(cluster, "thin")
    assert _qemu_map(server.uri) == _expected()
    vd.drain()  # the same once the block map holds it
    assert _qemu_map(server.uri) == _expected()


def test_snapshot_export_map_and_nbdinfo(cluster, exported):
    need("qemu-img")
    vd = _thin_vdisk(cluster, drain=True)
    vd.snapshot("s")
    vd.write(40 * MiB, b"later" * 1000)  # not in the snapshot
    assert _qemu_map(exported(cluster, "thin@s").uri) == _expected()
    if run("sh", "-c", "command -v nbdinfo", ok=False).returncode == 0:  # libnbd-bin
        uri = exported(cluster, "thin@s", read_only=True).uri
        lines = run("nbdinfo", "--map", uri).stdout.split("\n")
        got = [(int(f[0]), int(f[1]), f[2] == "0") for f in (ln.split() for ln in lines) if f]
        assert got == _expected()


def test_qemu_img_convert_is_identical_and_sparse(cluster, exported, tmp_path):
    need("qemu-img")
    vd = _thin_vdisk(cluster, drain=True)
    out = tmp_path / "out.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", exported(cluster, "thin").uri, out)
    with open(out, "rb") as f:
        assert f.read() == vd.read(0, SIZE)
    # The file is sparse: its blocks are the data's (with some slack for the file
    # system's allocation granularity).
    data_bytes = sum(n for _, n in DATA)
    assert os.stat(out).st_blocks * 512 <= data_bytes + 4 * MiB, os.stat(out).st_blocks
